"""The real DAG end to end: real MMDetection training (1 epoch), 2 models x 3 folds, a few dozen images.

Checks that the outputs mean something: folds partition the images, out-of-fold predictions
cover exactly each fold's val images, metrics are numbers in [0, 1] and equal an independent
pycocotools evaluation of the same files, and a second run has nothing to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from detfold.core.coco import load_coco, write_coco
from helpers.predictions import pycocotools_eval
from helpers.workflow_run import planned_jobs, snakemake

pytestmark = pytest.mark.workflow


def read(path: Path):
    return json.loads(path.read_text())


def test_results_layout(tiny_run):
    r = tiny_run / "results"
    expected = [
        "audit/annotations.json",
        "audit/findings.csv",
        "audit/summary.json",
        "folds/folds.csv",
        "folds/fold0/train.json",
        "folds/fold1/val.json",
        "folds/blend_annotations.json",
        "train/tiny/fold0/model.pth",
        "train/tiny/fold1/config.py",
        "predict/tiny/fold0/oof.json",
        "predict/tiny/fold1/test.json",
        "predict/frcnn/fold2/blend.json",
        "eval/tiny/metrics.json",
        "eval/screen__lr-0.002/metrics.json",
        "compare/leaderboard.csv",
        "compare/leaderboard.json",
        "ensemble/test.json",
        "ensemble/metrics.json",
        "ensemble/search.csv",
        "ensemble/best.json",
        "ensemble/selection.json",
        "ensemble/blend_predictions.json",
        "ensemble/submission.csv",
        "summary.md",
        "report/folds/sizes.png",
        "report/audit/counts.png",
        "report/training/tiny.png",
        "report/training/frcnn.png",
        "report/cv/folds.html",
        "report/ensemble/comparison.png",
        "report/run_facts.html",
        "report/summary.html",
        "report/compare/leaderboard.png",
    ]
    assert [p for p in expected if not (r / p).is_file()] == []
    assert (r / "audit" / "gallery").is_dir()


def test_concurrent_jobs_never_share_a_gpu_slot(tiny_run):
    from helpers.gpu_slots import peak_jobs_per_gpu, shares_held_twice

    records = [json.loads(line) for line in (tiny_run / "logs" / "gpu_slots.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 3 + 2 * 3 * 3 + 2 * 2  # 2 models x 3 folds x (train, 3 splits); 2 screens x 2
    assert {gpu for r in records for gpu in r["gpus"]} <= {0, 1} and all(len(r["gpus"]) == 1 for r in records)
    assert shares_held_twice(records) == []
    assert set(peak_jobs_per_gpu(records).values()) <= {1}  # jobs_per_gpu 1


def test_folds_partition_and_oof_covers_val(tiny_run):
    r = tiny_run / "results"
    folds = pd.read_csv(r / "folds" / "folds.csv")
    clean = load_coco(r / "audit" / "annotations.json")
    blend = set(load_coco(r / "folds" / "blend_annotations.json").image_ids)
    assert len(blend) == 6  # a fifth of the 30 images: folds.blend_share 0.2
    assert sorted([*folds.image_id, *blend]) == sorted(clean.image_ids)
    for k in (0, 1, 2):
        val = load_coco(r / "folds" / f"fold{k}" / "val.json")
        train = load_coco(r / "folds" / f"fold{k}" / "train.json")
        assert set(val.image_ids) == set(folds.image_id[folds.fold == k])
        assert not set(val.image_ids) & set(train.image_ids)
        assert not blend & (set(train.image_ids) | set(val.image_ids))  # no fold model saw the blend split
        assert {p["image_id"] for p in read(r / "predict" / "tiny" / f"fold{k}" / "blend.json")} <= blend
        oof = read(r / "predict" / "tiny" / f"fold{k}" / "oof.json")
        # every prediction is of a val image (a one-epoch model may find nothing in some)
        assert {p["image_id"] for p in oof} <= set(val.image_ids)
        assert max(sum(p["image_id"] == i for p in oof) for i in val.image_ids) <= 100


@pytest.mark.parametrize("model", ["tiny", "frcnn"])
def test_resolved_config_is_saved_with_data_classes(tiny_run, model):
    text = (tiny_run / "results" / "train" / model / "fold0" / "config.py").read_text()
    assert "num_classes=3" in text and "'Platelets'" in text and "max_epochs=1" in text
    assert ("rcnn=dict(" in text) == (model == "frcnn")  # score_thr went to the two-stage key


def check_metrics_equal(ours: dict, gt, preds, stats_only: int | None = None):
    if not preds:  # a one-epoch fold model can predict nothing: detfold scores 0 (pycocotools raises)
        assert all(v in (0.0, None) for v in ours["stats"].values())
        return
    stats, per_class = pycocotools_eval(gt, preds)
    for value in ours["stats"].values():
        assert value is None or 0.0 <= value <= 1.0
    expected = [None if v < 0 else v for v in stats][:stats_only]
    assert list(ours["stats"].values()) == pytest.approx(expected, abs=1e-6)
    if stats_only:
        return
    for name, ap in per_class.items():
        assert ours["per_class"][name]["AP"] == pytest.approx(ap, abs=1e-6)


def test_metrics_equal_pycocotools(tiny_run):
    r = tiny_run / "results"
    metrics = read(r / "eval" / "tiny" / "metrics.json")
    pooled_preds, pooled_gt = [], None
    for k in (0, 1, 2):
        gt = load_coco(r / "folds" / f"fold{k}" / "val.json")
        preds = read(r / "predict" / "tiny" / f"fold{k}" / "oof.json")
        check_metrics_equal(metrics["folds"][k], gt, preds)
        pooled_preds += preds
    clean = load_coco(r / "audit" / "annotations.json")
    pooled_gt = clean.subset({p for k in (0, 1, 2) for p in load_coco(r / "folds" / f"fold{k}" / "val.json").image_ids})
    check_metrics_equal(metrics["pooled_oof"], pooled_gt, pooled_preds)
    lo, hi = metrics["pooled_oof"]["mAP50_ci95"]
    assert lo <= metrics["pooled_oof"]["mAP50"] <= hi
    test_gt = load_coco(r / "audit" / "test.json")
    ensemble = read(r / "ensemble" / "metrics.json")
    check_metrics_equal(ensemble["delivered"], test_gt, read(r / "ensemble" / "test.json"))
    assert sorted(ensemble["single"]) == [f"{m}/fold{k}" for m in ("frcnn", "tiny") for k in range(3)]
    selection = read(r / "ensemble" / "selection.json")
    assert selection["kinds"] == ["single", "fold_ensemble:frcnn", "fold_ensemble:tiny", "model_ensemble"]
    assert sorted(ensemble["candidates"]) == sorted(selection["kinds"])
    assert read(r / "ensemble" / "best.json")["plan"] == selection["delivered"]["plan"] == ensemble["delivered"]["plan"]
    blend = load_coco(r / "folds" / "blend_annotations.json")
    delivered = selection["candidates"][selection["delivered"]["kind"]]
    check_metrics_equal(
        {"stats": {"AP": delivered["in_sample"]["mAP"], "AP50": delivered["in_sample"]["mAP50"]}, "per_class": {}},
        blend,
        read(r / "ensemble" / "blend_predictions.json"),
        stats_only=2,
    )
    search = pd.read_csv(r / "ensemble" / "search.csv")
    assert set(search.step) == {"fold fusion", "model fusion"}
    summary = (r / "summary.md").read_text()
    assert "Delivered predictions" in summary and "tiny/fold1" in summary and "nested (honest)" in summary


def test_second_run_has_nothing_to_do(repo, tiny_run):
    result = snakemake(repo, tiny_run, "-n")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_editing_one_models_epochs_reruns_only_that_model_and_downstream(repo, tiny_run):
    config_path = tiny_run / "config.yaml"
    original = config_path.read_text()
    config = yaml.safe_load(original)
    config["models"]["frcnn"]["epochs"] = 2
    config_path.write_text(yaml.safe_dump(config))
    try:
        result = snakemake(repo, tiny_run, "-n")
    finally:
        config_path.write_text(original)
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    assert jobs == {
        "train": 3,
        "predict": 9,
        "evaluate": 1,
        "ensemble_select": 1,
        "ensemble_test": 1,
        "summary": 1,
        "report_training": 1,
        "report_cv": 1,
        "compare": 1,  # the leaderboard
        "report_compare": 1,
        "report_summary": 1,
        "report_ensemble": 1,
        "analyze": 1,  # frcnn's error analysis
        "analyze_ensemble": 1,  # the models fused
        "report_analysis": 1,
        "run_facts": 1,
        "all": 1,
    }, result.stdout
    assert "output: results/train/tiny" not in result.stdout
    assert "output: results/predict/tiny" not in result.stdout
    assert "Nothing to be done" in (snakemake(repo, tiny_run, "-n").stdout)  # config restored


def test_editing_overrides_reruns_audit_and_downstream_only(repo, tiny_run):
    overrides = tiny_run / "overrides.csv"
    original, stat = overrides.read_bytes(), overrides.stat()
    first_box = load_coco(tiny_run / "results" / "audit" / "annotations.json").annotations[0]["id"]
    overrides.write_text(f"ann_id,image_id,decision,note\n{first_box},,drop,looked wrong\n")
    try:
        result = snakemake(repo, tiny_run, "-n")
    finally:  # the run is shared by the session (tests/conftest.py): leave it as it was
        overrides.write_bytes(original)
        os.utime(overrides, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    assert jobs["audit"] == 1 and jobs["train"] == 6 + 2 and jobs["summary"] == 1  # 2 screens on fold 0
    assert "import_annotations" not in jobs
    assert "overrides.csv" in result.stdout


def test_voc_input_is_imported_and_audited(repo, bccd_dir, tmp_path):
    """data.format: voc runs import_annotations before the audit (no training needed)."""
    from helpers.coco_export import coco_to_voc

    train = load_coco(bccd_dir / "train.json")
    test = load_coco(bccd_dir / "test.json")
    coco_to_voc(train.subset(train.image_ids[:20]).data, tmp_path / "train_xml")
    coco_to_voc(test.subset(test.image_ids[:5]).data, tmp_path / "test_xml")
    (tmp_path / "names.txt").write_text("RBC\nWBC\nPlatelets\n")
    config = {
        "seed": 42,
        "data": {
            "format": "voc",
            "class_names": str(tmp_path / "names.txt"),
            "train_annotations": str(tmp_path / "train_xml"),
            "train_images": str(bccd_dir / "images"),
            "test_annotations": str(tmp_path / "test_xml"),
            "test_images": str(bccd_dir / "images"),
        },
        "folds": {"k": 2, "blend_share": 0.25},  # 5 of the 20 images: one per nested part
        "models": {"tiny": {"config": str(repo / "config" / "models" / "rtmdet_tiny_cpu.py")}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(repo, tmp_path, "results/folds/folds.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    clean = load_coco(tmp_path / "results" / "audit" / "annotations.json")
    assert len(clean.images) == 20 and clean.class_names == ["RBC", "WBC", "Platelets"]
    assert (tmp_path / "results" / "import" / "train.json").is_file()
    folds = pd.read_csv(tmp_path / "results" / "folds" / "folds.csv")
    blend = load_coco(tmp_path / "results" / "folds" / "blend_annotations.json")
    assert sorted([*folds.image_id, *blend.image_ids]) == sorted(clean.image_ids)


def small_config(repo: Path, bccd_dir: Path, workdir: Path, test: str | None) -> dict:
    """One model, 2 folds, 1 epoch on 20 images; ``test``: a test file name in ``workdir`` or None."""
    train = load_coco(bccd_dir / "train.json")
    write_coco(train.subset(train.image_ids[:20]), workdir / "train.json")
    data = {"train_annotations": str(workdir / "train.json"), "train_images": str(bccd_dir / "images")}
    if test:
        data |= {"test_annotations": str(workdir / test), "test_images": str(bccd_dir / "images")}
    return {
        "seed": 42,
        "data": data,
        "folds": {"k": 2, "blend_share": 0.25},
        "models": {
            "tiny": {
                "config": str(repo / "config" / "models" / "rtmdet_tiny_cpu.py"),
                "epochs": 1,
                "batch_size": 4,
                "num_workers": 0,
            }
        },
        "predict": {"score_thr": 0.0},
        "resources": {"train_threads": 1},
    }


def test_without_a_test_set_the_run_ends_with_cv_and_the_blend_choice(repo, bccd_dir, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(small_config(repo, bccd_dir, tmp_path, None)))
    result = snakemake(repo, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    r = tmp_path / "results"
    assert not (r / "ensemble" / "test.json").exists() and not list(r.glob("predict/*/*/test.json"))
    assert (r / "ensemble" / "selection.json").is_file() and (r / "report" / "ensemble" / "comparison.html").is_file()
    assert "No test set configured" in (r / "summary.md").read_text()
    assert "test" not in read(r / "eval" / "tiny" / "metrics.json")


def test_an_unlabelled_image_list_is_predicted_fused_and_written_not_scored(repo, bccd_dir, tmp_path):
    test = load_coco(bccd_dir / "test.json")
    names = [im["file_name"] for im in test.images[:4]]
    (tmp_path / "test_images.txt").write_text("# the test images\n" + "\n".join(names) + "\n")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(small_config(repo, bccd_dir, tmp_path, "test_images.txt")))
    result = snakemake(repo, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    r = tmp_path / "results"
    listed = load_coco(r / "audit" / "test.json", require_annotations=False)
    assert [im["file_name"] for im in listed.images] == names and listed.annotations == []
    assert all(im["width"] == 320 and im["height"] == 240 for im in listed.images)  # read from the files
    fused = read(r / "ensemble" / "test.json")
    assert fused and {p["image_id"] for p in fused} <= set(listed.image_ids)
    rows = pd.read_csv(r / "ensemble" / "submission.csv", keep_default_na=False)
    assert list(rows.image_id) == names
    metrics = read(r / "ensemble" / "metrics.json")
    assert metrics["labelled"] is False and "mAP" not in metrics["delivered"]
    assert "Test set unlabelled: " in (r / "summary.md").read_text()
