"""Rule compare: the leaderboard of every model and variant on the same images."""

from detfold.compare.stage import run_compare
from detfold.core.logs import log_to

log_to(snakemake.log[0])
run_compare(
    model_folds=snakemake.params.model_folds,
    val_jsons=list(snakemake.input.val),
    oof=list(snakemake.input.oof),
    checkpoints=list(snakemake.input.checkpoints),
    train_benchmarks=list(snakemake.input.train_benchmarks),
    metric=snakemake.params.metric,
    seed=snakemake.params.seed,
    out_csv=snakemake.output.csv,
    out_json=snakemake.output.json,
)
