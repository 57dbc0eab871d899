"""Rule report_cv: per-fold metrics table, per-class AP and PR curves of every model."""

from detfold.core.logs import log_to
from detfold.report.stage import report_cv

log_to(snakemake.log[0])
report_cv(
    model_metrics=dict(zip(snakemake.params.models, snakemake.input.metrics, strict=True)),
    pr_curves=dict(zip(snakemake.params.models, snakemake.input.pr_curves, strict=True)),
    out_html=snakemake.output.table,
    out_ap=snakemake.output.per_class,
    out_pr=snakemake.output.pr_curves,
)
