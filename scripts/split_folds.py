"""Rule split_folds: set the blend split aside, then assign every other image (or group) to one balanced fold."""

from detfold.core.logs import log_to
from detfold.folds.stage import run_split

log_to(snakemake.log[0])
run_split(
    snakemake.input.coco,
    k=snakemake.params.k,
    seed=snakemake.params.seed,
    out_table=snakemake.output.table,
    method=snakemake.params.method,
    group_by=snakemake.params.group_by,
    weights=dict(snakemake.params.weights),
    images=snakemake.params.images,
    near_duplicate_distance=snakemake.params.near_duplicate_distance,
    out_balance=snakemake.output.balance,
    out_plot=snakemake.output.plot,
    out_summary=snakemake.output.summary,
    out_near_duplicates=snakemake.output.near_duplicates,
    blend_share=snakemake.params.blend_share,
    out_blend=snakemake.output.blend,
)
