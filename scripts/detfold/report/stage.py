"""Stage report (workflow/report.smk): what its rule scripts call (read inputs, call the library, write outputs)."""

from __future__ import annotations

import logging
from pathlib import Path

from detfold.core.io import read_json, write_json, write_text
from detfold.evaluate.metrics import STAT_NAMES, headline
from detfold.folds import assign

log = logging.getLogger(__name__)


def run_summary(
    audit_summary: str,
    fold_table: str,
    model_metrics: dict[str, str],
    selection_json: str,
    out_md: str,
    out_json: str,
    fold_balance: str | None = None,
    test_metrics: str | None = None,
) -> None:
    """Headline numbers of the run as markdown (for the terminal) and JSON
    (:func:`detfold.report.pages.summary_markdown`)."""
    from detfold.report.pages import summary_markdown

    aud = read_json(audit_summary)
    table = assign.read_folds(fold_table)
    balance = read_json(fold_balance) if fold_balance else None
    models = {name: read_json(path) for name, path in sorted(model_metrics.items())}
    selection = read_json(selection_json)
    test = read_json(test_metrics) if test_metrics else None
    sizes = table.fold.value_counts().sort_index()
    write_text(out_md, summary_markdown(aud, sizes.tolist(), balance, models, selection, test))
    write_json(
        out_json,
        {
            "audit": aud,
            "fold_sizes": {int(k): int(v) for k, v in sizes.items()},
            "fold_balance": balance,
            "models": {
                n: {
                    "cv": m["cv"],
                    "pooled_oof": {k: m["pooled_oof"][k] for k in ("mAP", "mAP50", "mAP_ci95", "mAP50_ci95")},
                }
                for n, m in models.items()
            },
            "delivered": selection["delivered"],
            "test": None
            if test is None
            else {
                "delivered": {k: test["delivered"].get(k) for k in ("mAP", "mAP50", "mAP_ci95", "mAP50_ci95")},
                "single": {n: headline(m) for n, m in test.get("single", {}).items()},
                "candidates": {n: headline(m) for n, m in test.get("candidates", {}).items()},
            },
            "stat_names": list(STAT_NAMES),
        },
    )
    log.info("summary written to %s", Path(out_md))
