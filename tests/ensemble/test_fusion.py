import numpy as np
import pytest
from detfold.ensemble.fusion import fuse_arrays, fuse_members, nms, weighted_boxes_fusion


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
        ({"conf_type": "median"}, "conf_type 'median' is not one of"),
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
    params = {"method": "wbf", "iou_thr": 0.9}
    fused = fuse_members([preds, shifted], bccd_test.images, params, max_per_img=1000).to_results()
    assert len(fused) == len(preds)
    assert fused == fuse_members([preds, shifted], bccd_test.images, params, max_per_img=1000).to_results()
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


def random_groups(seed, n=3000, images=40, labels=4, ties=True):
    """Random xyxy_norm boxes of 5 models on ``images`` images, scores with many ties."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 0.8, (n, 2))
    boxes = np.hstack([xy, xy + rng.uniform(0.01, 0.2, (n, 2))])
    scores = np.round(rng.uniform(0.05, 1, n), 1 if ties else 9)
    return boxes, scores, rng.integers(0, labels, n), rng.integers(0, 5, n), np.sort(rng.integers(0, images, n))


@pytest.mark.parametrize("seed", range(4))
def test_greedy_nms_kernel_equals_the_soft_nms_kernel_in_hard_mode(seed):
    """The hard-NMS kernel (greedy, suppressed boxes skipped) keeps the boxes, in the order,
    that the general soft-NMS kernel keeps with its hard rule (every step selecting the best)."""
    from detfold.ensemble import _fusion_kernels as kernels

    boxes, scores, labels, _, images = random_groups(seed)
    order, starts = kernels.sort_groups(images * 4 + labels, -scores)
    for iou_thr in (0.0, 0.3, 0.55, 0.9):
        keep = kernels.nms_groups(order, starts, boxes, iou_thr)
        reference, _ = kernels.soft_nms_groups(order, starts, boxes, scores, iou_thr, 0.5, -np.inf, 3)
        assert keep.tolist() == reference.tolist()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cut", [-1, 1, 7, 100])
def test_order_within_images_is_a_stable_sort_cut_per_image(seed, cut):
    from detfold.ensemble import _fusion_kernels as kernels

    _, scores, _, _, images = random_groups(seed, n=2000, images=30)
    order = kernels.order_within_images(images, -scores, cut)
    expected = np.lexsort((np.arange(len(images)), -scores, images))
    if cut >= 0:
        rank = np.arange(len(images)) - np.searchsorted(images, images)
        expected = expected[rank < cut]
    assert order.tolist() == expected.tolist()


def test_searches_fuse_alike_combinations_alike():
    """Parameters a method ignores do not change its output (effective_params), and a search
    reusing the sorted boxes and WBF's clustering (the cache) fuses what a cold call fuses."""
    from detfold.ensemble.fusion import effective_params

    boxes, scores, labels, models, images = random_groups(0)
    args = (boxes, scores, labels, models, images, 5)
    cache: dict = {}
    combos = [
        {"method": m, "iou_thr": t, "skip_box_thr": s, **({"conf_type": c} if m == "wbf" else {})}
        for m in ("wbf", "soft_nms", "nms", "nmw")
        for s in (0.0, 0.3)
        for t in (0.4, 0.6)
        for c in ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
    ]
    outputs = {}
    for params in combos:
        cold = fuse_arrays(*args, **params)
        warm = fuse_arrays(*args, prepared=cache, **params)
        assert all(np.array_equal(a, b) for a, b in zip(cold, warm, strict=True)), params
        alike = repr(sorted(effective_params(params).items()))
        if alike in outputs:
            assert all(np.array_equal(a, b) for a, b in zip(outputs[alike], cold, strict=True)), params
        outputs[alike] = cold
    assert len(outputs) == 2 * 2 * 4 + 2 + 2 * 2 * 2  # wbf: skip x iou x conf; soft-NMS: skip; nms, nmw


@pytest.mark.parametrize("method", ["wbf", "nmw", "nms", "soft_nms"])
def test_boxes_with_score_zero_fuse_without_dividing_by_zero(method):
    """A score of 0 is a valid COCO result: such a box carries no weight in a weighted mean,
    and a cluster of zero scores only keeps its first box (ensemble-boxes returns NaN)."""
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.8], [0.61, 0.6, 0.8, 0.8]])
    scores = np.array([0.8, 0.0, 0.0, 0.0])
    out_box, out_score, _, _ = fuse_arrays(
        boxes, scores, np.zeros(4, dtype=np.int64), np.array([0, 1, 0, 1]), np.zeros(4, dtype=np.int64), 2, method
    )
    assert np.isfinite(out_box).all() and np.isfinite(out_score).all()
    if method in ("wbf", "nmw"):
        assert np.allclose(out_box, [[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.8]], rtol=0, atol=1e-12)


def test_fused_boxes_in_pixels_are_numpy_s_rounding_bit_for_bit():
    """to_xywh_abs (one pass) gives what numpy's expressions give: x1 * w, (x2 * w) - (x1 * w),
    np.round to 3 decimals; scores np.round to 6."""
    from detfold.ensemble import _fusion_kernels as kernels

    rng = np.random.default_rng(0)
    boxes = np.sort(rng.random((50000, 2, 2)), axis=1).transpose(0, 2, 1).reshape(-1, 4)  # x1 <= x2, y1 <= y2
    images = np.sort(rng.integers(0, 40, len(boxes)))
    wh = rng.integers(100, 5000, (40, 2)).astype(float)
    scores = rng.random(len(boxes)) * 2
    xywh, rounded = kernels.to_xywh_abs(boxes, images, wh, scores, 3, 6)
    size = wh[images]
    xy1, xy2 = boxes[:, :2] * size, boxes[:, 2:] * size
    assert np.array_equal(xywh, np.round(np.hstack([xy1, xy2 - xy1]), 3))
    assert np.array_equal(rounded, np.round(scores, 6))
