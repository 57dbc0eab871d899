"""Rule train: one model on one fold through MMDetection's Runner."""

from detfold.core.logs import log_to
from detfold.train.mmdet_train import train_fold

log_to(snakemake.log[0])
train_fold(
    settings=dict(snakemake.params.settings),
    train_json=snakemake.input.train,
    val_json=snakemake.input.val,
    images_dir=snakemake.params.images,
    checkpoint_out=snakemake.output.checkpoint,
    config_out=snakemake.output.config,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    jobs_per_gpu=snakemake.resources.jobs_per_gpu,
)
