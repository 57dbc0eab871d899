"""Rule audit: validate both splits, run the checks, apply policy and overrides, report."""

from detfold.audit.stage import run_audit
from detfold.core.logs import log_to

log_to(snakemake.log[0])
run_audit(
    train_annotations=snakemake.input.train,
    train_images=snakemake.params.train_images,
    test_annotations=snakemake.input.test or None,  # none: no test set
    test_images=snakemake.params.test_images,
    settings=dict(snakemake.params.settings),
    overrides=snakemake.input.overrides[0] if snakemake.input.overrides else None,
    out_train=snakemake.output.train,
    out_test=snakemake.output.test,
    out_findings=snakemake.output.findings,
    out_summary=snakemake.output.summary,
    out_gallery=snakemake.output.gallery,
)
