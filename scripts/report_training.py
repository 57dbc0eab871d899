"""Rule report_training: one model's loss, learning-rate and val mAP curves, all folds."""

from detfold.core.logs import log_to
from detfold.report.stage import report_training

log_to(snakemake.log[0])
report_training(snakemake.wildcards.model, snakemake.input.checkpoints, snakemake.output.curves)
