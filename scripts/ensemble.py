"""Rule ensemble: fold ensembles per model, then the OOF-tuned fusion of the models, on the test set."""

from detfold.logs import log_to
from detfold.stages import files_by_model, run_ensemble_test

log_to(snakemake.log[0])
run_ensemble_test(
    test_json=snakemake.input.test_gt,
    model_test=files_by_model(snakemake.params.models, snakemake.input.test),
    settings=dict(snakemake.params.settings),
    best_json=snakemake.input.best,
    out_preds=snakemake.output.fused,
    out_default=snakemake.output.default,
    out_metrics=snakemake.output.metrics,
    out_submission=snakemake.output.submission,
)
