"""ensemble-boxes' per-image interface over :func:`detfold.ensemble.fusion.fuse_arrays`, for the
tests that compare with ensemble-boxes and the hand-computed cases.

One array-like per model: boxes (n, 4) xyxy_norm, scores (n,), labels (n,); returns boxes (k, 4)
xyxy_norm, scores (k,), labels (k,) by score descending. Boxes outside [0, 1] or with x2 < x1 raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from detfold.ensemble.fusion import fuse_arrays

PerModel = Sequence[Any]
ImageFusion = tuple[np.ndarray, np.ndarray, np.ndarray]


def _check(boxes_list: PerModel, scores_list: PerModel, labels_list: PerModel, weights: Sequence[float] | None):
    """Validate per-model arrays; return concatenated boxes, scores, labels and model index."""
    if not (len(boxes_list) == len(scores_list) == len(labels_list)):
        raise ValueError(
            f"boxes/scores/labels lists differ in length: {len(boxes_list)}, {len(scores_list)}, {len(labels_list)}"
        )
    if len(boxes_list) == 0:
        raise ValueError("no models given")
    w = np.ones(len(boxes_list)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(boxes_list),):
        raise ValueError(f"{w.size} weights given for {len(boxes_list)} models")
    if (w <= 0).any() or not np.isfinite(w).all():
        raise ValueError(f"model weights must be positive, got {w.tolist()}")
    all_boxes, all_scores, all_labels, all_models = [], [], [], []
    for m, (b, s, lab) in enumerate(zip(boxes_list, scores_list, labels_list, strict=True)):
        b = np.asarray(b, dtype=float).reshape(-1, 4) if len(b) else np.zeros((0, 4))
        s, lab = np.asarray(s, dtype=float).reshape(-1), np.asarray(lab).reshape(-1)
        if len(b) != len(s) or len(b) != len(lab):
            raise ValueError(f"model {m}: {len(b)} boxes, {len(s)} scores, {len(lab)} labels")
        if len(b):
            if not np.isfinite(b).all() or b.min() < -1e-6 or b.max() > 1 + 1e-6:
                raise ValueError(
                    f"model {m}: boxes must be xyxy normalised to [0, 1], got values in [{b.min():g}, {b.max():g}]"
                )
            bad = np.flatnonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))
            if len(bad):
                raise ValueError(f"model {m}: box {bad[0]} has x2 < x1 or y2 < y1: {b[bad[0]].tolist()}")
        all_boxes.append(np.clip(b, 0.0, 1.0))
        all_scores.append(s)
        all_labels.append(lab.astype(np.int64))
        all_models.append(np.full(len(b), m, dtype=np.int64))
    return tuple(np.concatenate(x) for x in (all_boxes, all_scores, all_labels, all_models))


def _single(method: str, boxes_list, scores_list, labels_list, weights, **kwargs: Any) -> ImageFusion:
    b, s, lab, m = _check(boxes_list, scores_list, labels_list, weights)
    out_box, out_score, out_label, _ = fuse_arrays(
        b, s, lab, m, np.zeros(len(b), np.int64), len(boxes_list), method, weights, **kwargs
    )
    return out_box, out_score, out_label


def weighted_boxes_fusion(
    boxes_list,
    scores_list,
    labels_list,
    weights=None,
    iou_thr=0.55,
    skip_box_thr=0.0,
    conf_type="avg",
    allows_overflow=False,
) -> ImageFusion:
    return _single(
        "wbf",
        boxes_list,
        scores_list,
        labels_list,
        weights,
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
        conf_type=conf_type,
        allows_overflow=allows_overflow,
    )


def nms(boxes_list, scores_list, labels_list, weights=None, iou_thr=0.5) -> ImageFusion:
    return _single("nms", boxes_list, scores_list, labels_list, weights, iou_thr=iou_thr)


def soft_nms(
    boxes_list,
    scores_list,
    labels_list,
    weights=None,
    method="gaussian",
    iou_thr=0.5,
    sigma=0.5,
    thresh=0.001,
    rescore=True,
) -> ImageFusion:
    """``rescore=False`` returns the original scores, as ensemble-boxes does."""
    return _single(
        "soft_nms",
        boxes_list,
        scores_list,
        labels_list,
        weights,
        iou_thr=iou_thr,
        sigma=sigma,
        thresh=thresh,
        soft_method=method,
        rescore=rescore,
    )


def non_maximum_weighted(boxes_list, scores_list, labels_list, weights=None, iou_thr=0.55, skip_box_thr=0.0):
    return _single("nmw", boxes_list, scores_list, labels_list, weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr)
