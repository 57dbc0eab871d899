# Shared input functions and wildcard constraints.
import re

from detfold.analyze import OOF_ENSEMBLE
from detfold.core.config import model_gpus as config_model_gpus
from detfold.core.io import incomplete_products, mark_outdated
from detfold.core.variants import model_folds

MODELS = sorted(config["models"])

# Outputs of an earlier run that were cut short or are garbage (a crash of an older version, a
# bad copy) are not trusted: marked outdated before the DAG is built, so this very run redoes them.
# Only by the run's own snakemake (not a cluster job's), and never by a dry run (-n) or --lint
# (the one mode that parses the workflow with check_envvars off): those change no file.
if workflow.is_main_process:
    LOOKING_ONLY = workflow.output_settings.dryrun or not workflow.check_envvars
    for path in incomplete_products("results"):
        if LOOKING_ONLY:
            logger.warning(f"detfold: {path} is incomplete or corrupt: a run will redo it")
        else:
            mark_outdated(path)
            logger.warning(f"detfold: {path} is incomplete or corrupt: it will be redone")
FOLDS = list(range(config["folds"]["k"]))
# The folds each model trains (models.NAME.folds); the models that train them all are fused
# (and analysed); the others are screens, on the leaderboard only.
MODEL_FOLDS = {m: model_folds(config["models"][m], len(FOLDS)) for m in MODELS}
FULL_MODELS = [m for m in MODELS if MODEL_FOLDS[m] == FOLDS]
# The error analysis of the models fused (OOF_ENSEMBLE, several models only); check_feasible
# refuses a model of this name.
ANALYSES = FULL_MODELS + ([OOF_ENSEMBLE] if len(FULL_MODELS) > 1 else [])


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    fold=r"\d+",
    split="oof|test|blend",


# A test set is optional: without data.test_annotations the run ends with cross-validation, the
# blend-split choice and the report.
HAS_TEST = bool(config["data"].get("test_annotations"))


def test_file(path):
    """``path`` (a file or a list) when there is a test set, else nothing."""
    if not HAS_TEST:
        return []
    return path if isinstance(path, list) else [path]


def audit_input(split):
    """The split's COCO file: as given, or converted from VOC/YOLO by import_annotations; a test
    set given as a list of image file names (.txt) is read as it is."""
    if split == "test" and not HAS_TEST:
        return []
    if config["data"]["format"] == "coco" or config["data"][f"{split}_annotations"].endswith(".txt"):
        return config["data"][f"{split}_annotations"]
    return f"results/import/{split}.json"


def audit_overrides(wildcards):
    """A person's keep/drop decisions (an input, so editing them reruns the audit)."""
    path = config["audit"].get("overrides")
    return [path] if path else []


def group_csv_input(wildcards):
    """The group mapping CSV of folds.group_by: csv:PATH (an input: editing it re-splits)."""
    group_by = config["folds"].get("group_by") or ""
    return [group_by[4:]] if group_by.startswith("csv:") else []


def model_settings(wildcards):
    """The model's settings dict (a param, so editing it reruns that model's jobs), but its
    folds: a screen given more folds keeps the folds it trained."""
    return {k: v for k, v in config["models"][wildcards.model].items() if k != "folds"}


def model_fold_files(pattern, full_only=False):
    """An input function: ``pattern`` for each fold the model trains (none for a screen when
    ``full_only``: its test predictions and error analysis are not made)."""

    def files(wildcards):
        if full_only and wildcards.model not in FULL_MODELS:
            return []
        return expand(pattern, model=wildcards.model, fold=MODEL_FOLDS[wildcards.model])

    return files


def each_model_fold(pattern):
    """``pattern`` for every (model, fold) trained, in MODEL_FOLDS' order."""
    return [pattern.format(model=m, fold=f) for m in MODELS for f in MODEL_FOLDS[m]]


def model_gpus(wildcards):
    """GPUs of the model's training job (SLURM: --gpus; locally: shares of the slot pool)."""
    return config_model_gpus(config["models"][wildcards.model])


def model_config_file(wildcards):
    """The model's config file as an input (none for mmdet:: package configs)."""
    path = config["models"][wildcards.model]["config"]
    return [] if path.startswith("mmdet::") else [path]


def predict_annotations(wildcards):
    """Out-of-fold predictions cover the fold's val images, blend ones the blend split (no fold
    trains on it), test ones the test images."""
    if wildcards.split == "oof":
        return f"results/folds/fold{wildcards.fold}/val.json"
    if wildcards.split == "blend":
        return "results/folds/blend_annotations.json"
    return "results/audit/test.json"


def predict_images(wildcards):
    key = "test_images" if wildcards.split == "test" else "train_images"
    return config["data"][key]


def ensemble_choice_settings():
    """The ensemble settings the blend-split choice uses (not submission_label: editing it only
    rewrites the submission)."""
    return {k: v for k, v in config["ensemble"].items() if k != "submission_label"}


def ensemble_test_settings():
    """The ensemble settings the test rule uses (the choice itself comes from best.json)."""
    keys = ("external", "max_per_img", "submission_label", "bootstrap_samples")
    return {k: config["ensemble"].get(k) for k in keys}


def analysis_fusion_settings():
    """The untuned model fusion (ensemble.method, iou_thr, ...; equal weights) with which the
    error analysis fuses several predictions of an image: the fold models' on the blend split,
    and the models' for the OOF ensemble."""
    keys = ("method", "iou_thr", "skip_box_thr", "conf_type", "class_agnostic", "max_per_img")
    return {k: config["ensemble"].get(k) for k in keys}


def external_files(split):
    """Prediction files of external models (ensemble.external) for 'oof' or 'test'."""
    specs = config["ensemble"].get("external") or []
    files = [spec[split] for spec in specs if spec.get(split)]
    files += [spec["id_source"] for spec in specs if spec.get("id_source")]
    return files


def benchmark_files(wildcards):
    """Every job's benchmark file but run_facts' own: the run times that run_facts tabulates
    (as its inputs they also make it the run's last job)."""
    files = [
        rules.audit.benchmark,
        rules.split_folds.benchmark,
        rules.ensemble_select.benchmark,
        *test_file(rules.ensemble_test.benchmark),
        rules.summary.benchmark,
        rules.report_folds.benchmark,
        rules.report_audit.benchmark,
        rules.report_cv.benchmark,
        rules.report_ensemble.benchmark,
        rules.report_analysis.benchmark,
    ]
    if config["data"]["format"] != "coco":
        imported = [s for s in ("train", "test") if "results/import" in "".join(audit_input(s))]
        files += expand(rules.import_annotations.benchmark, split=imported)
    files += expand(rules.fold_files.benchmark, fold=FOLDS)
    files += each_model_fold(rules.train.benchmark)
    files += each_model_fold(rules.predict.benchmark.replace("{split}", "oof"))
    splits = ["blend", *test_file("test")]
    files += expand(rules.predict.benchmark, model=FULL_MODELS, fold=FOLDS, split=splits)
    files += expand(rules.evaluate.benchmark, model=MODELS)
    files += [rules.compare.benchmark, rules.report_compare.benchmark, rules.report_summary.benchmark]
    files += expand(rules.report_training.benchmark, model=MODELS)
    files += expand(rules.analyze.benchmark, model=FULL_MODELS)
    if len(FULL_MODELS) > 1:
        files.append(rules.analyze_ensemble.benchmark)
    return files
