"""TIDE's error breakdown (Bolya et al., ECCV 2020) with tidecv 1.0.1's exact rules: foreground
IoU 0.5, background IoU 0.1, at most 100 detections per image (all classes), AP from 101 recall
points with tidecv's own precision (no epsilon) and class set (a class with detections but no
ground truth counts, with AP 0). Each error type's dAP is the mAP gained by fixing only that
type, as tidecv's ``get_main_errors``; FalsePos / FalseNeg as its ``get_special_errors``. The
tests compare every number with tidecv itself.

Boxes are COCO ``xywh_abs``; scores and APs are fractions (tidecv prints percent). The matching
here (:func:`tide_match`) is also the one the label review and the galleries start from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from detfold.core.coco import Detections

POS_IOU = 0.5  #: TIDE's foreground threshold (and the review's "matched")
BG_IOU = 0.1  #: TIDE's background threshold
MAX_DETS = 100  #: per image, all classes (TIDE); COCO's 100 per image and class for the F1 curves
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")  #: tidecv's order and short names
SPECIAL_TYPES = ("FalsePos", "FalseNeg")
_RECALL_POINTS = np.array([x / 100 for x in range(101)])  # tidecv's, bit for bit


@dataclass
class Arrays:
    """Ground truth and detections in tidecv's order: images in the ground truth's file order;
    per image the boxes in file order and the detections by score (stable), at most
    :data:`MAX_DETS`."""

    image_ids: np.ndarray
    file_names: list[str]
    names: dict[int, str]  #: category id -> name
    g_img: np.ndarray
    g_cls: np.ndarray
    g_box: np.ndarray
    g_crowd: np.ndarray
    g_ann_id: np.ndarray
    d_img: np.ndarray
    d_cls: np.ndarray
    d_box: np.ndarray
    d_score: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per image: its boxes' (start, end) and its detections' (start, end) rows."""
        n = np.arange(len(self.image_ids) + 1)
        g = np.searchsorted(self.g_img, n, side="left")
        d = np.searchsorted(self.d_img, n, side="left")
        return g[:-1], g[1:], d[:-1], d[1:]


def prepare(gt: Mapping[str, Any], predictions: Detections) -> Arrays:
    """COCO ground truth + detections -> :class:`Arrays` (ids already checked by the caller)."""
    image_ids = np.array([im["id"] for im in gt["images"]], dtype=np.int64)
    pos = {int(i): p for p, i in enumerate(image_ids)}
    anns = sorted(gt.get("annotations", []), key=lambda a: pos[a["image_id"]])  # stable: file order per image
    d_img = np.array([pos[i] for i in predictions.image_id.tolist()], dtype=np.int64)
    d_score = np.asarray(predictions.score, dtype=np.float64)
    order = np.lexsort((-d_score, d_img))  # by image, then score descending, stable
    rank = np.arange(len(order)) - np.searchsorted(d_img[order], d_img[order], side="left")
    order = order[rank < MAX_DETS]
    return Arrays(
        image_ids=image_ids,
        file_names=[im.get("file_name", "") for im in gt["images"]],
        names={c["id"]: c["name"] for c in gt["categories"]},
        g_img=np.array([pos[a["image_id"]] for a in anns], dtype=np.int64),
        g_cls=np.array([a["category_id"] for a in anns], dtype=np.int64),
        g_box=np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
        g_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=np.bool_),
        g_ann_id=np.array([a.get("id", -1) for a in anns], dtype=np.int64),
        d_img=d_img[order],
        d_cls=np.asarray(predictions.category_id, dtype=np.int64)[order],
        d_box=np.asarray(predictions.bbox_xywh, dtype=np.float64).reshape(-1, 4)[order],
        d_score=d_score[order],
    )


@dataclass
class TideMatch:
    """tidecv's matching of :class:`Arrays`: per detection tp / ignored / error code (see
    :mod:`detfold.analyze._analysis_kernels`) / its ground truth / its best IoU with any box;
    per box used / missed (no fix would find it)."""

    arrays: Arrays
    tp: np.ndarray
    ignored: np.ndarray
    error: np.ndarray
    error_gt: np.ndarray
    iou_any: np.ndarray
    g_used: np.ndarray
    best_fix: np.ndarray  # detection is the best (highest score) Cls/Loc error of an unused box
    missed: np.ndarray


def error_codes() -> dict[str, int]:
    """The kernel's error code of each detection error type (Miss is a box's, not a detection's)."""
    from detfold.analyze import _analysis_kernels as k

    return {"Cls": k.CLS, "Loc": k.LOC, "Both": k.BOTH, "Dupe": k.DUPE, "Bkg": k.BKG}


def tide_match(arrays: Arrays) -> TideMatch:
    """Match per image as tidecv does (:func:`detfold.analyze._analysis_kernels.tide_images`),
    then mark each unused box's best fix and the boxes no fix would find (missed)."""
    from detfold.analyze import _analysis_kernels as k

    a = arrays
    tp, ign, err, err_gt, iou_any, g_used = k.tide_images(
        *a.bounds(), a.g_box, a.g_cls, a.g_crowd, a.d_box, a.d_cls, POS_IOU, BG_IOU
    )
    fixable = np.isin(err, (k.CLS, k.LOC)) & (err_gt >= 0)
    fixable[fixable] = ~g_used[err_gt[fixable]]
    cand = np.flatnonzero(fixable)
    order = cand[np.lexsort((cand, -a.d_score[cand]))]  # highest score, then first seen
    best_fix = np.zeros(len(tp), dtype=np.bool_)
    best_fix[order[np.unique(err_gt[order], return_index=True)[1]]] = True
    missed = ~a.g_crowd & ~g_used
    missed[err_gt[cand]] = False
    return TideMatch(a, tp, ign, err, err_gt, iou_any, g_used, best_fix, missed)


def _ap_sorted(hits: np.ndarray, npos: int) -> float:
    """tidecv's APDataObject.get_ap (fraction) of one class's detections, ``hits`` already in
    its order: score descending, ties in push order."""
    if npos == 0 or len(hits) == 0:
        return 0.0
    n_true = np.cumsum(hits)
    precision = np.maximum.accumulate((n_true / np.arange(1, len(hits) + 1))[::-1])[::-1]
    idx = np.searchsorted(n_true / npos, _RECALL_POINTS, side="left")
    y = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return sum(y.tolist()) / len(y)


def _class_aps(
    classes: list[int], points: np.ndarray, cls: np.ndarray, score: np.ndarray, hit: np.ndarray, npos: Mapping[int, int]
) -> dict[int, float]:
    """AP per non-empty class (tidecv: detections or ground truth) of the detections ``points``
    (indices into ``cls``, ``score``, ``hit``) pushed in that order; one sort for all classes."""
    order = points[np.lexsort((np.arange(len(points)), -score[points], cls[points]))]  # by class, then tidecv's order
    cls_sorted = cls[order]
    lo = np.searchsorted(cls_sorted, classes, side="left").tolist()
    hi = np.searchsorted(cls_sorted, classes, side="right").tolist()
    return {
        c: _ap_sorted(hit[order[start:end]], npos.get(c, 0))
        for c, start, end in zip(classes, lo, hi, strict=True)
        if end > start or npos.get(c, 0)
    }


def _mean(aps: Mapping[int, float]) -> float:
    return sum(aps.values()) / len(aps) if aps else 0.0


def _fixed_aps(m: TideMatch, kind: str, classes: list[int], npos: Counter[int]) -> dict[int, float]:
    """Per class the AP with the errors of type ``kind`` fixed: a Cls / Loc error that is the
    best fix of its box becomes a true positive (of the box's class for Cls), the others of the
    type go; Both / Dupe / Bkg errors go; Miss: the missed boxes go. tidecv pushes the errors'
    points (a fixed one in its original place) before the true positives."""
    a = m.arrays
    errors, cls, hit = ~m.tp & ~m.ignored, a.d_cls, m.tp
    if kind == "Miss":
        npos = npos - Counter(a.g_cls[m.missed].tolist())
    else:
        sel = m.error == error_codes()[kind]
        good = sel & m.best_fix if kind in ("Cls", "Loc") else np.zeros_like(sel)
        errors, hit = (errors & ~sel) | good, hit | good
        if kind == "Cls":
            cls = cls.copy()
            cls[good] = a.g_cls[m.error_gt[good]]
    points = np.concatenate([np.flatnonzero(errors), np.flatnonzero(m.tp)])
    return _class_aps(classes, points, cls, a.d_score, hit, npos)


def tide(gt: Mapping[str, Any], predictions: Detections, match: TideMatch | None = None) -> dict[str, Any]:
    """TIDE's breakdown: ``mAP`` (at IoU 0.5), ``main`` (dAP per error type), ``special``
    (FalsePos / FalseNeg), ``counts`` per type, and ``per_class`` (AP, dAP per type, counts).
    ``match``: the matching of ``gt`` and ``predictions`` when the caller has it."""
    m = match or tide_match(prepare(gt, predictions))
    a = m.arrays
    real = ~a.g_crowd
    classes = sorted(set(a.g_cls[real].tolist()) | set(a.d_cls[~m.ignored].tolist()))
    npos = Counter(a.g_cls[real].tolist())  # boxes per class
    base = _class_aps(classes, np.flatnonzero(~m.ignored), a.d_cls, a.d_score, m.tp, npos)
    base_map = _mean(base)
    per_class: dict[str, dict[str, Any]] = {
        a.names.get(c, str(c)): {"AP": base[c], "dAP": {}, "counts": {}} for c in base
    }
    main, counts = {}, {}
    for kind in ERROR_TYPES:
        aps = _fixed_aps(m, kind, classes, npos)
        main[kind] = max(_mean(aps) - base_map, 0.0)
        for c, ap in aps.items():
            if c in base:
                per_class[a.names.get(c, str(c))]["dAP"][kind] = max(ap - base[c], 0.0)
        per = a.g_cls[m.missed] if kind == "Miss" else a.d_cls[m.error == error_codes()[kind]]
        counts[kind] = len(per)
        for c in base:
            per_class[a.names.get(c, str(c))]["counts"][kind] = int((per == c).sum())
    # FalsePos: every false positive scored 0 and every true positive 1; FalseNeg: every unmatched box gone
    points = np.concatenate([np.flatnonzero(~m.tp & ~m.ignored), np.flatnonzero(m.tp)])
    false_pos = _class_aps(classes, points, a.d_cls, m.tp.astype(np.float64), m.tp, npos)
    false_neg = _class_aps(
        classes, points, a.d_cls, a.d_score, m.tp, npos - Counter(a.g_cls[real & ~m.g_used].tolist())
    )
    return {
        "mAP": base_map,
        "pos_iou": POS_IOU,
        "bg_iou": BG_IOU,
        "main": main,
        "special": {"FalsePos": _mean(false_pos) - base_map, "FalseNeg": _mean(false_neg) - base_map},
        "counts": counts,
        "per_class": per_class,
    }
