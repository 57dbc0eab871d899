"""Fusing the detections of several models: weighted boxes fusion (WBF) and NMS.

Contract of the array functions: boxes are ``xyxy_norm`` (x1, y1, x2, y2 divided by the
image width/height, so within [0, 1]), one array per model; scores in [0, 1]; integer
labels. :func:`fuse_coco_predictions` takes and returns COCO results (``xywh_abs``) and does
the per-image normalisation itself. Outputs are deterministic: stable sorts, no randomness.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CONF_TYPES = ("avg", "max")
METHODS = ("wbf", "nms")


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against (n, 4) xyxy boxes."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check_inputs(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | None,
) -> np.ndarray:
    if not (len(boxes_list) == len(scores_list) == len(labels_list)):
        raise ValueError(
            f"boxes/scores/labels lists differ in length: {len(boxes_list)}, {len(scores_list)}, {len(labels_list)}"
        )
    w = np.ones(len(boxes_list)) if weights is None else np.asarray(weights, dtype=float)
    if len(w) != len(boxes_list):
        raise ValueError(f"{len(w)} weights given for {len(boxes_list)} models")
    if (w <= 0).any():
        raise ValueError(f"model weights must be positive, got {w.tolist()}")
    for m, (b, s, lab) in enumerate(zip(boxes_list, scores_list, labels_list, strict=True)):
        b = np.asarray(b, dtype=float)
        if b.size and (b.ndim != 2 or b.shape[1] != 4):
            raise ValueError(f"model {m}: boxes must have shape (n, 4), got {b.shape}")
        if len(b) != len(s) or len(b) != len(lab):
            raise ValueError(f"model {m}: {len(b)} boxes, {len(s)} scores, {len(lab)} labels")
        if b.size and (b.min() < -1e-6 or b.max() > 1 + 1e-6):
            raise ValueError(
                f"model {m}: boxes must be xyxy normalised to [0, 1], got values in [{b.min():g}, {b.max():g}]"
            )
    return w


def _boxes_by_label(boxes_list, scores_list, labels_list, weights, skip_box_thr):  # type: ignore[no-untyped-def]
    """label -> [(weighted score, model, box)] over all models, by score descending (stable)."""
    by_label: dict[int, list] = defaultdict(list)
    for m, (b, s, lab) in enumerate(zip(boxes_list, scores_list, labels_list, strict=True)):
        b = np.asarray(b, dtype=float).reshape(-1, 4)
        s = np.asarray(s, dtype=float)
        keep = s >= skip_box_thr
        for box, score, label in zip(b[keep], s[keep], np.asarray(lab)[keep], strict=True):
            by_label[int(label)].append((float(score) * weights[m], m, box))
    for members in by_label.values():
        members.sort(key=lambda r: -r[0])  # ties keep input order
    return dict(sorted(by_label.items()))


def weighted_boxes_fusion(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted boxes fusion of T models' boxes of one image (Solovyev et al., 2019).

    Boxes of one label are visited by descending weighted score; each joins the fused box it
    overlaps with IoU > ``iou_thr`` (best match) or starts a new one. A fused box is the
    score-weighted mean of its members; its score is their mean (``avg``, then scaled by
    min(T, members) / sum(weights)) or their max (``max``, divided by max(weights)).
    Returns (boxes (n, 4) xyxy_norm, scores (n,), labels (n,)) sorted by score descending.
    """
    if conf_type not in CONF_TYPES:
        raise ValueError(f"conf_type must be one of {CONF_TYPES}, got {conf_type!r}")
    w = _check_inputs(boxes_list, scores_list, labels_list, weights)
    out_boxes, out_scores, out_labels = [], [], []
    for label, members in _boxes_by_label(boxes_list, scores_list, labels_list, w, skip_box_thr).items():
        clusters: list[list[tuple[float, np.ndarray]]] = []
        fused = np.empty((0, 4))
        for score, _, box in members:
            best = -1
            if len(fused):
                iou = _iou_one_to_many(box, fused)
                j = int(np.argmax(iou))
                if iou[j] > iou_thr:
                    best = j
            if best < 0:
                clusters.append([(score, box)])
                fused = np.vstack([fused, box])
            else:
                clusters[best].append((score, box))
                s = np.array([c[0] for c in clusters[best]])
                b = np.array([c[1] for c in clusters[best]])
                fused[best] = (s[:, None] * b).sum(axis=0) / s.sum()
        for cluster, box in zip(clusters, fused, strict=True):
            s = np.array([c[0] for c in cluster])
            if conf_type == "avg":
                score = s.mean() * min(len(w), len(cluster)) / w.sum()
            else:
                score = s.max() / w.max()
            out_boxes.append(box)
            out_scores.append(score)
            out_labels.append(label)
    return _sorted_output(out_boxes, out_scores, out_labels)


def nms(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.5,
    skip_box_thr: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-aware greedy NMS over all models' boxes; scores are multiplied by model weights
    and divided by the largest weight (the caller's arrays are never modified)."""
    w = _check_inputs(boxes_list, scores_list, labels_list, weights)
    out_boxes, out_scores, out_labels = [], [], []
    for label, members in _boxes_by_label(boxes_list, scores_list, labels_list, w, skip_box_thr).items():
        kept = np.empty((0, 4))
        for score, _, box in members:
            if len(kept) and (_iou_one_to_many(box, kept) > iou_thr).any():
                continue
            kept = np.vstack([kept, box])
            out_boxes.append(box)
            out_scores.append(score / w.max())
            out_labels.append(label)
    return _sorted_output(out_boxes, out_scores, out_labels)


def _sorted_output(boxes: list, scores: list, labels: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)
    b, s, lab = np.array(boxes, dtype=float), np.array(scores, dtype=float), np.array(labels, dtype=np.int64)
    order = np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], lab, -s))
    return b[order], s[order], lab[order]


def fuse_coco_predictions(
    prediction_sets: Sequence[list[dict[str, Any]]],
    images: Sequence[dict[str, Any]],
    method: str = "wbf",
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    max_per_image: int = 100,
) -> list[dict[str, Any]]:
    """Fuse several COCO result lists (one per model) image by image.

    ``images`` are COCO image records (id, width, height); each prediction's box is clipped
    to its image, normalised, fused and mapped back to ``xywh_abs``. The output is sorted by
    image id, then score descending, with at most ``max_per_image`` boxes per image; boxes are
    rounded to 0.01 px and scores to 1e-6 so files are byte-reproducible.
    """
    if method not in METHODS:
        raise ValueError(f"ensemble method must be one of {METHODS}, got {method!r}")
    sizes = {im["id"]: (float(im["width"]), float(im["height"])) for im in images}
    grouped: list[dict[int, list[dict[str, Any]]]] = []
    for m, preds in enumerate(prediction_sets):
        per_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for i, p in enumerate(preds):
            if p["image_id"] not in sizes:
                raise ValueError(f"prediction set {m}, item {i}: image_id {p['image_id']!r} is not a known image")
            per_image[p["image_id"]].append(p)
        grouped.append(per_image)
    fused: list[dict[str, Any]] = []
    for image_id in sorted(sizes):
        width, height = sizes[image_id]
        scale = np.array([width, height, width, height])
        boxes_list, scores_list, labels_list = [], [], []
        for per_image in grouped:
            preds = per_image.get(image_id, [])
            xywh = np.array([p["bbox"] for p in preds], dtype=float).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            boxes_list.append(np.clip(xyxy / scale, 0.0, 1.0))
            scores_list.append(np.array([p["score"] for p in preds], dtype=float))
            labels_list.append(np.array([p["category_id"] for p in preds], dtype=np.int64))
        if method == "wbf":
            boxes, scores, labels = weighted_boxes_fusion(
                boxes_list, scores_list, labels_list, weights, iou_thr, skip_box_thr, conf_type
            )
        else:
            boxes, scores, labels = nms(boxes_list, scores_list, labels_list, weights, iou_thr, skip_box_thr)
        for box, score, label in list(zip(boxes * scale, scores, labels, strict=True))[:max_per_image]:
            x1, y1, x2, y2 = (round(float(v), 2) for v in box)
            fused.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label),
                    "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 6),
                }
            )
    return fused
