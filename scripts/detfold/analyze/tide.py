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
    ``max_dets``. ``det_index``: each detection's row in the input :class:`Detections`."""

    image_ids: np.ndarray
    file_names: list[str]
    cat_ids: list[int]
    g_img: np.ndarray
    g_cls: np.ndarray
    g_box: np.ndarray
    g_crowd: np.ndarray
    g_ann_id: np.ndarray
    d_img: np.ndarray
    d_cls: np.ndarray
    d_box: np.ndarray
    d_score: np.ndarray
    det_index: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per image: its boxes' (start, end) and its detections' (start, end) rows."""
        n = np.arange(len(self.image_ids) + 1)
        g = np.searchsorted(self.g_img, n, side="left")
        d = np.searchsorted(self.d_img, n, side="left")
        return g[:-1], g[1:], d[:-1], d[1:]


def prepare(gt: Mapping[str, Any], predictions: Detections, max_dets: int = MAX_DETS) -> Arrays:
    """COCO ground truth + detections -> :class:`Arrays` (ids already checked by the caller)."""
    image_ids = np.array([im["id"] for im in gt["images"]], dtype=np.int64)
    pos = {int(i): p for p, i in enumerate(image_ids)}
    anns = gt.get("annotations", [])
    g_img = np.array([pos[a["image_id"]] for a in anns], dtype=np.int64)
    order = np.argsort(g_img, kind="stable")
    d_img = np.array([pos[i] for i in predictions.image_id.tolist()], dtype=np.int64)
    d_score = np.asarray(predictions.score, dtype=np.float64)
    d_order = np.lexsort((-d_score, d_img))  # by image, then score descending, stable
    d_img, d_score = d_img[d_order], d_score[d_order]
    rank = np.arange(len(d_img)) - np.searchsorted(d_img, d_img, side="left")
    keep = rank < max_dets
    d_order = d_order[keep]
    return Arrays(
        image_ids=image_ids,
        file_names=[im.get("file_name", "") for im in gt["images"]],
        cat_ids=sorted(c["id"] for c in gt["categories"]),
        g_img=g_img[order],
        g_cls=np.array([a["category_id"] for a in anns], dtype=np.int64)[order],
        g_box=np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)[order],
        g_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=np.bool_)[order],
        g_ann_id=np.array([a.get("id", -1) for a in anns], dtype=np.int64)[order],
        d_img=d_img[keep],
        d_cls=np.asarray(predictions.category_id, dtype=np.int64)[d_order],
        d_box=np.asarray(predictions.bbox_xywh, dtype=np.float64).reshape(-1, 4)[d_order],
        d_score=d_score[keep],
        det_index=d_order,
    )


@dataclass
class TideMatch:
    """tidecv's matching of :class:`Arrays`: per detection tp / ignored / error code (see
    :mod:`detfold.analyze._analysis_kernels`) / its ground truth; per box used / fixable / missed."""

    arrays: Arrays
    tp: np.ndarray
    ignored: np.ndarray
    error: np.ndarray
    error_gt: np.ndarray
    iou_same: np.ndarray
    iou_any: np.ndarray
    g_used: np.ndarray
    best_fix: np.ndarray  # detection is the best (highest score) Cls/Loc error of an unused box
    missed: np.ndarray


def error_codes() -> dict[str, int]:
    """The kernel's error code of each detection error type (Miss is a box's, not a detection's)."""
    from detfold.analyze import _analysis_kernels as k

    return {"Cls": k.CLS, "Loc": k.LOC, "Both": k.BOTH, "Dupe": k.DUPE, "Bkg": k.BKG}


def tide_match(arrays: Arrays, pos_thr: float = POS_IOU, bg_thr: float = BG_IOU) -> TideMatch:
    """Match per image as tidecv does (:func:`detfold.analyze._analysis_kernels.tide_images`),
    then mark each unused box's best fix and the boxes no fix would find (missed)."""
    from detfold.analyze import _analysis_kernels as k

    gs, ge, ds, de = arrays.bounds()
    tp, ign, err, err_gt, iou_same, iou_any, g_used = k.tide_images(
        gs, ge, ds, de, arrays.g_box, arrays.g_cls, arrays.g_crowd, arrays.d_box, arrays.d_cls, pos_thr, bg_thr
    )
    fixable = np.isin(err, (k.CLS, k.LOC)) & (err_gt >= 0)
    fixable[fixable] = ~g_used[err_gt[fixable]]
    cand = np.flatnonzero(fixable)
    best_fix = np.zeros(len(tp), dtype=np.bool_)
    usable = np.zeros(len(g_used), dtype=np.bool_)
    if len(cand):
        order = cand[np.lexsort((cand, -arrays.d_score[cand]))]  # highest score, then first seen
        _, first = np.unique(err_gt[order], return_index=True)
        best_fix[order[first]] = True
        usable[err_gt[cand]] = True
    missed = ~arrays.g_crowd & ~g_used & ~usable
    return TideMatch(arrays, tp, ign, err, err_gt, iou_same, iou_any, g_used, best_fix, missed)


def _ap_sorted(hits: np.ndarray, npos: int) -> float:
    """tidecv's APDataObject.get_ap (fraction) of one class's detections, ``hits`` already in
    its order: score descending, ties in push order."""
    if npos == 0 or len(hits) == 0:
        return 0.0
    n_true = np.cumsum(hits)
    precision = n_true / np.arange(1, len(hits) + 1)
    recall = n_true / npos
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    y = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return sum(y.tolist()) / len(y)


def _scenario_aps(
    classes: list[int], cls: np.ndarray, score: np.ndarray, tp: np.ndarray, group: np.ndarray, npos: dict[int, int]
) -> dict[int, float]:
    """AP per non-empty class (tidecv: detections or ground truth); one sort for all classes."""
    order = np.lexsort((group, -score, cls))  # by class, then tidecv's order within it
    cls_sorted, hits = cls[order], tp[order]
    keys = np.asarray(classes, dtype=cls_sorted.dtype if len(cls_sorted) else np.int64)
    lo = np.searchsorted(cls_sorted, keys, side="left")
    hi = np.searchsorted(cls_sorted, keys, side="right")
    out = {}
    for c, start, end in zip(classes, lo.tolist(), hi.tolist(), strict=True):
        if end == start and npos.get(c, 0) == 0:
            continue
        out[c] = _ap_sorted(hits[start:end], npos.get(c, 0))
    return out


def _mean(aps: Mapping[int, float]) -> float:
    values = list(aps.values())
    return sum(values) / len(values) if values else 0.0


def _less_npos(npos: Mapping[int, int], removed_cls: np.ndarray) -> dict[int, int]:
    """``npos`` with the boxes of classes ``removed_cls`` (one entry per box) taken away."""
    out = dict(npos)
    for c, n in zip(*np.unique(removed_cls, return_counts=True), strict=True):
        out[int(c)] -= int(n)
    return out


class _Scenarios:
    """The per-class APs of tidecv's scenarios on one matching: as it is, with one error type
    fixed, and the special ones. tidecv pushes the errors' original points before the true
    positives; a fixed error's new point takes its place in that push order."""

    def __init__(self, m: TideMatch) -> None:
        a = m.arrays
        self.m, self.a = m, a
        self.seq = np.arange(len(a.d_score))
        real_gt = ~a.g_crowd
        self.classes = sorted(set(a.g_cls[real_gt].tolist()) | set(a.d_cls[~m.ignored].tolist()))
        self.npos = {c: int(n) for c, n in zip(*np.unique(a.g_cls[real_gt], return_counts=True), strict=True)}
        self.orig = ~m.tp & ~m.ignored  # the errors' original points

    def base(self) -> dict[int, float]:
        m, a, kept = self.m, self.a, ~self.m.ignored
        return _scenario_aps(self.classes, a.d_cls[kept], a.d_score[kept], m.tp[kept], self.seq[kept], self.npos)

    def fixed(self, kind: str) -> dict[int, float]:
        """Per class the AP with the errors of type ``kind`` fixed: a Cls / Loc error that is
        the best fix of its box becomes a true positive (of the box's class for Cls), the
        others of the type go; Both / Dupe / Bkg errors go; Miss: the missed boxes go."""
        m, a, seq = self.m, self.a, self.seq
        keep_orig = self.orig.copy()
        cls: list[np.ndarray] = []  # the fixed errors' new points
        score: list[np.ndarray] = []
        hit: list[np.ndarray] = []
        grp: list[np.ndarray] = []
        npos = dict(self.npos)
        if kind in ("Cls", "Loc"):
            sel = m.error == error_codes()[kind]
            keep_orig &= ~sel
            good = sel & m.best_fix
            cls = [a.g_cls[m.error_gt[good]] if kind == "Cls" else a.d_cls[good]]
            score, hit, grp = [a.d_score[good]], [np.ones(good.sum(), dtype=np.bool_)], [seq[good]]
        elif kind in ("Both", "Dupe", "Bkg"):
            keep_orig &= m.error != error_codes()[kind]
        elif kind == "Miss":
            npos = _less_npos(npos, a.g_cls[m.missed])
        # error points (fixed or original) in push order, then the true positives
        err_pts = np.concatenate([seq[keep_orig], *grp])
        e_order = np.argsort(err_pts, kind="stable")
        e_cls = np.concatenate([a.d_cls[keep_orig], *cls])[e_order]
        e_score = np.concatenate([a.d_score[keep_orig], *score])[e_order]
        e_hit = np.concatenate([np.zeros(keep_orig.sum(), dtype=np.bool_), *hit])[e_order]
        n_tp = int(m.tp.sum())
        all_cls = np.concatenate([e_cls, a.d_cls[m.tp]])
        all_score = np.concatenate([e_score, a.d_score[m.tp]])
        all_hit = np.concatenate([e_hit, np.ones(n_tp, dtype=np.bool_)])
        return _scenario_aps(self.classes, all_cls, all_score, all_hit, np.arange(len(err_pts) + n_tp), npos)

    def special(self) -> tuple[dict[int, float], dict[int, float]]:
        """FalsePos: every false positive scored 0 and every true positive 1; FalseNeg: every
        unmatched box gone (the original scores)."""
        m, a, orig = self.m, self.a, self.orig
        n_tp = int(m.tp.sum())
        cls_all = np.concatenate([a.d_cls[orig], a.d_cls[m.tp]])
        score_all = np.concatenate([np.zeros(int(orig.sum())), np.ones(n_tp)])
        hit_all = np.concatenate([np.zeros(int(orig.sum()), dtype=np.bool_), np.ones(n_tp, dtype=np.bool_)])
        group = np.arange(len(cls_all))
        false_pos = _scenario_aps(self.classes, cls_all, score_all, hit_all, group, self.npos)
        npos_fn = _less_npos(self.npos, a.g_cls[~a.g_crowd & ~m.g_used])
        score_orig = np.concatenate([a.d_score[orig], a.d_score[m.tp]])
        false_neg = _scenario_aps(self.classes, cls_all, score_orig, hit_all, group, npos_fn)
        return false_pos, false_neg


def _error_counts(m: TideMatch, kind: str) -> np.ndarray:
    """The class of each error of type ``kind`` (Miss: of each missed box)."""
    a = m.arrays
    return a.g_cls[m.missed] if kind == "Miss" else a.d_cls[m.error == error_codes()[kind]]


def tide(
    gt: Mapping[str, Any],
    predictions: Detections,
    pos_thr: float = POS_IOU,
    bg_thr: float = BG_IOU,
    max_dets: int = MAX_DETS,
    match: TideMatch | None = None,
) -> dict[str, Any]:
    """TIDE's breakdown: ``mAP`` (at ``pos_thr``), ``main`` (dAP per error type), ``special``
    (FalsePos / FalseNeg), ``counts`` per type, and ``per_class`` (AP, dAP per type, counts)."""
    m = match or tide_match(prepare(gt, predictions, max_dets), pos_thr, bg_thr)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    scenarios = _Scenarios(m)
    base = scenarios.base()
    base_map = _mean(base)
    per_class: dict[str, dict[str, Any]] = {
        names.get(c, str(c)): {"AP": base[c], "dAP": {}, "counts": {}} for c in base
    }
    main = {}
    for kind in ERROR_TYPES:
        aps = scenarios.fixed(kind)
        main[kind] = max(_mean(aps) - base_map, 0.0)
        for c, ap in aps.items():
            if c in base:
                per_class[names.get(c, str(c))]["dAP"][kind] = max(ap - base[c], 0.0)
    false_pos, false_neg = scenarios.special()
    counts = {}
    for kind in ERROR_TYPES:
        per = _error_counts(m, kind)
        counts[kind] = len(per)
        for c in base:
            per_class[names.get(c, str(c))]["counts"][kind] = int((per == c).sum())
    return {
        "mAP": base_map,
        "pos_iou": pos_thr,
        "bg_iou": bg_thr,
        "main": main,
        "special": {"FalsePos": _mean(false_pos) - base_map, "FalseNeg": _mean(false_neg) - base_map},
        "counts": counts,
        "per_class": per_class,
    }
