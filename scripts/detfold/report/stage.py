"""Stage report (workflow/report.smk): what its rule scripts call. Each reads its inputs and
writes plots (:mod:`~detfold.report.plots`), HTML pages (:mod:`~detfold.report.tables`), the run
summary (:mod:`~detfold.report.summary`) or the run facts (:mod:`~detfold.report.facts`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from detfold.core.io import read_json, write_json, write_text
from detfold.folds import assign
from detfold.report import facts, plots, tables
from detfold.report.summary import RunResults, summary_json, summary_markdown

log = logging.getLogger(__name__)


def report_fold_sizes(fold_table: str, balance_csv: str, out_png: str) -> None:
    """Images and boxes per fold as bars."""
    images = pd.read_csv(fold_table).fold.value_counts().sort_index()
    boxes = pd.read_csv(balance_csv).groupby("fold").boxes.sum().reindex(images.index, fill_value=0)
    plots.fold_sizes(images, boxes, out_png)


def report_audit(summary_json: str, out_png: str, out_html: str) -> None:
    """Findings per check (every check, zero included) by action, as a PNG and as an HTML table
    with the images and boxes before/after per split."""
    summary = read_json(summary_json)
    found = summary["findings_per_check"]
    checks = list(dict.fromkeys([*summary.get("checks", {}), *found]))
    actions = sorted({a for entry in found.values() for a in entry["by_action"]})
    plots.audit_findings(found, checks, actions, out_png)
    write_text(out_html, tables.audit_page(summary, checks, actions))


def report_training(model: str, checkpoints: Sequence[str], out_png: str) -> None:
    """One model's training curves, one line per fold, read from the mmengine work dir beside
    each fold's checkpoint (``.../fold{k}/model.pth`` -> ``.../fold{k}/work``)."""
    plots.training(model, [plots.read_scalars(Path(c).parent / "work") for c in checkpoints], out_png)


def report_cv(
    model_metrics: Mapping[str, str], pr_curves: Mapping[str, str], out_html: str, out_ap: str, out_pr: str
) -> None:
    """Every model's cross-validation (metrics.json, pr_curves.csv by name): the tables (HTML),
    per-class AP bars and precision-recall curves (PNG)."""
    models = {name: read_json(path) for name, path in sorted(model_metrics.items())}
    write_text(out_html, tables.cv_page(models))
    classes = list(dict.fromkeys(c for m in models.values() for c in m["pooled_oof"]["per_class"]))
    plots.per_class_ap(models, classes, out_ap)
    plots.pr_curves({name: pd.read_csv(path) for name, path in sorted(pr_curves.items())}, classes, out_pr)


def report_analysis(
    analyses: Mapping[str, Mapping[str, str]], out_breakdown: str, out_confusion: str, out_thresholds: str
) -> None:
    """Every analysis (by name, its files ``tide``, ``thresholds``, ``confusion`` of
    :func:`detfold.analyze.analysis.write_analysis`): TIDE's breakdown and the confusion matrix
    (PNG), the per-class thresholds and the breakdown (HTML)."""
    names = sorted(analyses)
    tides = {n: read_json(analyses[n]["tide"]) for n in names}
    confusions = {n: pd.read_csv(analyses[n]["confusion"], index_col=0) for n in names}
    classes = list(dict.fromkeys(c for t in tides.values() for c in t["per_class"]))
    plots.tide_breakdown(tides, classes, out_breakdown)
    plots.confusion(confusions, len(classes), out_confusion)
    thresholds = {n: read_json(analyses[n]["thresholds"]) for n in names}
    write_text(out_thresholds, tables.analysis_page(tides, thresholds))


def report_ensemble(
    selection_json: str, test_metrics: str | None, search_csv: str, out_png: str, out_html: str, out_search: str
) -> None:
    """The candidates on the blend split and the test set: bars (PNG; single fold models left
    out) and the table (HTML); the fusion search, best first (HTML)."""
    selection = read_json(selection_json)
    rows = tables.ensemble_rows(selection, read_json(test_metrics) if test_metrics else None)
    plots.candidates(rows[rows.what != "single fold model"].reset_index(drop=True), selection["metric"], out_png)
    write_text(out_html, tables.ensemble_page(selection, rows))
    write_text(out_search, tables.search_page(pd.read_csv(search_csv), selection["metric"]))


def report_summary(summary_md: str, out_html: str) -> None:
    """``summary.md`` as an HTML page: the report's first result."""
    write_text(out_html, tables.markdown_page("detfold run summary", Path(summary_md).read_text(encoding="utf-8")))


def report_compare(leaderboard_json: str, out_png: str, out_html: str) -> None:
    """The leaderboard (:mod:`detfold.compare`): intervals and paired differences to the
    leader as a plot (PNG), every column as a table (HTML)."""
    board = read_json(leaderboard_json)
    rows = pd.DataFrame(board["rows"])
    plots.leaderboard(rows, board["metric"], out_png)
    write_text(out_html, tables.leaderboard_page(board, rows))


def report_run_facts(benchmarks: Sequence[str], config: Mapping[str, Any], out_html: str) -> None:
    """Seed, versions, machine, run time per rule and per job (Snakemake's benchmark files under
    ``benchmarks/``) and the config used, as one HTML page."""
    per_rule, jobs = facts.run_times(facts.read_benchmarks(benchmarks))
    config_yaml = yaml.safe_dump(dict(config), sort_keys=False)
    write_text(out_html, tables.run_facts_page(facts.facts_table(config), per_rule, jobs, config_yaml))


def run_summary(
    audit_summary: str,
    fold_table: str,
    model_metrics: dict[str, str],
    selection_json: str,
    leaderboard_json: str,
    out_md: str,
    out_json: str,
    fold_balance: str | None = None,
    test_metrics: str | None = None,
) -> None:
    """Headline numbers of the run as markdown (for the terminal) and JSON."""
    sizes = assign.read_folds(fold_table).fold.value_counts().sort_index()
    run = RunResults(
        audit=read_json(audit_summary),
        fold_sizes={int(k): int(v) for k, v in sizes.items()},
        balance=read_json(fold_balance) if fold_balance else None,
        models={name: read_json(path) for name, path in sorted(model_metrics.items())},
        selection=read_json(selection_json),
        leaderboard=read_json(leaderboard_json),
        test=read_json(test_metrics) if test_metrics else None,
    )
    write_text(out_md, summary_markdown(run))
    write_json(out_json, summary_json(run))
    log.info("summary written to %s", Path(out_md))
