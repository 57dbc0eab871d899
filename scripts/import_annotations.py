"""Rule import_annotations: Pascal VOC XML or YOLO txt labels -> COCO."""

from detfold.audit.stage import run_import
from detfold.core.logs import log_to

log_to(snakemake.log[0])
run_import(
    fmt=snakemake.params.format,
    source=snakemake.input.source,
    images=snakemake.params.images,
    class_names=snakemake.params.class_names,
    out=snakemake.output.coco,
    difficult=snakemake.params.difficult,
)
