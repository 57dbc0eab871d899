"""Rule ensemble_oof: choose fusion parameters on the pooled out-of-fold predictions."""

from detfold.logs import log_to
from detfold.stages import run_ensemble_oof

log_to(snakemake.log[0])
models, files = snakemake.params.models, list(snakemake.input.oof)
k = len(files) // len(models)  # expand() lists each model's K fold files together
run_ensemble_oof(
    gt_json=snakemake.input.gt,
    model_oof={m: files[i * k : (i + 1) * k] for i, m in enumerate(models)},
    settings=dict(snakemake.params.settings),
    out_search=snakemake.output.search,
    out_best=snakemake.output.best,
    out_oof=snakemake.output.oof,
    out_metrics=snakemake.output.metrics,
)
