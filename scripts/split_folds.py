"""Rule split_folds: assign every image to one class-stratified fold."""

from detfold.logs import log_to
from detfold.stages import run_split

log_to(snakemake.log[0])
run_split(snakemake.input.coco, k=snakemake.params.k, seed=snakemake.params.seed, out_table=snakemake.output.table)
