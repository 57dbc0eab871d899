"""The report's PNG plots (matplotlib, Agg, its bundled fonts). A plot's pixel size is its
``figsize`` x :data:`DPI` (no tight bbox), so it can be checked where it is shown; each is
written atomically."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from detfold.analyze.tide import ERROR_TYPES, SPECIAL_TYPES
from detfold.core.io import atomic_open
from detfold.report.tables import fmt

matplotlib.use("Agg")  # files only, no display
log = logging.getLogger(__name__)

DPI = 100
#: Legends beside the axes, never over bars, points or their labels
LEGEND_OUTSIDE: dict[str, Any] = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}
VAL_KEYS = ("coco/bbox_mAP", "coco/bbox_mAP_50")


def _save(fig: Any, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI)
    plt.close(fig)


def _message(ax: Any, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, color="#a00")
    ax.set(xticks=[], yticks=[])


def _bars(ax: Any, i: int, n: int, heights: Sequence[float], label: str, texts: Sequence[str], fontsize: int) -> None:
    """Series ``i`` of ``n`` side by side at x = 0, 1, ..., each bar labelled with its text."""
    width = 0.8 / n
    bars = ax.bar(np.arange(len(heights)) + (i - (n - 1) / 2) * width, heights, width, label=label)
    ax.bar_label(bars, labels=texts, fontsize=fontsize)


def fold_sizes(images: pd.Series, boxes: pd.Series, out_png: str) -> None:
    """Images and boxes per fold (by fold) as bars, with the mean and the spread ((max - min) / mean)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, counts, what in zip(axes, (images, boxes), ("images", "boxes"), strict=True):
        mean = float(counts.mean())
        ax.bar([f"fold {k}" for k in counts.index], counts.to_numpy(), color="tab:blue")
        ax.axhline(mean, color="k", ls="--", lw=1, label=f"mean {mean:.1f}")
        for i, value in enumerate(counts.to_numpy()):
            ax.text(i, value, str(int(value)), ha="center", va="bottom", fontsize=9)
        spread = (counts.max() - counts.min()) / mean if mean else 0.0
        ax.set_title(f"{what} per fold (spread {spread:.1%} of the mean)")
        ax.legend(**LEGEND_OUTSIDE)
    _save(fig, out_png)


def audit_findings(found: Mapping[str, Any], checks: Sequence[str], actions: Sequence[str], out_png: str) -> None:
    """Findings per check (``checks``, zero included), stacked by action (``found``: the audit
    summary's ``findings_per_check``)."""
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.38 * len(checks)))
    left = np.zeros(len(checks))
    for action in actions:
        counts = np.array([found.get(c, {}).get("by_action", {}).get(action, 0) for c in checks], dtype=float)
        ax.barh(checks, counts, left=left, label=action)
        left += counts
    for i, total in enumerate(left):
        ax.text(total, i, f" {int(total)}", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.locator_params(axis="x", integer=True)
    ax.set_xlabel("findings (boxes or images)")
    ax.set_title("audit findings per check" + ("" if actions else ": none, every check passed"))
    ax.set_xlim(0, max(1.0, left.max() * 1.15) if len(left) else 1.0)
    if actions:
        ax.legend(title="action", **LEGEND_OUTSIDE)
    _save(fig, out_png)


def read_scalars(work_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """mmengine's logged scalars of one training (``work_dir/<timestamp>/vis_data/scalars.json``):
    train rows (``iter`` global, ``epoch``, ``lr``, ``loss`` and its parts) by iteration, val rows
    (``epoch`` and the ``coco/*`` metrics) by epoch, and whether a validation loop ran at all (it
    logs timing rows also when the metric is empty). A resumed training's runs are read in time
    order, the last row of an iteration (epoch) kept. A torn last line (a killed run) is skipped;
    any other unreadable line raises naming the file and line."""
    train_rows, val_rows, validated = [], [], False
    for path in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
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
    return _last_by(train_rows, "iter"), _last_by(val_rows, "epoch"), validated


def _last_by(rows: list[dict[str, Any]], key: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame if frame.empty else frame.drop_duplicates(key, keep="last").sort_values(key).reset_index(drop=True)


def training(model: str, runs: Sequence[tuple[pd.DataFrame, pd.DataFrame, bool]], out_png: str) -> None:
    """One model's training, one line per fold (``runs``: :func:`read_scalars` of each fold):
    total loss and learning rate per iteration, and val bbox mAP (solid) and mAP50 (dashed) per
    epoch. A panel without data says why."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    any_train = any(not train.empty for train, _, _ in runs)
    any_val = any(VAL_KEYS[0] in val for _, val, _ in runs)
    for fold, (train, val, _) in enumerate(runs):
        color = f"C{fold}"  # the colour cycle's
        if not train.empty:
            axes[0].plot(train["iter"], train["loss"], color=color, label=f"fold {fold}", marker=".")
            axes[1].plot(train["iter"], train["lr"], color=color, label=f"fold {fold}", marker=".")
        if VAL_KEYS[0] in val:
            axes[2].plot(val["epoch"], val[VAL_KEYS[0]], color=color, marker="o", label=f"fold {fold} mAP")
            if VAL_KEYS[1] in val:
                axes[2].plot(val["epoch"], val[VAL_KEYS[1]], color=color, ls="--", marker="x", label="mAP50")
    for ax, title, ylabel in zip(axes[:2], ("training loss", "learning rate"), ("loss", "lr"), strict=True):
        ax.set_title(f"{model}: {title}")
        if any_train:
            ax.set(xlabel="iteration", ylabel=ylabel)
            ax.legend(fontsize=8, **LEGEND_OUTSIDE)
        else:
            _message(ax, "no training scalars logged\n(fewer iterations per epoch than log_interval?)")
    axes[2].set_title(f"{model}: val bbox mAP per epoch (fold's val images)")
    if any_val:
        axes[2].set(xlabel="epoch", ylim=(0, 1))
        axes[2].legend(fontsize=8, **LEGEND_OUTSIDE)
    elif any(validated for _, _, validated in runs):
        _message(axes[2], "validation ran but gave no bbox mAP\n(the model predicted no boxes yet)")
    else:
        _message(axes[2], f"no validation ran during training\n(set models.{model}.val_interval: 1)")
    _save(fig, out_png)


def per_class_ap(models: Mapping[str, Mapping[str, Any]], classes: Sequence[str], out_png: str) -> None:
    """Per-class pooled OOF AP and AP50 bars of every model (``models``: each one's metrics.json)."""
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 2 + 1.4 * len(classes) * 2), 4))
    for ax, key in zip(axes, ("AP", "AP50"), strict=True):
        for i, (name, m) in enumerate(models.items()):
            values = [(m["pooled_oof"]["per_class"].get(c) or {}).get(key) for c in classes]
            heights = [np.nan if v is None else v for v in values]
            _bars(ax, i, len(models), heights, name, [fmt(v)[:5] for v in values], fontsize=7)
        ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 6 else 0, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"per-class {key} (pooled OOF)" + (" = AP at IoU 0.5" if key == "AP50" else " at IoU 0.5:0.95"))
        ax.legend(fontsize=8, **LEGEND_OUTSIDE)
    _save(fig, out_png)


def pr_curves(curves: Mapping[str, pd.DataFrame], classes: Sequence[str], out_png: str) -> None:
    """Pooled OOF precision-recall curves per class, one line per model, IoU 0.5 solid and
    0.5:0.95 dashed (``curves``: each model's pr_curves.csv)."""
    cols = min(4, len(classes))
    rows = -(-len(classes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.4 * rows), squeeze=False)
    for ax, cls in zip(axes.flat, classes, strict=False):
        for i, (name, df) in enumerate(curves.items()):
            part = df[df["class"] == cls]
            for column, style, iou in (("precision_iou50", "-", "0.5"), ("precision_iou50_95", "--", "0.5:0.95")):
                precision = part[column].where(part[column] >= 0)
                ax.plot(part["recall"], precision, style, color=f"C{i}", label=f"{name} IoU {iou}")
        ax.set(title=f"{cls} (pooled OOF)", xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.legend(fontsize=7, **LEGEND_OUTSIDE)
    for ax in list(axes.flat)[len(classes) :]:
        ax.axis("off")
    _save(fig, out_png)


def tide_breakdown(tides: Mapping[str, Mapping[str, Any]], classes: Sequence[str], out_png: str) -> None:
    """TIDE's dAP per error type of each analysis (``tides``: tide.json by name, in order),
    overall and per class, as bars."""
    panels = ["all classes", *classes]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1, 3.8), squeeze=False)
    kinds = [*ERROR_TYPES, *SPECIAL_TYPES]
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, (name, t) in enumerate(tides.items()):
            if panel == "all classes":
                values = [t["main"][k] for k in ERROR_TYPES] + [t["special"][k] for k in SPECIAL_TYPES]
            else:
                dap = (t["per_class"].get(panel) or {}).get("dAP", {})
                values = [dap.get(k) for k in ERROR_TYPES] + [np.nan] * len(SPECIAL_TYPES)
            heights = [np.nan if v is None else 100 * v for v in values]
            texts = ["" if np.isnan(h) else f"{h:.1f}" for h in heights]
            _bars(ax, i, len(tides), heights, f"{name} (mAP50 {100 * t['mAP']:.1f})", texts, fontsize=6)
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"dAP50 by error type: {panel}", fontsize=9)
        ax.set_ylabel("mAP50 points gained if fixed")
        ax.legend(fontsize=7, **LEGEND_OUTSIDE)
    _save(fig, out_png)


def confusion(confusions: Mapping[str, pd.DataFrame], n_classes: int, out_png: str) -> None:
    """Each analysis's confusion matrix at the best-F1 thresholds as a heatmap: the counts, each
    row's share as colour (``confusions``: confusion.csv by name, in order; the figure sized
    for ``n_classes`` + background rows)."""
    size = (max(4.5, 1.0 + 0.9 * (n_classes + 1)) * len(confusions), 1.5 + 0.8 * (n_classes + 1))
    fig, axes = plt.subplots(1, len(confusions), figsize=size, squeeze=False)
    for ax, (name, cm) in zip(axes[0], confusions.items(), strict=True):
        counts = cm.to_numpy()
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(counts):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=8, color="white" if share[r, c] > 0.6 else "black")
        ax.set_xticks(range(len(cm.columns)), list(cm.columns), rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(cm.index)), list(cm.index), fontsize=8)
        ax.set(xlabel="predicted (background: missed)", ylabel="true (background: false positive)")
        ax.set_title(f"{name}: confusion at IoU 0.5, best-F1 thresholds", fontsize=9)
    _save(fig, out_png)


def candidates(shown: pd.DataFrame, metric: str, out_png: str) -> None:
    """The candidates' blend score in-sample and nested and their test score, as bars
    (``shown``: rows of :func:`detfold.report.tables.ensemble_rows`)."""
    columns = {
        "blend, in-sample (optimistic)": (f"blend {metric}, in-sample (optimistic)", "tab:gray"),
        "blend, nested (honest)": (f"blend {metric}, nested (honest)", "tab:blue"),
        "test": (f"test {metric}", "tab:orange"),
    }
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
    ax.legend(fontsize=8, **LEGEND_OUTSIDE)
    _save(fig, out_png)


def leaderboard(rows: pd.DataFrame, metric: str, out_png: str) -> None:
    """Per scope (one row of panels each): every model's mAP50 and mAP with 95 % intervals,
    and its paired difference in ``metric`` to the leader with its interval (0 marked)."""
    scopes = list(dict.fromkeys(rows.scope))
    sizes = [int((rows.scope == s).sum()) + 1 for s in scopes]
    fig, axes = plt.subplots(
        len(scopes), 2, figsize=(13, 0.6 + 0.45 * sum(sizes)), gridspec_kw={"height_ratios": sizes}, squeeze=False
    )
    for (ax_score, ax_diff), scope in zip(axes, scopes, strict=True):
        part = rows[rows.scope == scope].reset_index(drop=True)
        y = np.arange(len(part))
        for offset, key, color in ((-0.15, "mAP50", "tab:blue"), (0.15, "mAP", "tab:orange")):
            err = [part[key] - part[f"{key}_lo"], part[f"{key}_hi"] - part[key]]
            ax_score.errorbar(part[key], y + offset, xerr=err, fmt="o", color=color, capsize=3, label=key)
        ax_score.set_yticks(y, part.model, fontsize=8)
        ax_score.invert_yaxis()
        ax_score.set_title(f"{scope}: score, 95 % interval", fontsize=9)
        ax_score.legend(fontsize=8, **LEGEND_OUTSIDE)
        diff = part[f"{metric}_diff"]
        err = [diff - part[f"{metric}_diff_lo"], part[f"{metric}_diff_hi"] - diff]
        for i, distinct in enumerate(part.distinct_from_leader):
            color = "tab:red" if distinct else "tab:gray"
            ax_diff.errorbar(diff[i], y[i], xerr=[[err[0][i]], [err[1][i]]], fmt="o", color=color, capsize=3)
        ax_diff.axvline(0, color="black", lw=0.8)
        ax_diff.set_yticks(y, [])
        ax_diff.invert_yaxis()
        ax_diff.set_title(f"{metric} minus the leader's, paired 95 % interval (red: told apart)", fontsize=9)
    _save(fig, out_png)
