"""The report's HTML pages: tables with inline CSS, no scripts, nothing fetched. Each ``*_page``
function turns result data into one page's text; numbers are right aligned, None shows as n/a."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from detfold.analyze.tide import ERROR_TYPES, SPECIAL_TYPES
from detfold.evaluate.metrics import STAT_NAMES, mean_std

STYLE = (
    "body{font-family:sans-serif;font-size:13px;margin:12px;color:#111;background:#fff}"
    "table{border-collapse:collapse;margin:6px 0 18px}"
    "th,td{border:1px solid #bbb;padding:3px 8px;text-align:left;white-space:nowrap}th{background:#e8e8e8}"
    "td.n{text-align:right}tr.key td{font-weight:bold;background:#f3f7ff}"
    "pre{background:#f4f4f4;padding:8px;font-size:12px}p.note{color:#555}"
)

OOF_COLUMNS = {
    "score_thr": "score_thr",
    "precision": "OOF precision",
    "recall": "OOF recall",
    "f1": "OOF F1 (in-sample)",
    "tp": "TP",
    "fp": "FP",
    "fn": "FN",
}  # thresholds.json's key -> column, on the pooled OOF predictions where the threshold was chosen
BLEND_COLUMNS = {"precision": "blend precision", "recall": "blend recall", "f1": "blend F1"}
SEARCH_ROWS = 200  # the search page shows the best this many
STAT_COLUMNS = {n: {"AP": "mAP", "AP50": "mAP50"}.get(n, n) for n in STAT_NAMES}  # detfold's names for AP, AP50


def fmt(value: Any, digits: int = 4) -> str:
    """A float with ``digits`` decimals; None and NaN as n/a; anything else as ``str``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def interval(values: Sequence[float] | None) -> str:
    """A 95 % interval as ``[lo, hi]`` (nothing when there is none)."""
    return "" if not values else f"[{values[0]:.4f}, {values[1]:.4f}]"


def _cell(value: Any, digits: int) -> str:
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return f"<td{' class=n' if numeric else ''}>{html.escape(fmt(value, digits))}</td>"


def table(df: pd.DataFrame, key_rows: Sequence[bool] | None = None, digits: int = 4) -> str:
    """An HTML table of ``df`` (floats with ``digits`` decimals, numbers right aligned); ``key_rows`` bold."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, row in enumerate(df.itertuples(index=False)):
        cls = ' class="key"' if key_rows is not None and key_rows[i] else ""
        rows.append(f"<tr{cls}>" + "".join(_cell(v, digits) for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h2>{html.escape(title)}</h2>\n{body}\n</body></html>\n"
    )


def heading(text: str) -> str:
    return f"<h3>{html.escape(text)}</h3>"


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def audit_page(summary: Mapping[str, Any], checks: Sequence[str], actions: Sequence[str]) -> str:
    """Findings per check (``checks``, by ``actions`` and split) and the images and boxes
    before/after per split (``summary``: the audit's summary.json)."""
    rows = []
    for c in checks:
        found = summary["findings_per_check"].get(c, {})
        by_action, by_split = found.get("by_action", {}), found.get("by_split", {})
        rows.append(
            {"check": c, "finds": summary.get("checks", {}).get(c, ""), "total": found.get("total", 0)}
            | {a: by_action.get(a, 0) for a in actions}
            | {f"in {s}": by_split.get(s, 0) for s in summary["splits"]}
        )
    splits = pd.DataFrame([{"split": s, **v} for s, v in summary["splits"].items()])
    body = heading("Findings per check") + table(pd.DataFrame(rows))
    body += heading("Images and boxes per split, before and after the audit") + table(splits)
    return page("Ground-truth audit", body)


def _cv_row(label: str, images: Any, gt: Any, stats: Mapping[str, Any]) -> dict[str, Any]:
    return {"OOF predictions": label, "images": images, "GT boxes": gt} | {c: stats[n] for n, c in STAT_COLUMNS.items()}


def cv_table(metrics: Mapping[str, Any]) -> tuple[pd.DataFrame, list[bool]]:
    """Per-fold OOF rows, mean +- std over folds and pooled OOF of one model's metrics.json:
    images, GT boxes and the 12 COCO stats (maxDets 100; AP and AP50 named mAP and mAP50)."""
    folds, pooled = metrics["folds"], metrics["pooled_oof"]
    spread = {n: mean_std([f["stats"][n] for f in folds]) for n in STAT_NAMES}
    mean = {n: f"{fmt(v['mean'])} +- {fmt(v['std'])}" for n, v in spread.items()}
    rows = [_cv_row(f"fold {f['fold']}", f["n_images"], f["n_gt"], f["stats"]) for f in folds]
    rows.append(_cv_row("mean +- std over folds", "", "", mean))
    rows.append(_cv_row("pooled OOF (all folds together)", pooled["n_images"], pooled["n_gt"], pooled["stats"]))
    return pd.DataFrame(rows), [False] * (len(rows) - 1) + [True]


def cv_page(models: Mapping[str, Mapping[str, Any]]) -> str:
    """Per model (its metrics.json): the per-fold / mean +- std / pooled OOF table, per-class AP
    and the test score of each fold model."""
    body = ""
    for name, m in models.items():
        cv, key = cv_table(m)
        body += heading(f"{name}: out-of-fold COCO metrics (maxDets 100)") + table(cv, key)
        per_class = [
            {"class": c, "GT boxes": v["n_gt"], "AP": v["AP"], "AP50": v["AP50"], "AR_100": v["AR_100"]}
            for c, v in m["pooled_oof"]["per_class"].items()
        ]
        body += heading(f"{name}: per-class AP, pooled OOF") + table(pd.DataFrame(per_class))
        if m.get("test"):
            test = [{"fold model": f"fold {t['fold']}", "mAP": t["mAP"], "mAP50": t["mAP50"]} for t in m["test"]]
            body += heading(f"{name}: each fold model on the test set") + table(pd.DataFrame(test))
    return page("Cross-validation results", body)


def _threshold_rows(thresholds: Mapping[str, Any]) -> pd.DataFrame:
    """Per class its best-F1 threshold with the OOF (in-sample) and blend-split numbers."""
    held = (thresholds.get("holdout") or {}).get("per_class", {})
    return pd.DataFrame(
        [
            {"class": c}
            | {col: v[k] for k, col in OOF_COLUMNS.items()}
            | {col: held.get(c, {}).get(k) for k, col in BLEND_COLUMNS.items()}
            for c, v in thresholds["per_class"].items()
        ]
    )


def analysis_page(tides: Mapping[str, Mapping[str, Any]], thresholds: Mapping[str, Mapping[str, Any]]) -> str:
    """Per analysis (tide.json and thresholds.json by name, in order): the per-class thresholds
    with their precision, recall and F1 in-sample and on the blend split, and TIDE's breakdown."""
    body = note(
        "Per class the score threshold of the best F1 at IoU 0.5, chosen on the pooled out-of-fold "
        "predictions (their precision, recall and F1 there are in-sample: the threshold was picked on them), "
        "and the same threshold on the blend split, images no fold model trained on and where nothing was "
        "chosen (each fold model's predictions there, counts summed): the honest estimate. The file "
        "results/analysis/<model>/thresholds.json holds them for a deployment (key score_thr)."
    )
    for name, t in tides.items():
        body += heading(f"{name}: best-F1 thresholds") + table(_threshold_rows(thresholds[name]), digits=3)
        breakdown = [{"error type": k, "dAP50": t["main"][k], "count": t["counts"].get(k)} for k in ERROR_TYPES]
        breakdown += [{"error type": k, "dAP50": t["special"][k], "count": None} for k in SPECIAL_TYPES]
        body += heading(f"{name}: TIDE breakdown (mAP50 {t['mAP']:.4f}, pooled OOF)") + table(pd.DataFrame(breakdown))
    return page("Error analysis: thresholds and breakdown", body)


def ensemble_rows(selection: Mapping[str, Any], test: Mapping[str, Any] | None) -> pd.DataFrame:
    """Every candidate: its in-sample blend score (chosen and scored on the same images:
    optimistic), its nested blend estimate with the 95 % bootstrap interval (honest), and its
    test score; the single fold models (no choice made: their blend score is honest as it
    is); and the delivered predictions, whose honest estimate nests the whole choice."""
    metric = selection["metric"]
    test = test or {}

    def row(
        name: str, what: str, optimistic: Any, honest: Mapping[str, Any], scored: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "predictions": name,
            "what": what,
            f"blend {metric}, in-sample (optimistic)": optimistic,
            f"blend {metric}, nested (honest)": honest[metric],
            "95 % interval": interval(honest.get(f"{metric}_ci95")),
            "test mAP": scored.get("mAP") if scored else None,
            "test mAP50": scored.get("mAP50") if scored else None,
        }

    singles = test.get("single", {})
    rows = [row(name, "single fold model", None, s, singles.get(name)) for name, s in selection["singles"].items()]
    for kind in selection["kinds"]:
        c = selection["candidates"][kind]
        rows.append(
            row(c["label"], c["description"], c["in_sample"][metric], c["nested"], test.get("candidates", {}).get(kind))
        )
    d = selection["delivered"]
    rows.append(row("delivered", f"{d['label']}: {d['description']}", None, d["honest"], test.get("delivered")))
    return pd.DataFrame(rows, dtype=object)  # object: None stays None


def ensemble_page(selection: Mapping[str, Any], rows: pd.DataFrame) -> str:
    """The candidates' table (``rows``: :func:`ensemble_rows`) under a note on how the blend
    split chose and scored them (``selection``: selection.json)."""
    key = [name == "delivered" for name in rows.predictions]
    d = selection["delivered"]
    parts = selection["nested_parts"]
    body = note(
        f"Blend split: {selection['blend_images']} training images that no fold model trained on. In-sample: "
        "chosen and scored on all of them (optimistic). Nested: chosen on the other "
        f"{parts - 1} of {parts} parts, scored on the held-out part, "
        f"pooled (honest); 95 % intervals: {selection['bootstrap_samples']} bootstrap resamples of the images. "
        f"Delivered: {d['description']}, because it has the {d['why']}; its honest estimate nests that choice "
        "as well. Test: scored once, never used to choose."
    ) + table(rows, key)
    return page("Ensembles: chosen on the blend split", body)


def search_page(search: pd.DataFrame, metric: str) -> str:
    """The fusion search of both steps on the blend split (search.csv, best first per step):
    the first :data:`SEARCH_ROWS` rows, each step's best in bold."""
    text = (
        f"{len(search)} fusion parameter combinations scored on all blend images by {metric} (in-sample), "
        "best first per step; the model step fuses the fold ensembles chosen there"
        + (f"; the first {SEARCH_ROWS} shown." if len(search) > SEARCH_ROWS else ".")
    )
    rows = search.head(SEARCH_ROWS)
    rows = rows.astype(object).where(rows.notna(), None)
    key = [i == 0 or rows.step.iloc[i] != rows.step.iloc[i - 1] for i in range(len(rows))]
    return page("Fusion parameter search (blend split)", note(text) + table(rows, key))


def run_facts_page(facts: pd.DataFrame, per_rule: pd.DataFrame, jobs: pd.DataFrame, config_yaml: str) -> str:
    """Seed, versions and machine (``facts``), run time per rule (the last row: the total) and
    per job, and the config used."""
    body = (
        heading("Run facts")
        + note("Versions and machine as seen by this rule (on a cluster: the node that ran it).")
        + table(facts)
        + heading("Run time per rule (Snakemake benchmark files)")
        + table(per_rule, [False] * (len(per_rule) - 1) + [True], digits=1)
        + heading("Run time per job")
        + table(jobs, digits=1)
        + heading("Config used")
        + f"<pre>{html.escape(config_yaml)}</pre>"
    )
    return page("Run facts", body)


def markdown_page(title: str, text: str) -> str:
    """A markdown document (headings, paragraphs, tables, bold) as a page in the report's style."""
    import markdown

    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


LEADERBOARD_COLUMNS = {  # leaderboard.json's row key -> column
    "rank": "rank",
    "model": "model",
    "kind": "kind",
    "mAP": "mAP",
    "mAP_ci": "mAP 95 %",
    "mAP50": "mAP50",
    "mAP50_ci": "mAP50 95 %",
    "diff": "difference to the leader",
    "diff_ci": "paired 95 %",
    "distinct": "told apart from the leader",
    "train_s": "training s",
    "params": "parameters",
}


def leaderboard_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The leaderboard's rows of one scope for reading: intervals as [lo, hi], the difference
    to the leader in ``metric``."""
    out = rows.assign(
        mAP_ci=[interval([lo, hi]) for lo, hi in zip(rows.mAP_lo, rows.mAP_hi, strict=True)],
        mAP50_ci=[interval([lo, hi]) for lo, hi in zip(rows.mAP50_lo, rows.mAP50_hi, strict=True)],
        diff=rows[f"{metric}_diff"],
        diff_ci=[
            interval([lo, hi]) for lo, hi in zip(rows[f"{metric}_diff_lo"], rows[f"{metric}_diff_hi"], strict=True)
        ],
        distinct=["yes" if d else "no" for d in rows.distinct_from_leader],
        train_s=rows.train_s.round(0).astype(int),
        params=[f"{p / 1e6:.2f} M" for p in rows.params],
    )
    return out[list(LEADERBOARD_COLUMNS)].rename(columns=LEADERBOARD_COLUMNS)


def leaderboard_page(board: Mapping[str, Any], rows: pd.DataFrame) -> str:
    """Each scope's leaderboard (``rows``: leaderboard.json's rows) under a note on how it was made."""
    metric, boot = board["metric"], board["bootstrap"]
    body = note(
        f"Ranked by {metric}. Intervals: {boot['samples']} bootstrap resamples of the images (seed {boot['seed']}); "
        f"the difference to the leader ({metric}) is paired: the same resamples score every model. A model is told "
        "apart from the leader when that interval leaves out 0. Screens (kind screen) trained only the folds listed; "
        "they are compared here, not fused."
    )
    for scope in board["scopes"]:
        body += heading(f"{scope['scope']}: {scope['images']} images") + table(
            leaderboard_table(rows[rows.scope == scope["scope"]], metric), None
        )
    return page("Leaderboard: every model on the same images", body)
