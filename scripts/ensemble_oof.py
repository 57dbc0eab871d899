"""Rule ensemble_oof: choose fusion parameters on the pooled out-of-fold predictions."""

from detfold.logs import log_to
from detfold.stages import files_by_model, run_ensemble_oof

log_to(snakemake.log[0])
run_ensemble_oof(
    gt_json=snakemake.input.gt,
    model_oof=files_by_model(snakemake.params.models, snakemake.input.oof),
    settings=dict(snakemake.params.settings),
    out_search=snakemake.output.search,
    out_best=snakemake.output.best,
    out_oof=snakemake.output.oof,
    out_metrics=snakemake.output.metrics,
)
