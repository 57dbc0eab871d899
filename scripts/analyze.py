"""Rules analyze / analyze_ensemble: TIDE breakdown, best-F1 thresholds, confusion matrix, label
review and galleries of the pooled out-of-fold predictions (one model, or the models fused)."""

from detfold.analyze import OOF_ENSEMBLE
from detfold.analyze.stage import run_analyze
from detfold.core.io import files_by_model
from detfold.core.logs import log_to

log_to(snakemake.log[0])
models = snakemake.params.get("models") or [snakemake.wildcards.model]
run_analyze(
    name=snakemake.wildcards.get("model", OOF_ENSEMBLE),
    val_jsons=list(snakemake.input.val),
    oof_preds=list(files_by_model(models, list(snakemake.input.oof)).values()),
    blend_json=snakemake.input.blend,
    blend_preds=list(files_by_model(models, list(snakemake.input.blend_preds)).values()),
    images_dir=snakemake.params.images,
    out_dir=snakemake.output.tide.rsplit("/", 1)[0],
    gallery_dir=snakemake.output.gallery,
    fusion=dict(snakemake.params.fusion),
)
