"""Rule evaluate: COCO metrics per fold, pooled out-of-fold (with bootstrap intervals), and on the test set."""

from detfold.core.logs import log_to
from detfold.evaluate.stage import run_evaluate

log_to(snakemake.log[0])
run_evaluate(
    model=snakemake.wildcards.model,
    folds=list(snakemake.params.folds),
    val_jsons=list(snakemake.input.val),
    oof_preds=list(snakemake.input.oof),
    test_json=snakemake.input.test_gt[0] if snakemake.input.test_gt else None,
    test_preds=list(snakemake.input.test),
    out=snakemake.output.metrics,
    out_pr_curves=snakemake.output.pr_curves,
    seed=snakemake.params.seed,
)
