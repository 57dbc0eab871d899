"""Rule predict: one fold model on its out-of-fold images or on the test images."""

from detfold.core.logs import log_to
from detfold.predict.stage import run_predict

log_to(snakemake.log[0])
run_predict(
    config=snakemake.input.config,
    checkpoint=snakemake.input.checkpoint,
    annotations=snakemake.input.coco,
    images=snakemake.params.images,
    score_thr=snakemake.params.score_thr,
    max_per_img=snakemake.params.max_per_img,
    out=snakemake.output.predictions,
    threads=snakemake.threads,
    tta=snakemake.params.tta,
    jobs_per_gpu=snakemake.resources.jobs_per_gpu,
)
