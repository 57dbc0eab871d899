"""detfold.evaluate.metrics against pycocotools itself (the oracle) on real ground truth."""

import numpy as np
import pytest
from detfold.evaluate.metrics import STAT_NAMES, evaluate_coco
from helpers.predictions import pycocotools_eval


def noisy_predictions(coco, seed, drop=0.2, false_pos=0.3, jitter=3.0):
    rng = np.random.default_rng(seed)
    preds = []
    for ann in coco.annotations:
        if rng.random() < drop:
            continue
        x, y, w, h = ann["bbox"]
        dx, dy, dw, dh = rng.normal(0, jitter, 4)
        preds.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0)],
                "score": float(rng.random()),
            }
        )
    ids, cats = coco.image_ids, coco.category_ids
    for _ in range(int(false_pos * len(coco.annotations))):
        preds.append(
            {
                "image_id": int(rng.choice(ids)),
                "category_id": int(rng.choice(cats)),
                "bbox": [float(v) for v in rng.uniform([0, 0, 5, 5], [250, 180, 80, 80])],
                "score": float(rng.random()) * 0.5,
            }
        )
    return preds


def clean(coco):
    coco.data["annotations"] = [a for a in coco.annotations if a["bbox"][2] > 0 and a["bbox"][3] > 0]
    for a in coco.annotations:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    return coco


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_on_noisy_predictions(bccd_test, seed):
    gt = clean(bccd_test)
    preds = noisy_predictions(gt, seed)
    ours = evaluate_coco(gt, preds)
    stats, per_class = pycocotools_eval(gt, preds)
    for name, value in zip(STAT_NAMES, stats, strict=True):
        expected = None if value < 0 else value
        assert ours["stats"][name] == pytest.approx(expected, abs=1e-6), name
    for name, ap in per_class.items():
        assert ours["per_class"][name]["AP"] == pytest.approx(ap, abs=1e-6), name
    assert ours["mAP50"] == ours["stats"]["AP50"]
    assert 0 < ours["mAP"] < ours["mAP50"] < 1


def test_ground_truth_as_predictions_scores_one(bccd_test):
    gt = clean(bccd_test)
    preds = [{**a, "score": 1.0} for a in gt.annotations]
    result = evaluate_coco(gt, preds)
    assert result["mAP"] == pytest.approx(1.0) and result["mAP50"] == pytest.approx(1.0)


def test_empty_predictions_score_zero(bccd_test):
    result = evaluate_coco(clean(bccd_test), [])
    assert result["mAP"] == 0 and result["mAP50"] == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"image_id": 99999}, "image_id 99999 is not in the ground truth"),
        ({"category_id": 42}, "category_id 42 is not a category"),
    ],
)
def test_unknown_ids_are_errors(bccd_test, bad, message):
    gt = clean(bccd_test)
    preds = [{**gt.annotations[0], "score": 0.5, **bad}]
    with pytest.raises(ValueError, match=message):
        evaluate_coco(gt, preds, "p.json")


def test_results_must_be_a_list_of_records(bccd_test):
    with pytest.raises(ValueError, match="must be a JSON list"):
        evaluate_coco(clean(bccd_test), {"image_id": 1})
    with pytest.raises(ValueError, match="missing \\['score'\\]"):
        evaluate_coco(clean(bccd_test), [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}])
