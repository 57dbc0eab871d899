"""Rule report_summary: the run summary (results/summary.md) as the report's first page."""

from detfold.core.logs import log_to
from detfold.report.stage import report_summary

log_to(snakemake.log[0])
report_summary(snakemake.input.md, snakemake.output.page)
