"""detfold.ensemble.fusion against ensemble-boxes on random inputs: equal within 1e-6 where the
semantics are the same."""

import warnings

import numpy as np
import pytest
from detfold.ensemble import fusion
from helpers import per_image_fusion as per_image

eb = pytest.importorskip("ensemble_boxes")


def random_models(seed, n_models=4, n_objects=12, n_labels=3):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, (n_objects, 2))
    sizes = rng.uniform(0.03, 0.25, (n_objects, 2))
    labels = rng.integers(0, n_labels, n_objects)
    boxes_list, scores_list, labels_list = [], [], []
    for _ in range(n_models):
        boxes, scores, labs = [], [], []
        for c, s, lab in zip(centres, sizes, labels, strict=True):
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections of each object
                cx, cy = c + rng.normal(0, 0.15 * s)
                w, h = s * rng.uniform(0.8, 1.2, 2)
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                scores.append(rng.uniform(0.05, 1.0))
                labs.append(lab if rng.random() < 0.9 else rng.integers(0, n_labels))
        for _ in range(int(rng.integers(0, 6))):  # false positives
            x, y = rng.uniform(0, 0.8, 2)
            w, h = rng.uniform(0.02, 0.2, 2)
            boxes.append([x, y, x + w, y + h])
            scores.append(rng.uniform(0.0, 0.6))
            labs.append(rng.integers(0, n_labels))
        b = np.clip(np.array(boxes, dtype=float).reshape(-1, 4), 0, 1)
        boxes_list.append(b)
        scores_list.append(np.array(scores, dtype=float))
        labels_list.append(np.array(labs, dtype=float))
    return boxes_list, scores_list, labels_list


def canonical(boxes, scores, labels):
    rows = np.column_stack([np.asarray(labels, float), np.asarray(scores, float), np.asarray(boxes, float)])
    return rows[np.lexsort(rows.T[::-1])] if len(rows) else rows.reshape(0, 6)


def assert_close(ours, theirs):
    a, b = canonical(*ours), canonical(*theirs)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def reference(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copies = [[np.array(x, copy=True) for x in arg] if isinstance(arg, list) else arg for arg in args]
        return func(*copies, **kwargs)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("conf_type", fusion.CONF_TYPES)
def test_wbf(seed, conf_type):
    data = random_models(seed)
    weights = [1, 2, 1, 3] if seed % 2 else None
    kwargs = {"weights": weights, "iou_thr": 0.55, "skip_box_thr": 0.1 * (seed % 3), "conf_type": conf_type}
    assert_close(per_image.weighted_boxes_fusion(*data, **kwargs), reference(eb.weighted_boxes_fusion, *data, **kwargs))


@pytest.mark.parametrize("seed", range(10))
def test_wbf_allows_overflow(seed):
    data = random_models(seed)
    kwargs = {"iou_thr": 0.5, "allows_overflow": True}
    assert_close(per_image.weighted_boxes_fusion(*data, **kwargs), reference(eb.weighted_boxes_fusion, *data, **kwargs))


@pytest.mark.parametrize("seed", range(10))
def test_nms(seed):
    data = random_models(seed)
    weights = [1, 2, 1, 3] if seed % 2 else None
    assert_close(
        per_image.nms(*data, weights=weights, iou_thr=0.5), reference(eb.nms, *data, weights=weights, iou_thr=0.5)
    )


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(("method", "code"), [("linear", 1), ("gaussian", 2)])
def test_soft_nms_matches_ensemble_boxes_without_rescoring(seed, method, code):
    data = random_models(seed)
    kwargs = {"iou_thr": 0.5, "sigma": 0.5, "thresh": 0.01}
    ours = per_image.soft_nms(*data, method=method, rescore=False, **kwargs)
    assert_close(ours, reference(eb.soft_nms, *data, method=code, **kwargs))


def test_soft_nms_rescores_for_real():
    boxes = [np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]])]
    scores, labels = [np.array([0.9, 0.8, 0.7])], [np.array([0, 0, 0])]
    _out_boxes, out_scores, _ = per_image.soft_nms(boxes, scores, labels, method="linear", iou_thr=0.3)
    iou = (0.38 * 0.4) / (0.4 * 0.4)
    assert out_scores.tolist() == pytest.approx([0.9, 0.7, 0.8 * (1 - iou)])
    _, kept, _ = per_image.soft_nms(boxes, scores, labels, method="gaussian", sigma=0.5)
    assert kept[2] == pytest.approx(0.8 * np.exp(-(iou**2) / 0.5))


@pytest.mark.parametrize("seed", range(10))
def test_non_maximum_weighted(seed):
    data = random_models(seed)
    weights = [1, 2, 1, 3] if seed % 2 else None
    kwargs = {"weights": weights, "iou_thr": 0.55}
    assert_close(per_image.non_maximum_weighted(*data, **kwargs), reference(eb.non_maximum_weighted, *data, **kwargs))


def test_inputs_are_not_modified():
    data = random_models(1)
    before = [[x.copy() for x in part] for part in data]
    per_image.nms(*data, weights=[1, 2, 3, 4])
    per_image.weighted_boxes_fusion(*data, weights=[1, 2, 3, 4])
    for part, old in zip(data, before, strict=True):
        for x, y in zip(part, old, strict=True):
            np.testing.assert_array_equal(x, y)
