"""The run report: PNG plots (matplotlib, Agg) and HTML tables for ``snakemake --report``.

Each ``report_*`` function reads result files of the workflow and writes report files. Nothing
is fetched: the plots are PNGs with matplotlib's bundled fonts, the tables are HTML pages with
inline CSS and no scripts. A plot's pixel size is its ``figsize`` x ``DPI`` (no tight bbox), so
it can be checked where it is shown.
"""

from __future__ import annotations

import html
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detfold.core.io import atomic_open, read_json, write_text
from detfold.evaluate.metrics import STAT_NAMES, mean_std

log = logging.getLogger(__name__)

DPI = 100
VAL_KEYS = ("coco/bbox_mAP", "coco/bbox_mAP_50")
PACKAGES = ("torch", "mmdet", "mmcv", "mmengine", "snakemake", "numpy", "detfold")
STYLE = (
    "body{font-family:sans-serif;font-size:13px;margin:12px;color:#111;background:#fff}"
    "table{border-collapse:collapse;margin:6px 0 18px}"
    "th,td{border:1px solid #bbb;padding:3px 8px;text-align:left;white-space:nowrap}th{background:#e8e8e8}"
    "td.n{text-align:right}tr.key td{font-weight:bold;background:#f3f7ff}"
    "pre{background:#f4f4f4;padding:8px;font-size:12px}p.note{color:#555}"
)


# ---------------------------------------------------------------------------------------------
# helpers


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI)
    _pyplot().close(fig)


def _message(ax: Any, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, color="#a00")
    ax.set_xticks([])
    ax.set_yticks([])


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cell(value: Any, digits: int) -> str:
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return f"<td{' class=n' if numeric else ''}>{html.escape(_fmt(value, digits))}</td>"


def _table(df: pd.DataFrame, key_rows: Sequence[bool] | None = None, digits: int = 4) -> str:
    """An HTML table of ``df`` (floats with ``digits`` decimals, None as n/a, numbers right
    aligned); ``key_rows`` are bold."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, row in enumerate(df.itertuples(index=False)):
        cls = ' class="key"' if key_rows is not None and key_rows[i] else ""
        rows.append(f"<tr{cls}>" + "".join(_cell(v, digits) for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h2>{html.escape(title)}</h2>\n{body}\n</body></html>\n"
    )


def _h(text: str) -> str:
    return f"<h3>{html.escape(text)}</h3>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# ---------------------------------------------------------------------------------------------
# fold balance


def report_fold_sizes(fold_table: str, balance_csv: str, out_png: str) -> None:
    """Images and boxes per fold as bars, with the mean and the spread ((max - min) / mean)."""
    folds = pd.read_csv(fold_table)
    balance = pd.read_csv(balance_csv)
    images = folds.fold.value_counts().sort_index()
    boxes = balance.groupby("fold").boxes.sum().reindex(images.index, fill_value=0)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, counts, what in zip(axes, (images, boxes), ("images", "boxes"), strict=True):
        mean = float(counts.mean())
        ax.bar([f"fold {k}" for k in counts.index], counts.to_numpy(), color="tab:blue")
        ax.axhline(mean, color="k", ls="--", lw=1, label=f"mean {mean:.1f}")
        for i, value in enumerate(counts.to_numpy()):
            ax.text(i, value, str(int(value)), ha="center", va="bottom", fontsize=9)
        spread = (counts.max() - counts.min()) / mean if mean else 0.0
        ax.set_title(f"{what} per fold (spread {spread:.1%} of the mean)")
        ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, out_png)


# ---------------------------------------------------------------------------------------------
# audit


def report_audit(summary_json: str, out_png: str, out_html: str) -> None:
    """Findings per check (every check, zero included), stacked by action, as a PNG; the same
    counts with the images and boxes before/after per split as an HTML table."""
    summary = read_json(summary_json)
    found = summary["findings_per_check"]
    checks = list(dict.fromkeys([*summary.get("checks", {}), *found]))
    actions = sorted({a for entry in found.values() for a in entry["by_action"]})
    splits = list(summary["splits"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.38 * len(checks)))
    left = np.zeros(len(checks))
    for action in actions:
        counts = np.array([found.get(c, {}).get("by_action", {}).get(action, 0) for c in checks], dtype=float)
        ax.barh(checks, counts, left=left, label=action)
        left += counts
    for i, total in enumerate(left):
        ax.text(total, i, f" {int(total)}", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("findings (boxes or images)")
    ax.set_title("audit findings per check" + ("" if actions else ": none, every check passed"))
    ax.set_xlim(0, max(1.0, left.max() * 1.15) if len(left) else 1.0)
    if actions:
        ax.legend(title="action", loc="lower right")
    fig.tight_layout()
    _save(fig, out_png)

    rows = [
        {
            "check": c,
            "finds": summary.get("checks", {}).get(c, ""),
            "total": found.get(c, {}).get("total", 0),
            **{a: found.get(c, {}).get("by_action", {}).get(a, 0) for a in actions},
            **{f"in {s}": found.get(c, {}).get("by_split", {}).get(s, 0) for s in splits},
        }
        for c in checks
    ]
    split_rows = [{"split": s, **v} for s, v in summary["splits"].items()]
    body = (
        _h("Findings per check")
        + _table(pd.DataFrame(rows))
        + _h("Images and boxes per split, before and after the audit")
        + _table(pd.DataFrame(split_rows))
    )
    write_text(out_html, _page("Ground-truth audit", body))


# ---------------------------------------------------------------------------------------------
# training curves


def read_scalars(work_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """mmengine's logged scalars of one training (``work_dir/<timestamp>/vis_data/scalars.json``).

    Returns (train, val, validated): train rows (``iter`` global, ``epoch``, ``lr``, ``loss``
    and its parts) sorted by iteration; val rows (``epoch`` and the ``coco/*`` metrics) sorted by
    epoch; whether a validation loop ran at all (it logs its own timing rows, also when the
    metric is empty). The runs of a resumed training are read in time order; a later run's row
    replaces an earlier one's for the same iteration (epoch). A torn last line (a killed run) is
    skipped; any other unreadable line raises naming the file and line.
    """
    train_rows, val_rows, validated = [], [], False
    files = sorted(Path(work_dir).glob("*/vis_data/scalars.json"))
    for path in files:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(lines):
                    log.warning("%s: skipping torn last line %d", path, number)
                    continue
                raise ValueError(f"{path}: line {number} is not JSON: {line[:80]!r}") from err
            metrics = {k: v for k, v in row.items() if k.startswith("coco/")}
            if "loss" in row and "iter" in row:
                train_rows.append(row)
            elif metrics:
                validated = True
                val_rows.append({"epoch": int(row["step"]), **metrics})
            elif "iter" not in row and "time" in row:  # a val/test loop iteration
                validated = True
    train = pd.DataFrame(train_rows)
    if not train.empty:
        train = train.drop_duplicates("iter", keep="last").sort_values("iter").reset_index(drop=True)
    val = pd.DataFrame(val_rows)
    if not val.empty:
        val = val.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    return train, val, validated


def report_training(model: str, checkpoints: Sequence[str], out_png: str) -> None:
    """One model's training, one line per fold: total loss and learning rate per iteration, and
    val bbox mAP (solid) and mAP50 (dashed) per epoch, read from the mmengine work dir beside each
    fold's checkpoint (``.../fold{k}/model.pth`` -> ``.../fold{k}/work``). A panel without data
    says why."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_train, any_val, any_validated = False, False, False
    for fold, checkpoint in enumerate(checkpoints):
        train, val, validated = read_scalars(Path(checkpoint).parent / "work")
        color = colors[fold % len(colors)]
        any_validated |= validated
        if not train.empty:
            any_train = True
            axes[0].plot(train["iter"], train["loss"], color=color, label=f"fold {fold}", marker=".")
            axes[1].plot(train["iter"], train["lr"], color=color, label=f"fold {fold}", marker=".")
        if not val.empty and VAL_KEYS[0] in val:
            any_val = True
            axes[2].plot(val["epoch"], val[VAL_KEYS[0]], color=color, marker="o", label=f"fold {fold} mAP")
            if VAL_KEYS[1] in val:
                axes[2].plot(val["epoch"], val[VAL_KEYS[1]], color=color, ls="--", marker="x", label="mAP50")
    for ax, title, ylabel in zip(axes[:2], ("training loss", "learning rate"), ("loss", "lr"), strict=True):
        ax.set_title(f"{model}: {title}")
        if any_train:
            ax.set_xlabel("iteration")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        else:
            _message(ax, "no training scalars logged\n(fewer iterations per epoch than log_interval?)")
    axes[2].set_title(f"{model}: val bbox mAP per epoch (fold's val images)")
    if any_val:
        axes[2].set_xlabel("epoch")
        axes[2].set_ylim(0, 1)
        axes[2].legend(fontsize=8, ncol=2)
    elif any_validated:
        _message(axes[2], "validation ran but gave no bbox mAP\n(the model predicted no boxes yet)")
    else:
        _message(axes[2], f"no validation ran during training\n(set models.{model}.val_interval: 1)")
    fig.tight_layout()
    _save(fig, out_png)


# ---------------------------------------------------------------------------------------------
# cross-validation results


def _stat_columns(result: Mapping[str, Any]) -> dict[str, float | None]:
    names = {"AP": "mAP", "AP50": "mAP50"}  # the names detfold uses; the rest as COCO's summary
    return {names.get(n, n): result["stats"][n] for n in STAT_NAMES}


def cv_table(metrics: Mapping[str, Any]) -> tuple[pd.DataFrame, list[bool]]:
    """Per-fold OOF rows, mean +- std over folds and pooled OOF of one model's metrics.json:
    images, GT boxes and the 12 COCO stats (maxDets 100; AP and AP50 named mAP and mAP50)."""
    rows: list[dict[str, Any]] = [
        {"OOF predictions": f"fold {f['fold']}", "images": f["n_images"], "GT boxes": f["n_gt"], **_stat_columns(f)}
        for f in metrics["folds"]
    ]
    stats = [_stat_columns(f) for f in metrics["folds"]]
    spread = {name: mean_std([s[name] for s in stats]) for name in stats[0]}
    rows.append(
        {
            "OOF predictions": "mean +- std over folds",
            "images": "",
            "GT boxes": "",
            **{n: f"{_fmt(v['mean'])} +- {_fmt(v['std'])}" for n, v in spread.items()},
        }
    )
    pooled = metrics["pooled_oof"]
    rows.append(
        {
            "OOF predictions": "pooled OOF (all folds together)",
            "images": pooled["n_images"],
            "GT boxes": pooled["n_gt"],
            **_stat_columns(pooled),
        }
    )
    return pd.DataFrame(rows), [False] * (len(rows) - 1) + [True]


def report_cv(
    model_metrics: Mapping[str, str], pr_curves: Mapping[str, str], out_html: str, out_ap: str, out_pr: str
) -> None:
    """Per model: the per-fold / mean +- std / pooled OOF table, per-class AP and the test score
    of each fold model (HTML); per-class pooled OOF AP and AP50 bars of every model (PNG); pooled
    OOF precision-recall curves per class, IoU 0.5 solid and 0.5:0.95 dashed (PNG)."""
    models = {name: read_json(path) for name, path in sorted(model_metrics.items())}
    body = ""
    for name, m in models.items():
        table, key = cv_table(m)
        body += _h(f"{name}: out-of-fold COCO metrics (maxDets 100)") + _table(table, key)
        per_class = [
            {"class": c, "GT boxes": v["n_gt"], "AP": v["AP"], "AP50": v["AP50"], "AR_100": v["AR_100"]}
            for c, v in m["pooled_oof"]["per_class"].items()
        ]
        body += _h(f"{name}: per-class AP, pooled OOF") + _table(pd.DataFrame(per_class))
        if m.get("test"):
            test = [{"fold model": f"fold {t['fold']}", "mAP": t["mAP"], "mAP50": t["mAP50"]} for t in m["test"]]
            body += _h(f"{name}: each fold model on the test set") + _table(pd.DataFrame(test))
    write_text(out_html, _page("Cross-validation results", body))

    classes = list(dict.fromkeys(c for m in models.values() for c in m["pooled_oof"]["per_class"]))
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 2 + 1.4 * len(classes) * 2), 4))
    width = 0.8 / len(models)
    for ax, key in zip(axes, ("AP", "AP50"), strict=True):
        for i, (name, m) in enumerate(models.items()):
            values = [(m["pooled_oof"]["per_class"].get(c) or {}).get(key) for c in classes]
            heights = [np.nan if v is None else v for v in values]
            x = np.arange(len(classes)) + (i - (len(models) - 1) / 2) * width
            bars = ax.bar(x, heights, width, label=name)
            ax.bar_label(bars, labels=[_fmt(v)[:5] for v in values], fontsize=7)
        ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 6 else 0, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"per-class {key} (pooled OOF)" + (" = AP at IoU 0.5" if key == "AP50" else " at IoU 0.5:0.95"))
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out_ap)

    curves = {name: pd.read_csv(path) for name, path in sorted(pr_curves.items())}
    cols = min(4, len(classes))
    rows = -(-len(classes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, cls in zip(axes.flat, classes, strict=False):
        for i, (name, df) in enumerate(curves.items()):
            part = df[df["class"] == cls]
            for column, style, iou in (("precision_iou50", "-", "0.5"), ("precision_iou50_95", "--", "0.5:0.95")):
                precision = part[column].where(part[column] >= 0)
                ax.plot(part["recall"], precision, style, color=colors[i % len(colors)], label=f"{name} IoU {iou}")
        ax.set_title(f"{cls} (pooled OOF)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(classes) :]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, out_pr)


# ---------------------------------------------------------------------------------------------
# error analysis


def report_analysis(
    analyses: Mapping[str, Mapping[str, str]], out_breakdown: str, out_confusion: str, out_thresholds: str
) -> None:
    """Per analysis (a model, or the OOF ensemble; files ``tide``, ``thresholds``, ``confusion``
    of detfold.analyze.analysis.write_analysis): TIDE's dAP per error type, overall and per class (PNG
    bars); the confusion matrix at the best-F1 thresholds (PNG heatmaps, counts, each row's
    share as colour); the per-class thresholds with precision, recall and F1 on the pooled OOF
    predictions where they were chosen and on the blend split where they were not (HTML)."""
    from detfold.analyze.tide import ERROR_TYPES, SPECIAL_TYPES

    names = sorted(analyses)
    tides = {n: read_json(analyses[n]["tide"]) for n in names}
    thresholds = {n: read_json(analyses[n]["thresholds"]) for n in names}
    confusions = {n: pd.read_csv(analyses[n]["confusion"], index_col=0) for n in names}
    plt = _pyplot()
    classes = list(dict.fromkeys(c for t in tides.values() for c in t["per_class"]))
    panels = ["all classes", *classes]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1, 3.8), squeeze=False)
    width = 0.8 / len(names)
    kinds = [*ERROR_TYPES, *SPECIAL_TYPES]
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, name in enumerate(names):
            t = tides[name]
            if panel == "all classes":
                values = [t["main"][k] for k in ERROR_TYPES] + [t["special"][k] for k in SPECIAL_TYPES]
                title = "all classes"
            else:
                pc = t["per_class"].get(panel) or {"dAP": {}, "AP": None}
                values = [pc["dAP"].get(k) for k in ERROR_TYPES] + [np.nan] * len(SPECIAL_TYPES)
                title = panel
            heights = [np.nan if v is None else 100 * v for v in values]
            x = np.arange(len(kinds)) + (i - (len(names) - 1) / 2) * width
            bars = ax.bar(x, heights, width, label=f"{name} (mAP50 {100 * t['mAP']:.1f})")
            ax.bar_label(bars, labels=["" if np.isnan(h) else f"{h:.1f}" for h in heights], fontsize=6)
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"dAP50 by error type: {title}", fontsize=9)
        ax.set_ylabel("mAP50 points gained if fixed")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out_breakdown)

    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(max(4.5, 1.0 + 0.9 * (len(classes) + 1)) * len(names), 1.5 + 0.8 * (len(classes) + 1)),
        squeeze=False,
    )
    for ax, name in zip(axes[0], names, strict=True):
        cm = confusions[name]
        counts = cm.to_numpy()
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(counts):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=8, color="white" if share[r, c] > 0.6 else "black")
        ax.set_xticks(range(len(cm.columns)), list(cm.columns), rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(cm.index)), list(cm.index), fontsize=8)
        ax.set_xlabel("predicted (background: missed)")
        ax.set_ylabel("true (background: false positive)")
        ax.set_title(f"{name}: confusion at IoU 0.5, best-F1 thresholds", fontsize=9)
    fig.tight_layout()
    _save(fig, out_confusion)

    body = _note(
        "Per class the score threshold of the best F1 at IoU 0.5, chosen on the pooled out-of-fold "
        "predictions (their precision, recall and F1 there are in-sample: the threshold was picked on them), "
        "and the same threshold on the blend split, images no fold model trained on and where nothing was "
        "chosen (each fold model's predictions there, counts summed): the honest estimate. The file "
        "results/analysis/<model>/thresholds.json holds them for a deployment (key score_thr)."
    )
    for name in names:
        th = thresholds[name]
        rows = []
        for cls, v in th["per_class"].items():
            held = (th.get("holdout") or {}).get("per_class", {}).get(cls, {})
            rows.append(
                {
                    "class": cls,
                    "score_thr": v["score_thr"],
                    "OOF precision": v["precision"],
                    "OOF recall": v["recall"],
                    "OOF F1 (in-sample)": v["f1"],
                    "TP": v["tp"],
                    "FP": v["fp"],
                    "FN": v["fn"],
                    "blend precision": held.get("precision"),
                    "blend recall": held.get("recall"),
                    "blend F1": held.get("f1"),
                }
            )
        t = tides[name]
        body += _h(f"{name}: best-F1 thresholds") + _table(pd.DataFrame(rows), digits=3)
        breakdown = [{"error type": k, "dAP50": t["main"][k], "count": t["counts"].get(k)} for k in ERROR_TYPES] + [
            {"error type": k, "dAP50": t["special"][k], "count": None} for k in SPECIAL_TYPES
        ]
        body += _h(f"{name}: TIDE breakdown (mAP50 {t['mAP']:.4f}, pooled OOF)") + _table(pd.DataFrame(breakdown))
    write_text(out_thresholds, _page("Error analysis: thresholds and breakdown", body))


# ---------------------------------------------------------------------------------------------
# ensemble


def _ci(values: Sequence[float] | None) -> str:
    return "" if not values else f"[{values[0]:.4f}, {values[1]:.4f}]"


def ensemble_rows(selection: Mapping[str, Any], test: Mapping[str, Any] | None) -> pd.DataFrame:
    """Every candidate: its in-sample blend score (chosen and scored on the same images:
    optimistic), its nested blend estimate with the 95 % bootstrap interval (honest), and its
    test score; the single fold models (no choice made: their blend score is honest as it
    is); and the delivered predictions, whose honest estimate nests the whole choice."""
    metric = selection["metric"]
    cands = (test or {}).get("candidates", {})
    singles = (test or {}).get("single", {})

    def row(name: str, kind: str, optimistic: Any, honest: Any, ci: Any, t: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            "predictions": name,
            "what": kind,
            f"blend {metric}, in-sample (optimistic)": optimistic,
            f"blend {metric}, nested (honest)": honest,
            "95 % interval": _ci(ci),
            "test mAP": t.get("mAP") if t else None,
            "test mAP50": t.get("mAP50") if t else None,
        }

    rows = [
        row(name, "single fold model", None, scores[metric], None, singles.get(name))
        for name, scores in selection["singles"].items()
    ]
    for kind in selection["kinds"]:
        c = selection["candidates"][kind]
        rows.append(
            row(
                c["label"],
                c["description"],
                c["in_sample"][metric],
                c["nested"][metric],
                c["nested"][f"{metric}_ci95"],
                cands.get(kind),
            )
        )
    d = selection["delivered"]
    rows.append(
        row(
            "delivered",
            f"{d['label']}: {d['description']}",
            None,
            d["honest"][metric],
            d["honest"][f"{metric}_ci95"],
            (test or {}).get("delivered"),
        )
    )
    return pd.DataFrame(rows, dtype=object)  # object: None stays None


def report_ensemble(
    selection_json: str,
    test_metrics: str | None,
    search_csv: str,
    out_png: str,
    out_html: str,
    out_search: str,
    max_rows: int = 200,
) -> None:
    """Candidates on the blend split (in-sample vs nested, with intervals) and on the test set:
    bars (PNG; single fold models left out) and the full table (HTML); the search of both
    fusion steps on the blend split, best first (HTML, first ``max_rows`` rows)."""
    selection = read_json(selection_json)
    test = read_json(test_metrics) if test_metrics else None
    metric = selection["metric"]
    table = ensemble_rows(selection, test)
    shown = table[table.what != "single fold model"].reset_index(drop=True)
    columns = {
        "blend, in-sample (optimistic)": (f"blend {metric}, in-sample (optimistic)", "tab:gray"),
        "blend, nested (honest)": (f"blend {metric}, nested (honest)", "tab:blue"),
        "test": (f"test {metric}", "tab:orange"),
    }
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.8 * len(shown)))
    y = np.arange(len(shown))
    for n, (label, (column, color)) in enumerate(columns.items()):
        values = shown[column].astype(float).to_numpy()
        bars = ax.barh(y + (n - 1) * 0.27, np.nan_to_num(values), 0.27, color=color, label=label)
        ax.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.3f}" for v in values], fontsize=7, padding=2)
    ax.set_yticks(y, shown.predictions)
    ax.invert_yaxis()
    best = np.nanmax(shown[[c for c, _ in columns.values()]].astype(float).to_numpy(), initial=0.0)
    ax.set_xlim(0, min(1.1, max(0.05, 1.25 * best)))
    ax.set_title(f"{metric}: candidates on the blend split and the test set")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, out_png)

    key = [name == "delivered" for name in table.predictions]
    d = selection["delivered"]
    body = _note(
        f"Blend split: {selection['blend_images']} training images that no fold model trained on. In-sample: "
        "chosen and scored on all of them (optimistic). Nested: chosen on the other "
        f"{selection['nested_parts'] - 1} of {selection['nested_parts']} parts, scored on the held-out part, "
        f"pooled (honest); 95 % intervals: {selection['bootstrap_samples']} bootstrap resamples of the images. "
        f"Delivered: {d['description']}, because it has the {d['why']}; its honest estimate nests that choice "
        "as well. Test: scored once, never used to choose."
    ) + _table(table, key)
    write_text(out_html, _page("Ensembles: chosen on the blend split", body))

    search = pd.read_csv(search_csv)
    note = (
        f"{len(search)} fusion parameter combinations scored on all blend images by {metric} (in-sample), "
        "best first per step; the model step fuses the fold ensembles chosen there"
        + (f"; the first {max_rows} shown." if len(search) > max_rows else ".")
    )
    rows = search.head(max_rows)
    rows = rows.astype(object).where(rows.notna(), None)
    key = [i == 0 or rows.step.iloc[i] != rows.step.iloc[i - 1] for i in range(len(rows))]
    write_text(out_search, _page("Fusion parameter search (blend split)", _note(note) + _table(rows, key)))


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_markdown(
    aud: Mapping[str, Any],
    fold_sizes: Sequence[int],
    balance: Mapping[str, Any] | None,
    models: Mapping[str, Mapping[str, Any]],
    selection: Mapping[str, Any],
    test: Mapping[str, Any] | None,
) -> str:
    """The run summary (results/summary.md): what is delivered and why, honest estimates with
    intervals beside the optimistic ones, the audit, the folds, CV per model and class, test."""
    metric = selection["metric"]
    d = selection["delivered"]
    h, v, parts = d["honest"], d["vs_best_single"], selection["nested_parts"]
    lines = [
        "# detfold run summary",
        "",
        "## Delivered predictions",
        "",
        f"**{d['label']}**: {d['description']}.",
        "",
        f"Chosen on the blend split ({selection['blend_images']} training images no fold model trained on) "
        f"because it has the {d['why']}.",
        "",
        f"Honest estimate (the whole choice nested: made on {parts - 1} of {parts} parts of the blend images, "
        f"scored on the held-out part, pooled): mAP {_num(h['mAP'])} {_ci(h['mAP_ci95'])}, "
        f"mAP50 {_num(h['mAP50'])} {_ci(h['mAP50_ci95'])} "
        f"(95 % bootstrap intervals over the images); difference from the best single model (nested too): "
        f"mAP {v['mAP']:+.4f} {_ci(v['mAP_ci95'])}, mAP50 {v['mAP50']:+.4f} {_ci(v['mAP50_ci95'])}.",
        "",
    ]
    if test and test.get("labelled"):
        t = test["delivered"]
        vs = t["vs_best_single"]
        lines += [
            f"Test set (never used to choose): mAP {_num(t['mAP'])} {_ci(t['mAP_ci95'])}, mAP50 {_num(t['mAP50'])} "
            f"{_ci(t['mAP50_ci95'])}; paired difference from the single model best on the test set "
            f"({t['best_single_on_test']}): mAP {_ci(vs['mAP_ci95'])}, mAP50 {_ci(vs['mAP50_ci95'])}.",
            "",
        ]
    elif test:
        lines += [f"Test set unlabelled: {test['n_predictions']} predictions written, not scored.", ""]
    else:
        lines += ["No test set configured: the run ends with cross-validation and the blend-split choice.", ""]
    lines += [
        "## Candidates",
        "",
        f"| predictions | what | blend {metric} in-sample (optimistic) | blend {metric} nested (honest) "
        "| 95 % interval | test mAP | test mAP50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ensemble_rows(selection, test).itertuples(index=False):
        name = f"**{row[0]}**" if row[0] == "delivered" else row[0]
        cells = [_num(x) if not isinstance(x, str) else x for x in row[2:]]
        lines.append(f"| {name} | {row[1]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "In-sample: chosen and scored on the same blend images, so it flatters the tuned candidates. Nested: the "
        "parameters chosen on the other parts, scored on the held-out part. A single fold model needs no choice: "
        "its blend score is honest as it is.",
        "",
        "## Audit",
        "",
        "| split | images | boxes before | boxes after |",
        "|---|---|---|---|",
    ]
    for split, sp in aud["splits"].items():
        lines.append(f"| {split} | {sp['images_after']} | {sp['boxes_before']} | {sp['boxes_after']} |")
    found = ", ".join(
        f"{check} {entry['total']} ({', '.join(f'{a} {n}' for a, n in entry['by_action'].items())})"
        for check, entry in aud["findings_per_check"].items()
    )
    lines += ["", "Findings per check: " + (found or "none"), ""]
    lines += ["## Folds", "", f"K = {len(fold_sizes)}; images per fold: " + ", ".join(str(n) for n in fold_sizes), ""]
    if balance:
        lines += [
            f"Blend split: {balance.get('blend_images', 0)} images (share {balance.get('blend_share')}). "
            f"Method {balance['method']}, seed {balance['seed']}, group_by {balance['group_by']} "
            f"({balance['groups_of_several_images']} groups of several images). Max deviation from 1/K: "
            f"box share {balance['max_box_share_deviation']:.4f}, "
            f"image share {balance['max_image_share_deviation']:.4f}.",
            "",
        ]
    lines += [
        "## Cross-validated mAP (out-of-fold)",
        "",
        "| model | fold | mAP | mAP50 |",
        "|---|---|---|---|",
    ]
    for name, m in models.items():
        for f in m["folds"]:
            lines.append(f"| {name} | {f['fold']} | {_num(f['mAP'])} | {_num(f['mAP50'])} |")
        cv = m["cv"]
        lines.append(
            f"| {name} | mean +- std (ddof 1) | {_num(cv['mAP']['mean'])} +- {_num(cv['mAP']['std'])} "
            f"| {_num(cv['mAP50']['mean'])} +- {_num(cv['mAP50']['std'])} |"
        )
        p = m["pooled_oof"]
        lines.append(
            f"| {name} | **pooled OOF** [95 % interval] | **{_num(p['mAP'])}** {_ci(p.get('mAP_ci95'))} "
            f"| **{_num(p['mAP50'])}** {_ci(p.get('mAP50_ci95'))} |"
        )
    lines += ["", "Per-class AP (pooled OOF):", "", "| model | class | AP | AP50 | GT boxes |", "|---|---|---|---|---|"]
    for name, m in models.items():
        for cls, c in m["pooled_oof"]["per_class"].items():
            lines.append(f"| {name} | {cls} | {_num(c['AP'])} | {_num(c['AP50'])} | {c['n_gt']} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# run facts


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions (``not installed`` where missing), read from package metadata."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, str]:
    """The machine this runs on: host, OS, CPU model and cores, memory, GPUs."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        memory = "unknown"
    gpus = "none visible (no nvidia-smi)"
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
        gpus = "; ".join(result.stdout.split("\n")).strip("; ") or f"nvidia-smi -L: {result.stderr.strip()}"
    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "cpu": cpu,
        "cpu cores": str(os.cpu_count()),
        "memory": memory,
        "gpus": gpus,
    }


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def read_benchmarks(paths: Sequence[str], root: str = "benchmarks") -> pd.DataFrame:
    """Snakemake benchmark TSVs (``root/RULE.tsv`` or ``root/RULE/JOB....tsv``) as one table:
    rule, job, seconds, max RSS in MB (NaN where too short to measure), CPU seconds."""
    rows = []
    for path in paths:
        parts = Path(path).relative_to(root).with_suffix("").parts
        rule, job = (parts[0], "/".join(parts[1:])) if len(parts) > 1 else (parts[0], "")
        bench = pd.read_csv(path, sep="\t")
        for _, b in bench.iterrows():
            rows.append(
                {
                    "rule": rule,
                    "job": job,
                    "s": float(b["s"]),
                    "max_rss_mb": pd.to_numeric(b.get("max_rss"), errors="coerce"),
                    "cpu_s": pd.to_numeric(b.get("cpu_time"), errors="coerce"),
                }
            )
    return pd.DataFrame(rows, columns=["rule", "job", "s", "max_rss_mb", "cpu_s"])


def report_run_facts(
    benchmarks: Sequence[str], config: Mapping[str, Any], out_html: str, root: str = "benchmarks"
) -> None:
    """Seed, versions, machine, run time per rule and per job (from Snakemake's benchmark files)
    and the config used, as one HTML page."""
    import yaml

    bench = read_benchmarks(benchmarks, root)
    per_rule = (
        bench.groupby("rule", sort=False)
        .agg(jobs=("s", "size"), total_s=("s", "sum"), max_s=("s", "max"), max_rss_mb=("max_rss_mb", "max"))
        .reset_index()
        .sort_values("total_s", ascending=False)
    )
    total = {"rule": "all rules (sum of job times)", "jobs": len(bench), "total_s": bench.s.sum()}
    per_rule = pd.concat([per_rule, pd.DataFrame([total])], ignore_index=True)
    per_rule = per_rule.astype(object).where(per_rule.notna(), None)
    jobs = bench.astype(object).where(bench.notna(), None)
    facts = pd.DataFrame(
        [{"fact": "seed", "value": str(config.get("seed"))}]
        + [{"fact": f"version of {k}", "value": v} for k, v in versions().items()]
        + [{"fact": f"machine: {k}", "value": v} for k, v in machine().items()]
    )
    body = (
        _h("Run facts")
        + _note("Versions and machine as seen by this rule (on a cluster: the node that ran it).")
        + _table(facts)
        + _h("Run time per rule (Snakemake benchmark files)")
        + _table(per_rule, [False] * (len(per_rule) - 1) + [True], digits=1)
        + _h("Run time per job")
        + _table(jobs, digits=1)
        + _h("Config used")
        + f"<pre>{html.escape(yaml.safe_dump(dict(config), sort_keys=False))}</pre>"
    )
    write_text(out_html, _page("Run facts", body))
