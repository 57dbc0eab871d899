"""Rule ensemble_test: the candidate chosen on the blend split, applied to the test predictions."""

from detfold.core.io import files_by_model
from detfold.core.logs import log_to
from detfold.ensemble.stage import run_ensemble_test

log_to(snakemake.log[0])
run_ensemble_test(
    test_json=snakemake.input.test_gt,
    model_test=files_by_model(snakemake.params.models, snakemake.input.test),
    settings=dict(snakemake.params.settings),
    best_json=snakemake.input.best,
    selection_json=snakemake.input.selection,
    seed=snakemake.params.seed,
    out_preds=snakemake.output.fused,
    out_metrics=snakemake.output.metrics,
    out_submission=snakemake.output.submission,
)
