"""COCO bbox metrics (the 12 standard stats at maxDets 1/10/100, mAP50, per-class AP/AR).

Computed by :func:`detfold.evaluate.cocoeval.evaluate_bbox` (hotcoco), whose numbers equal
pycocotools' bit for bit (the tests check this against pycocotools itself). Predictions are
:class:`detfold.core.coco.Detections` or COCO results: ``image_id, category_id, bbox
(xywh_abs), score``. A stat that is undefined (no ground truth in that area range) is
``None``; an empty prediction list scores 0 instead of crashing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from detfold.core.coco import Coco, Detections, check_detection_ids, check_results
from detfold.evaluate.cocoeval import REC_THRS, evaluate_bbox

log = logging.getLogger(__name__)

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR_1",
    "AR_10",
    "AR_100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def _defined(value: float) -> float | None:
    return None if value < 0 else round(float(value), 6)


def evaluate_coco(
    gt: Coco, predictions: list[dict[str, Any]] | Detections, source: str = "predictions", pr_curves: bool = False
) -> dict[str, Any]:
    """Score ``predictions`` against ``gt``: 12 COCO stats, mAP50 and per-class AP/AP50/AR100.

    With ``pr_curves`` each class also gets its precision at the 101 recall points (area all,
    100 detections), at IoU 0.5 and averaged over IoU 0.5:0.95 (-1 where undefined)."""
    if not isinstance(predictions, Detections):  # Detections were checked for values where made
        predictions = Detections.from_results(check_results(predictions, source))
    check_detection_ids(gt, predictions, source)
    result = evaluate_bbox(gt.data, predictions)
    stats = {name: _defined(v) for name, v in zip(STAT_NAMES, result.stats, strict=True)}
    names = {cat["id"]: cat["name"] for cat in gt.categories}
    n_gt: dict[int, int] = {}
    for ann in gt.annotations:
        n_gt[ann["category_id"]] = n_gt.get(ann["category_id"], 0) + 1
    per_class: dict[str, dict[str, Any]] = {}
    for k, cat_id in enumerate(result.cat_ids):  # classes in sorted id order, as pycocotools
        p_all = result.precision[:, :, k, 0, -1]
        p_50 = result.precision[0, :, k, 0, -1]
        r_all = result.recall[:, k, 0, -1]
        per_class[names[cat_id]] = {
            "category_id": cat_id,
            "AP": _defined(np.mean(p_all[p_all > -1])) if (p_all > -1).any() else None,
            "AP50": _defined(np.mean(p_50[p_50 > -1])) if (p_50 > -1).any() else None,
            "AR_100": _defined(np.mean(r_all[r_all > -1])) if (r_all > -1).any() else None,
            "n_gt": n_gt.get(cat_id, 0),
        }
        if pr_curves:
            p_mean = np.where((p_all > -1).all(axis=0), p_all.mean(axis=0), -1.0)
            per_class[names[cat_id]]["pr_curve"] = {
                "recall": [round(float(r), 2) for r in REC_THRS],
                "precision_iou50": [round(float(v), 6) for v in p_50],
                "precision_iou50_95": [round(float(v), 6) for v in p_mean],
            }
    return {
        "mAP": stats["AP"],
        "mAP50": stats["AP50"],
        "stats": stats,
        "per_class": per_class,
        "n_images": len(gt.images),
        "n_gt": len(gt.annotations),
        "n_predictions": len(predictions),
    }


def mean_std(values: list[float | None]) -> dict[str, float | None]:
    """Mean and sample std (ddof 1: the folds are a sample of possible splits) over folds,
    ignoring undefined values; std is None for fewer than two values."""
    defined = [v for v in values if v is not None]
    if not defined:
        return {"mean": None, "std": None}
    std = round(float(np.std(defined, ddof=1)), 6) if len(defined) > 1 else None
    return {"mean": round(float(np.mean(defined)), 6), "std": std}


def headline(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("mAP", "mAP50")}
