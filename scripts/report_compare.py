"""Rule report_compare: the leaderboard as a plot and a table."""

from detfold.core.logs import log_to
from detfold.report.stage import report_compare

log_to(snakemake.log[0])
report_compare(snakemake.input.json, snakemake.output.plot, snakemake.output.table)
