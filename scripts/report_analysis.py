"""Rule report_analysis: TIDE breakdown bars, confusion heatmaps and the best-F1 threshold table."""

from detfold.core.logs import log_to
from detfold.report.stage import report_analysis

log_to(snakemake.log[0])
files = zip(snakemake.input.tide, snakemake.input.thresholds, snakemake.input.confusion, strict=True)
report_analysis(
    analyses={
        name: {"tide": t, "thresholds": th, "confusion": c}
        for name, (t, th, c) in zip(snakemake.params.names, files, strict=True)
    },
    out_breakdown=snakemake.output.breakdown,
    out_confusion=snakemake.output.confusion,
    out_thresholds=snakemake.output.thresholds,
)
