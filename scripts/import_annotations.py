"""Rule import_annotations: Pascal VOC XML or YOLO txt labels -> COCO."""

from detfold.logs import log_to
from detfold.stages import run_import

log_to(snakemake.log[0])
run_import(
    fmt=snakemake.params.format,
    source=snakemake.input.source,
    images=snakemake.params.images,
    class_names=snakemake.params.class_names,
    out=snakemake.output.coco,
)
