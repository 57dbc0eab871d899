"""Rule ensemble: fuse every model x fold's test predictions; score fusion and members."""

from detfold.logs import log_to
from detfold.stages import run_ensemble

log_to(snakemake.log[0])
run_ensemble(
    test_json=snakemake.input.test_gt,
    test_preds=dict(zip(snakemake.params.members, snakemake.input.predictions, strict=True)),
    settings=dict(snakemake.params.settings),
    out_preds=snakemake.output.fused,
    out_metrics=snakemake.output.metrics,
)
