"""Rule fold_files: the fold's train/val COCO files, original ids kept."""

from detfold.core.logs import log_to
from detfold.folds.stage import run_fold_files

log_to(snakemake.log[0])
run_fold_files(
    snakemake.input.coco,
    snakemake.input.table,
    int(snakemake.wildcards.fold),
    snakemake.output.train,
    snakemake.output.val,
)
