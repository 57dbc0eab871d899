"""Rule ensemble_select: choose the delivered candidate on the blend split, with honest estimates."""

from detfold.core.io import files_by_model
from detfold.core.logs import log_to
from detfold.ensemble.stage import run_ensemble_select

log_to(snakemake.log[0])
run_ensemble_select(
    blend_json=snakemake.input.blend,
    train_json=snakemake.input.train,
    model_blend=files_by_model(snakemake.params.models, snakemake.input.predictions),
    settings=dict(snakemake.params.settings),
    seed=snakemake.params.seed,
    out_search=snakemake.output.search,
    out_best=snakemake.output.best,
    out_selection=snakemake.output.selection,
    out_blend=snakemake.output.blend,
    processes=snakemake.threads,
)
