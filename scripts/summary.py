"""Rule summary: the run's headline numbers as markdown and JSON."""

from detfold.core.logs import log_to
from detfold.report.stage import run_summary

log_to(snakemake.log[0])
run_summary(
    audit_summary=snakemake.input.audit,
    fold_table=snakemake.input.folds,
    model_metrics=dict(zip(snakemake.params.models, snakemake.input.models, strict=True)),
    selection_json=snakemake.input.selection,
    leaderboard_json=snakemake.input.leaderboard,
    out_md=snakemake.output.md,
    out_json=snakemake.output.json,
    fold_balance=snakemake.input.balance,
    test_metrics=snakemake.input.test[0] if snakemake.input.test else None,
)
