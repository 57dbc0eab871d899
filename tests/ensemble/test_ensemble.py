"""Fusion search tables, foreign prediction files, the submission CSV."""

import csv
import json

import numpy as np
import pytest
from detfold.core.config import with_defaults
from detfold.ensemble import external, plan, selection
from detfold.evaluate.metrics import evaluate_coco
from helpers.predictions import clean, noisy_member


def test_grid_shapes_and_errors():
    combos = plan.grid({"method": ["wbf", "nms"], "iou_thr": [0.5, 0.6], "conf_type": ["avg", "max"]}, 2)
    assert len(combos) == 2 * 2 + 2
    assert {c["method"] for c in combos} == {"wbf", "nms"}
    assert all("conf_type" not in c for c in combos if c["method"] == "nms")
    with pytest.raises(ValueError, match="method 'vote' is not one of"):
        plan.grid({"method": ["vote"]}, 2)
    with pytest.raises(ValueError, match="3 weights for 2 members"):
        plan.grid({"weights": [[1, 2, 3]]}, 2)


def test_search_table_scores_what_the_plan_writes_and_beats_each_member(bccd_test):
    """Three models (one fold each, so no fold fusion to speak of): the model fusion's search
    table is best first, its best row scores exactly what the fused file scores, and three
    independent noisy members fused beat each one."""
    gt = clean(bccd_test)
    members = {f"m{s}": [noisy_member(gt, s)] for s in range(3)}
    search = {"method": ["wbf", "nms"], "iou_thr": [0.4, 0.55], "conf_type": ["avg", "max"]}
    settings = with_defaults({"ensemble": {"search": search}})["ensemble"]
    selector = selection.BlendSelector(gt, members, {}, settings)
    table = selector.search_table()
    fusion = table[table.step == "model fusion"]
    assert len(fusion) == len(selector.search.model_grid) and fusion.mAP50.is_monotonic_decreasing
    chosen, _ = selector.fit("model_ensemble", np.ones(len(gt.images), dtype=np.int64))
    fused = plan.apply_plan(chosen, members, {}, gt.images, settings["max_per_img"])
    assert evaluate_coco(gt, fused)["mAP50"] == pytest.approx(fusion.mAP50.iloc[0], abs=1e-6)
    assert fusion.mAP50.iloc[0] > max(evaluate_coco(gt, m[0])["mAP50"] for m in members.values())


def test_external_coco_with_id_source_and_csv(bccd_test, tmp_path):
    gt = clean(bccd_test)
    # another tool's ids: images numbered from 0, classes in another order
    other_images = [{"id": n, "file_name": im["file_name"]} for n, im in enumerate(gt.images)]
    other_cats = [{"id": 10 + n, "name": c["name"]} for n, c in enumerate(reversed(gt.categories))]
    to_other_img = {im["id"]: n for n, im in enumerate(gt.images)}
    to_other_cat = {c["id"]: 10 + n for n, c in enumerate(reversed(gt.categories))}
    preds = [
        {**p, "image_id": to_other_img[p["image_id"]], "category_id": to_other_cat[p["category_id"]]}
        for p in noisy_member(gt, 1)
    ]
    (tmp_path / "other.json").write_text(json.dumps(preds))
    (tmp_path / "other_gt.json").write_text(json.dumps({"images": other_images, "categories": other_cats}))
    spec = {
        "name": "d2",
        "test": str(tmp_path / "other.json"),
        "format": "coco",
        "id_source": str(tmp_path / "other_gt.json"),
    }
    mapped = external.load_external(spec, "test", gt)
    assert mapped.to_results() == noisy_member(gt, 1)
    # the same predictions as a competition CSV, labels by class index
    external.write_submission(mapped, gt, tmp_path / "sub.csv", "index")
    spec_csv = {"name": "yolo", "test": str(tmp_path / "sub.csv"), "format": "csv"}
    again = external.load_external(spec_csv, "test", gt)
    assert evaluate_coco(gt, again)["mAP"] == pytest.approx(evaluate_coco(gt, mapped)["mAP"], abs=1e-3)
    rows = list(csv.DictReader((tmp_path / "sub.csv").read_text().splitlines()))
    assert len(rows) == len(gt.images) and rows[0].keys() == {"PredictionString", "image_id"}


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ('[{"image_id": 99999, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}]', "coco", "image_id 99999"),
        ('[{"image_id": 4, "category_id": 9, "bbox": [1, 1, 2, 2], "score": 0.5}]', "coco", "category_id 9"),
        ("image_id,PredictionString\nnope.jpg,0 0.5 1 1 2 2\n", "csv", "'nope.jpg' matches no file name"),
        ("image_id,PredictionString\nBloodImage_00003.jpg,0 0.5 1 1\n", "csv", "not a multiple of 6"),
        ("image_id,PredictionString\nBloodImage_00003.jpg,Cat 0.5 1 1 2 2\n", "csv", "label 'Cat'"),
        # garbage from another tool never reaches the fusion or the search
        ('[{"image_id": 4, "category_id": 1, "bbox": [1, 1, 2, 2], "score": NaN}]', "coco", r"\[0\]\.score must be"),
        ('[{"image_id": 4, "category_id": 1, "bbox": [1, 1, NaN, 2], "score": 0.5}]', "coco", r"\[0\]\.bbox must be"),
        (
            '[{"image_id": "4", "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}]',
            "coco",
            "image_id must be an int",
        ),
        ("image_id,PredictionString\nBloodImage_00003.jpg,0 nan 1 1 2 2\n", "csv", "is not finite"),
        ("image_id,PredictionString\nBloodImage_00003.jpg,0 0.5 5 1 2 2\n", "csv", "x2 < x1"),
        ("image_id,PredictionString\nBloodImage_00003.jpg,0 high 1 1 2 2\n", "csv", "a box value is not a number"),
    ],
)
def test_external_mismatches_are_clear_errors(bccd_test, tmp_path, content, fmt, message):
    (tmp_path / "p").write_text(content)
    with pytest.raises(ValueError, match=message):
        external.load_external({"name": "x", "test": str(tmp_path / "p"), "format": fmt}, "test", bccd_test)


def test_external_members_split_chosen_and_untuned(bccd_test, tmp_path):
    """For the blend split only the external models with OOF predictions are read, against the
    training images, and kept on the blend images; for the test split the others come apart
    (untuned: they join the model ensemble only)."""
    gt = clean(bccd_test)
    preds = noisy_member(gt, 3)
    (tmp_path / "all.json").write_text(json.dumps(preds))
    (tmp_path / "gt.json").write_text(json.dumps(gt.data))
    specs = [
        {"name": "tuned", "oof": str(tmp_path / "all.json"), "test": str(tmp_path / "all.json"), "format": "coco"},
        {"name": "untuned", "oof": "", "test": str(tmp_path / "all.json"), "format": "coco"},
    ]
    blend = gt.subset(sorted(gt.image_ids)[::4])
    chosen, untuned = external.external_members(specs, "oof", blend, str(tmp_path / "gt.json"))
    assert list(chosen) == ["tuned"] and untuned == {}
    assert chosen["tuned"].to_results() == [p for p in preds if p["image_id"] in set(blend.image_ids)]
    chosen, untuned = external.external_members(specs, "test", gt)
    assert list(chosen) == ["tuned"] and list(untuned) == ["untuned"]
    assert untuned["untuned"].to_results() == preds
