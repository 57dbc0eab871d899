import numpy as np
import pytest
from detfold.fusion import fuse_arrays, fuse_coco_predictions, nms, weighted_boxes_fusion


def test_wbf_hand_computed():
    a = np.array([[0.1, 0.1, 0.5, 0.5], [0.7, 0.7, 0.9, 0.9]])
    b = np.array([[0.12, 0.1, 0.5, 0.52]])
    boxes, scores, labels = weighted_boxes_fusion(
        [a, b], [np.array([0.9, 0.8]), np.array([0.6])], [np.array([0, 1]), np.array([0])], iou_thr=0.55
    )
    np.testing.assert_allclose(boxes[0], [0.108, 0.1, 0.5, 0.508], atol=1e-12)
    assert scores[0] == pytest.approx((0.9 + 0.6) / 2)  # mean score, both models present
    np.testing.assert_allclose(boxes[1], [0.7, 0.7, 0.9, 0.9])
    assert scores[1] == pytest.approx(0.8 / 2)  # one of two models: halved
    assert labels.tolist() == [0, 1]


def test_wbf_weights_and_max_conf():
    a, b = np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([[0.1, 0.1, 0.5, 0.5]])
    s = [np.array([0.9]), np.array([0.5])]
    lab = [np.array([3]), np.array([3])]
    _, scores, _ = weighted_boxes_fusion([a, b], s, lab, weights=[3, 1])
    assert scores[0] == pytest.approx((0.9 * 3 + 0.5 * 1) / 2 * 2 / 4)
    _, scores, _ = weighted_boxes_fusion([a, b], s, lab, weights=[3, 1], conf_type="max")
    assert scores[0] == pytest.approx(0.9 * 3 / 3)


def test_wbf_does_not_fuse_across_labels_or_below_threshold():
    a = np.array([[0.1, 0.1, 0.5, 0.5]])
    b = np.array([[0.1, 0.1, 0.5, 0.5]])
    boxes, _, labels = weighted_boxes_fusion([a, b], [np.array([0.9]), np.array([0.8])], [np.array([0]), np.array([1])])
    assert len(boxes) == 2 and sorted(labels.tolist()) == [0, 1]
    boxes, _, _ = weighted_boxes_fusion(
        [a, b], [np.array([0.9]), np.array([0.01])], [np.array([0]), np.array([0])], skip_box_thr=0.05
    )
    assert len(boxes) == 1


def test_nms_keeps_best_and_leaves_inputs_alone():
    a = np.array([[0.1, 0.1, 0.5, 0.5], [0.11, 0.1, 0.5, 0.5]])
    scores = np.array([0.5, 0.9])
    boxes, out_scores, _ = nms([a], [scores], [np.array([0, 0])], iou_thr=0.5)
    np.testing.assert_allclose(boxes, [[0.11, 0.1, 0.5, 0.5]])
    assert out_scores.tolist() == [0.9]
    assert scores.tolist() == [0.5, 0.9]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": [1]}, "1 weights given for 2 models"),
        ({"conf_type": "median"}, "conf_type must be one of"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    a = np.array([[0.1, 0.1, 0.5, 0.5]])
    with pytest.raises(ValueError, match=message):
        weighted_boxes_fusion([a, a], [np.array([0.5])] * 2, [np.array([0])] * 2, **kwargs)


def test_pixel_coordinates_are_rejected():
    a = np.array([[10.0, 10.0, 50.0, 50.0]])
    with pytest.raises(ValueError, match="normalised to \\[0, 1\\]"):
        weighted_boxes_fusion([a], [np.array([0.5])], [np.array([0])])


def test_fuse_coco_round_trip_and_determinism(bccd_test):
    preds = [{**a, "score": 0.9} for a in bccd_test.annotations if a["bbox"][2] > 0]
    shift = 0.02  # of the box width: IoU ~0.96, far from other boxes
    shifted = [{**p, "bbox": [p["bbox"][0] + shift * p["bbox"][2], *p["bbox"][1:]], "score": 0.7} for p in preds]
    fused = fuse_coco_predictions([preds, shifted], bccd_test.images, iou_thr=0.9, max_per_image=1000)
    assert len(fused) == len(preds)
    assert fused == fuse_coco_predictions([preds, shifted], bccd_test.images, iou_thr=0.9, max_per_image=1000)
    for f in fused[:50]:
        same = [p for p in preds if (p["image_id"], p["category_id"]) == (f["image_id"], f["category_id"])]
        src = min(same, key=lambda p: np.abs(np.subtract(p["bbox"], f["bbox"])).sum())
        assert f["bbox"][0] == pytest.approx(src["bbox"][0] + shift * src["bbox"][2] * 0.7 / 1.6, abs=0.01)
        assert f["score"] == pytest.approx(0.8)
    assert [f["image_id"] for f in fused] == sorted(f["image_id"] for f in fused)


def test_class_agnostic_fusion_merges_across_labels():
    a = np.array([[0.1, 0.1, 0.5, 0.5]])
    b = np.array([[0.1, 0.1, 0.5, 0.5]])
    boxes, scores, labels, _ = fuse_arrays(
        np.vstack([a, b]),
        np.array([0.9, 0.6]),
        np.array([3, 7]),
        np.array([0, 1]),
        np.array([0, 0]),
        2,
        method="wbf",
        class_agnostic=True,
    )
    assert len(boxes) == 1 and labels.tolist() == [3]  # the best member's label
    assert scores[0] == pytest.approx(0.75)
    boxes, _, _, _ = fuse_arrays(
        np.vstack([a, b]), np.array([0.9, 0.6]), np.array([3, 7]), np.array([0, 1]), np.array([0, 0]), 2
    )
    assert len(boxes) == 2
