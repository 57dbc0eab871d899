"""detfold.evaluate.cocoeval against pycocotools itself, bit for bit, on random and edge-case inputs."""

import copy

import numpy as np
import pytest
from detfold.core.coco import Coco
from detfold.evaluate.cocoeval import evaluate_bbox
from helpers.predictions import pycocotools_eval


def random_case(seed, n_images=25, dets_per_image=(0, 300), crowd=0.1, ties=True, zero_area=False):
    rng = np.random.default_rng(seed)
    cat_ids = [7, 3, 5]  # deliberately unsorted and not 1..K
    ids = rng.permutation(n_images) + 1
    images = [{"id": int(i), "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in ids]
    anns, preds = [], []
    for im in images:
        n_gt = int(rng.integers(0, 12)) if im["id"] % 5 else 0  # every fifth image has no ground truth
        for _ in range(n_gt):
            side = float(np.exp(rng.uniform(np.log(8), np.log(200))))
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            box = [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), w, h]
            area = w * h * (float(rng.uniform(0.5, 1.0)) if rng.random() < 0.3 else 1.0)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": box,
                    "area": area,
                    "iscrowd": int(rng.random() < crowd),
                }
            )
        n_dt = int(rng.integers(*dets_per_image)) if rng.random() < 0.3 else int(rng.integers(0, 20))
        mine = [a for a in anns if a["image_id"] == im["id"]]
        for _ in range(n_dt):
            if mine and rng.random() < 0.6:
                src = mine[int(rng.integers(len(mine)))]
                box = [v + float(rng.normal(0, 0.08 * max(src["bbox"][2:]))) for v in src["bbox"]]
                box[2], box[3] = max(box[2], 0.5), max(box[3], 0.5)
                cat = src["category_id"] if rng.random() < 0.9 else int(rng.choice(cat_ids))
            else:
                w, h = float(rng.uniform(2, 250)), float(rng.uniform(2, 250))
                box = [float(rng.uniform(0, 600)), float(rng.uniform(0, 440)), w, h]
                cat = int(rng.choice(cat_ids))
            if zero_area and rng.random() < 0.05:
                box[2] = 0.0
            score = round(float(rng.random()), 1) if ties else float(rng.random())
            preds.append({"image_id": im["id"], "category_id": cat, "bbox": box, "score": score})
    categories = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    return Coco({"images": images, "annotations": anns, "categories": categories}), preds


def assert_same_as_pycocotools(gt, preds):
    ours = evaluate_bbox(copy.deepcopy(gt.data), preds)
    stats, per_class = pycocotools_eval(gt, preds)
    assert np.array_equal(ours.stats, stats), (ours.stats, stats)
    for k, cat_id in enumerate(ours.cat_ids):
        p = ours.precision[:, :, k, 0, -1]
        ap = float(np.mean(p[p > -1])) if (p > -1).any() else None
        assert ap == per_class[f"class{cat_id}"]


@pytest.mark.parametrize("seed", range(8))
def test_random_inputs_with_ties_crowd_empty_images_and_300_detections(seed):
    gt, preds = random_case(seed)
    assert max(sum(p["image_id"] == i["id"] for p in preds) for i in gt.images) > 100
    assert any(a["iscrowd"] for a in gt.annotations)
    assert_same_as_pycocotools(gt, preds)


@pytest.mark.parametrize("seed", range(3))
def test_no_ties_no_crowd_zero_area_detections(seed):
    gt, preds = random_case(100 + seed, crowd=0.0, ties=False, zero_area=True)
    assert_same_as_pycocotools(gt, preds)


def test_detections_only_on_images_without_ground_truth():
    gt, preds = random_case(7)
    empty = {im["id"] for im in gt.images} - {a["image_id"] for a in gt.annotations}
    only_there = [p for p in preds if p["image_id"] in empty] or [
        {"image_id": next(iter(empty)), "category_id": 7, "bbox": [1, 1, 10, 10], "score": 0.5}
    ]
    assert_same_as_pycocotools(gt, only_there)


def test_deliberate_differences():
    gt, _ = random_case(3)
    assert evaluate_bbox(gt.data, []).stats.max() <= 0  # pycocotools raises on []
    # ground-truth id 0 still matches (pycocotools would lose that match)
    one = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "annotations": [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}],
        "categories": [{"id": 1, "name": "a"}],
    }
    result = evaluate_bbox(one, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}])
    assert result.stats[0] == pytest.approx(1.0)  # area missing: w * h is used
    # nothing found: 0 where there is ground truth (all, small), undefined (-1) where there is none
    nothing = evaluate_bbox(one, []).stats
    assert nothing.tolist() == [0, 0, 0, 0, -1, -1, 0, 0, 0, 0, -1, -1]


@pytest.mark.parametrize("decimals", [6, 2, None])
def test_the_packed_sort_of_rounded_scores_is_the_stable_sort(decimals):
    """Detections by (key, score descending, row index): scores rounded to 1e-6 (as fused and
    written) are sorted as one packed integer; others by the stable float sort. Both orders
    equal numpy's stable lexsort, ties (many, at 2 decimals) in row order."""
    from detfold.evaluate.cocoeval import _order, _order_of_rounded

    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 5000):
        scores = rng.random(n) * 3
        if decimals is not None:
            scores = np.round(scores, decimals)
        keys = rng.integers(0, 40, n)
        assert (_order_of_rounded(keys, scores) is None) == (decimals is None and n > 1)
        assert np.array_equal(_order(keys, scores), np.lexsort((np.arange(n), -scores, keys)))
