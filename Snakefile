# detfold: K-fold cross-validation for object detection. This file only wires:
# config and its validation, the stage files, and the final target.
import sys

from snakemake.utils import min_version, validate

min_version("9.0")
sys.path.insert(0, f"{workflow.basedir}/scripts")
from detfold.core.config import (
    check_config_files,
    check_feasible,
    check_schema,
    drop_disabled_models,
    warn_merged_config,
)
from detfold.core.variants import expand_variants

# The config gate, before any job: first the config files themselves (not YAML, not a mapping,
# a key given twice: Snakemake would keep the last one silently; a --configfile that is not
# YAML Snakemake refuses itself, before this file runs).
check_config_files(["config/config.yaml", *workflow.overwrite_configfiles])


configfile: "config/config.yaml"


# Then models set to null left out, every schema problem (key, value, what is allowed) and
# setting the chosen method would ignore, the variants expanded (and their names and values
# checked), then defaults filled in, then what a schema cannot
# see (missing files, k > images, ...), and warnings for settings ignored or merged from the
# demo into a user's --configfile.
drop_disabled_models(config)
check_schema(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")
expand_variants(config)  # a model with variants becomes one model per combination
validate(config, "workflow/schemas/config.schema.yaml")
check_feasible(config)
warn_merged_config(
    config,
    merged=bool(workflow.overwrite_configfiles) and not workflow.config_settings.replace_workflow_config,
)


report: "workflow/report/workflow.rst"


include: "workflow/common.smk"
include: "workflow/audit.smk"
include: "workflow/folds.smk"
include: "workflow/train.smk"
include: "workflow/predict.smk"
include: "workflow/evaluate.smk"
include: "workflow/compare.smk"
include: "workflow/ensemble.smk"
include: "workflow/analyze.smk"
include: "workflow/report.smk"


rule all:
    input:
        "results/summary.md",
        "results/report/summary.html",
        "results/report/compare/leaderboard.png",
        "results/report/run_facts.html",  # needs every job's benchmark, so every report plot
