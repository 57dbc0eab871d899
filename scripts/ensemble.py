"""Rule ensemble: fold ensembles per model, then the OOF-tuned fusion of the models, on the test set."""

from detfold.logs import log_to
from detfold.stages import run_ensemble_test

log_to(snakemake.log[0])
models, files = snakemake.params.models, list(snakemake.input.test)
k = len(files) // len(models)  # expand() lists each model's K fold files together
run_ensemble_test(
    test_json=snakemake.input.test_gt,
    model_test={m: files[i * k : (i + 1) * k] for i, m in enumerate(models)},
    settings=dict(snakemake.params.settings),
    best_json=snakemake.input.best,
    out_preds=snakemake.output.fused,
    out_default=snakemake.output.default,
    out_metrics=snakemake.output.metrics,
    out_submission=snakemake.output.submission,
)
