"""The confusion matrix of classes + background at IoU 0.5 and a score threshold per class.
Boxes are COCO ``xywh_abs``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from detfold.analyze.thresholds import kept_detections
from detfold.analyze.tide import POS_IOU, Arrays, prepare
from detfold.core.coco import Detections


def confusion_matrix(
    gt: Mapping[str, Any],
    predictions: Detections,
    score_thr: Mapping[str, float | None] | float,
    arrays: Arrays | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Rows: true class (+ ``background`` last: false positives); columns: predicted class (+
    ``background``: missed boxes). Detections at or above their class's ``score_thr`` (a float
    for all classes; None: the class is left out of the predictions); per image first matched
    within their class (score order, best IoU >= 0.5, one to one, as COCO), then the leftovers
    across classes by IoU descending, one to one (what supervision's and YOLO's matrices count
    as confusion). Crowd boxes are left out. Also returns, per image of the ground truth (file
    order), its false positives, missed boxes and class confusions. ``arrays``: those of ``gt``
    and ``predictions`` when the caller has them.

    faster-coco-eval's ``PreviewResults.compute_confusion_matrix`` matches class-agnostically in
    one greedy pass (score order, best IoU whatever the class), so where boxes of two classes
    overlap it can pair a detection with the wrong-class box although its own class's box is
    free; detfold counts the same-class match first, as the COCO metric does. Where no two
    boxes of different classes compete the two are equal (tests/analyze/test_analyze.py)."""
    from detfold.analyze._analysis_kernels import confusion_images

    a = arrays if arrays is not None else prepare(gt, predictions)
    index = {c: i for i, c in enumerate(sorted(a.names))}
    g_idx = np.array([index[c] for c in a.g_cls.tolist()], dtype=np.int64)
    d_idx = np.array([index[c] for c in a.d_cls.tolist()], dtype=np.int64)
    keep = kept_detections(a, score_thr)
    cm, per_image = confusion_images(*a.bounds(), a.g_box, g_idx, a.g_crowd, a.d_box, d_idx, keep, POS_IOU, len(index))
    return [*(a.names[c] for c in sorted(a.names)), "background"], cm, per_image
