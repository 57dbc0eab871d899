"""Rule audit: validate both splits, drop/flag bad boxes, write findings and cleaned files."""

from detfold.logs import log_to
from detfold.stages import run_audit

log_to(snakemake.log[0])
run_audit(
    train_annotations=snakemake.input.train,
    train_images=snakemake.params.train_images,
    test_annotations=snakemake.input.test,
    test_images=snakemake.params.test_images,
    policy=dict(snakemake.params.policy),
    out_train=snakemake.output.train,
    out_test=snakemake.output.test,
    out_findings=snakemake.output.findings,
    out_summary=snakemake.output.summary,
)
