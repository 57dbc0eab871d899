"""Rule report_audit: audit findings per check, as a plot and a table, for the report."""

from detfold.core.logs import log_to
from detfold.report.stage import report_audit

log_to(snakemake.log[0])
report_audit(snakemake.input.summary, snakemake.output.plot, snakemake.output.table)
