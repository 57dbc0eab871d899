"""Rule summary: the run's headline numbers as markdown and JSON."""

from detfold.logs import log_to
from detfold.stages import run_summary

log_to(snakemake.log[0])
run_summary(
    audit_summary=snakemake.input.audit,
    fold_table=snakemake.input.folds,
    model_metrics=dict(zip(snakemake.params.models, snakemake.input.models, strict=True)),
    ensemble_metrics=snakemake.input.ensemble,
    out_md=snakemake.output.md,
    out_json=snakemake.output.json,
    fold_balance=snakemake.input.balance,
    oof_ensemble=snakemake.input.oof_ensemble,
)
