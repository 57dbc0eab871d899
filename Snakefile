# detfold: K-fold cross-validation for object detection. This file only wires:
# config and its validation, the stage files, and the final target.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/common.smk"
include: "workflow/audit.smk"
include: "workflow/folds.smk"
include: "workflow/train.smk"
include: "workflow/predict.smk"
include: "workflow/evaluate.smk"
include: "workflow/ensemble.smk"
include: "workflow/report.smk"


rule all:
    input:
        "results/summary.md",
        "results/report/run_facts.html",  # needs every job's benchmark, so every report plot
