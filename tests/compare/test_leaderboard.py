"""The leaderboard's paired bootstrap (detfold.compare.leaderboard) against pycocotools on each
resample, on the bundled BCCD images with two noisy members of different quality."""

from __future__ import annotations

import numpy as np
import pytest
from detfold.compare.leaderboard import leaderboard_rows, paired_scores
from detfold.compare.stage import scopes
from detfold.core.coco import Coco, Detections
from helpers.predictions import clean, noisy_member, pycocotools_eval

N_IMAGES = 40


@pytest.fixture(scope="module")
def case(request):
    from detfold.core.coco import load_coco

    root = request.config.rootpath / "tests" / "data" / "bccd"
    full = load_coco(root / "train.json")
    gt = clean(full.subset(full.image_ids[:N_IMAGES]))
    members = {"good": noisy_member(gt, seed=1, drop=0.1, jitter=1.0), "poor": noisy_member(gt, seed=2, drop=0.5)}
    return gt, members


def resampled(gt: Coco, preds: list[dict], counts: np.ndarray) -> tuple[Coco, list[dict]]:
    """The images drawn ``counts[i]`` times each, every copy a new image with its boxes and
    predictions: the resample as a COCO dataset of its own, for pycocotools."""
    images, anns, out = [], [], []
    by_image = {}
    for p in preds:
        by_image.setdefault(p["image_id"], []).append(p)
    ann_by_image = {}
    for a in gt.annotations:
        ann_by_image.setdefault(a["image_id"], []).append(a)
    for position, image in enumerate(gt.images):
        for _ in range(int(counts[position])):
            new_id = len(images) + 1
            images.append({**image, "id": new_id})
            first = len(anns) + 1
            anns += [
                {**a, "id": first + i, "image_id": new_id} for i, a in enumerate(ann_by_image.get(image["id"], []))
            ]
            out += [{**p, "image_id": new_id} for p in by_image.get(image["id"], [])]
    return Coco({**gt.data, "images": images, "annotations": anns}, "resample"), out


def test_paired_differences_equal_pycocotools_on_each_resample(case):
    gt, members = case
    scores = paired_scores(gt.data, {n: Detections.from_results(p) for n, p in members.items()}, samples=20, seed=7)
    for sample in range(3):
        counts = scores["counts"][sample]
        reference = {}
        for name, preds in members.items():
            stats, _ = pycocotools_eval(*resampled(gt, preds, counts))
            reference[name] = stats[:2]  # mAP@[.5:.95], mAP50
            np.testing.assert_allclose(scores["boot"][name][sample], reference[name], atol=1e-12)
        diff = scores["boot"]["poor"][sample] - scores["boot"]["good"][sample]
        np.testing.assert_allclose(diff, reference["poor"] - reference["good"], atol=1e-12)
    for name, preds in members.items():  # and the point scores on all images, once each
        np.testing.assert_allclose(scores["point"][name], pycocotools_eval(gt, preds)[0][:2], atol=1e-12)


def test_rows_rank_by_the_metric_with_paired_intervals(case):
    gt, members = case
    scores = paired_scores(gt.data, {n: Detections.from_results(p) for n, p in members.items()}, samples=200, seed=7)
    rows = leaderboard_rows("fold 0", scores, "mAP50")
    assert [r["model"] for r in rows] == ["good", "poor"] and rows[0]["rank"] == 1
    good, poor = rows
    assert good["mAP50_diff"] == 0 and good["mAP50_diff_lo"] == 0 and good["mAP50_diff_hi"] == 0
    diffs = scores["boot"]["poor"][:, 1] - scores["boot"]["good"][:, 1]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    assert poor["mAP50_diff_lo"] == round(lo, 6) and poor["mAP50_diff_hi"] == round(hi, 6)
    assert poor["mAP50_diff_hi"] < 0 and poor["distinct_from_leader"]  # half the boxes dropped: a real gap
    assert poor["mAP50_lo"] <= poor["mAP50"] <= poor["mAP50_hi"]


def test_a_model_compared_with_itself_differs_by_exactly_zero(case):
    gt, members = case
    same = Detections.from_results(members["poor"])
    scores = paired_scores(gt.data, {"a": same, "b": same}, samples=100, seed=3)
    rows = leaderboard_rows("fold 0", scores, "mAP")
    for row in rows:
        for key in ("mAP", "mAP50"):
            assert (row[f"{key}_diff"], row[f"{key}_diff_lo"], row[f"{key}_diff_hi"]) == (0, 0, 0)
        assert not row["distinct_from_leader"]


def test_scopes_shared_folds_for_all_then_pooled_oof_for_the_full_models():
    assert scopes({"full": [0, 1, 2], "screen_a": [0], "screen_b": [0, 2]}, 3) == [
        ("fold 0", [0], ["full", "screen_a", "screen_b"]),
        ("pooled OOF (3 folds)", [0, 1, 2], ["full"]),
    ]
    assert scopes({"a": [0, 1, 2], "b": [0, 1, 2]}, 3) == [("pooled OOF (3 folds)", [0, 1, 2], ["a", "b"])]
