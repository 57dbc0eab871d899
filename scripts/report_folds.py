"""Rule report_folds: images and boxes per fold, for the report."""

from detfold.core.logs import log_to
from detfold.report.stage import report_fold_sizes

log_to(snakemake.log[0])
report_fold_sizes(snakemake.input.table, snakemake.input.balance, snakemake.output.sizes)
