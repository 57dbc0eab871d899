"""Label review: boxes that look wrong, from predictions of images the model never saw (the
pooled out-of-fold predictions), as rows of the audit's ``findings.csv`` columns. One function
per kind of candidate (:data:`REVIEWS`); each ranks by its ``value``, largest first.
Boxes are COCO ``xywh_abs``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from detfold.analyze import _analysis_kernels as k
from detfold.analyze.tide import BG_IOU, POS_IOU, Arrays, TideMatch, prepare, tide_match
from detfold.core.coco import Detections

log = logging.getLogger(__name__)

REVIEW_EXTRA_FIELDS = ("rank", "score", "iou", "predicted_category", "bbox", "pred_bbox")
#: an unmatched prediction that meets no unmatched box at this IoU or more (nor any box at 0.5) is a
#: possibly missing box: the boxes it overlaps are already found by other detections
MISSING_NEAR_IOU = 0.3
#: a box that no prediction of its class meets at IoU >= 0.1 with this score or more is possibly spurious
SPURIOUS_BELOW_SCORE = 0.1


@dataclass
class Evidence:
    """Per box, what the predictions around it say, and per detection its best IoU with an
    unmatched box: the arrays of :func:`detfold.analyze._analysis_kernels.review_images`."""

    m: TideMatch
    same_best: np.ndarray
    same_iou: np.ndarray
    same_2nd: np.ndarray
    other: np.ndarray
    other_iou: np.ndarray
    loc: np.ndarray
    loc_iou: np.ndarray
    own_hi: np.ndarray
    twin: np.ndarray
    twin_iou: np.ndarray
    free_iou: np.ndarray

    @classmethod
    def of(cls, m: TideMatch) -> Evidence:
        a = m.arrays
        found = k.review_images(
            *a.bounds(), a.g_box, a.g_cls, a.g_crowd, m.g_used, a.d_box, a.d_cls, a.d_score, m.tp, POS_IOU, BG_IOU
        )
        return cls(m, *found)

    @property
    def own(self) -> np.ndarray:
        """Per box: the score of its best own-class prediction (0: none)."""
        return np.append(self.m.arrays.d_score, 0.0)[self.same_best]  # padded: index -1 (none) is 0


@dataclass
class Found:
    """One kind's candidates: per candidate its box and its detection (-1: none), its value, the
    IoU shown (None: the kind has none) and the other box of a pair (None: the kind has none)."""

    g: np.ndarray
    d: np.ndarray
    value: np.ndarray
    iou: np.ndarray | None = None
    related: np.ndarray | None = None


def possibly_missing(e: Evidence) -> Found:
    """An unmatched prediction with no box of any class at IoU >= 0.5 and no unmatched box (one
    that no detection found) at IoU >= :data:`MISSING_NEAR_IOU`: what it overlaps is already
    explained by other detections (value: its score; one per object: overlapping candidates of
    an image at IoU >= 0.5 keep the highest score)."""
    m, a = e.m, e.m.arrays
    cand = np.flatnonzero(~m.tp & ~m.ignored & (m.iou_any < POS_IOU) & (e.free_iou < MISSING_NEAR_IOU))
    cand = cand[np.lexsort((cand, -a.d_score[cand], a.d_img[cand]))]
    cand = cand[k.first_per_object(cand, a.d_img, a.d_box, POS_IOU)]
    return Found(-np.ones(len(cand), np.int64), cand, a.d_score[cand], m.iou_any[cand])


def _beats_own(e: Evidence, cand: np.ndarray, cand_iou: np.ndarray) -> Found:
    """The boxes whose detection ``cand`` (per box, -1: none; at IoU ``cand_iou``) scores higher
    than their best own-class prediction (value: the score margin)."""
    a, own = e.m.arrays, e.own
    g = np.flatnonzero((cand >= 0) & ~a.g_crowd)
    g = g[a.d_score[cand[g]] > own[g]]
    return Found(g, cand[g], a.d_score[cand[g]] - own[g], cand_iou[g])


def possibly_wrong_class(e: Evidence) -> Found:
    """A box that a prediction of another class covers at IoU >= 0.5 with a higher score than
    any prediction of the box's own class there (value: the score margin)."""
    return _beats_own(e, e.other, e.other_iou)


def possibly_misplaced(e: Evidence) -> Found:
    """An unmatched box whose own-class prediction (unmatched, and closest to it of the
    unmatched boxes) meets it only at IoU in [0.1, 0.5), with a higher score than any own-class
    prediction at IoU >= 0.5 (value: the score margin)."""
    return _beats_own(e, e.loc, e.loc_iou)


def possibly_duplicate(e: Evidence) -> Found:
    """Two boxes of a class at IoU >= 0.5 whose best own-class prediction is one and the same:
    one object labelled twice (value: that prediction's score minus the next own-class score
    there; the box: the one it covers less, the likely extra label; related: the other). Each
    pair once."""
    a = e.m.arrays
    g = np.flatnonzero(e.twin >= 0)
    h = e.twin[g]
    first = (g < h) | (e.twin[h] != g)  # a pair whose twin points back is seen from its lower index
    g, h = g[first], h[first]
    shared = e.same_best[g]
    swap = e.same_iou[g] > e.same_iou[h]  # both boxes' IoU with their shared prediction
    g, h = np.where(swap, h, g), np.where(swap, g, h)
    margin = a.d_score[shared] - np.maximum(np.maximum(e.same_2nd[g], e.same_2nd[h]), 0.0)
    return Found(g, shared, margin, e.twin_iou[g], h)


def possibly_spurious(e: Evidence) -> Found:
    """A box that no prediction of its class meets at IoU >= 0.1 with a score of
    :data:`SPURIOUS_BELOW_SCORE` or more (and none of another class at IoU >= 0.5: that is a
    possibly wrong class), in a class the model does find: (1 minus the best such score) times
    the share of the class's boxes the model matches (a box of a class the model never finds
    says nothing about the label; one of a class it finds nearly always, much)."""
    m, a = e.m, e.m.arrays
    real = ~a.g_crowd
    recall = np.zeros(int(a.g_cls.max()) + 1 if len(a.g_box) else 1)  # per class: the share of its boxes matched
    for c in np.unique(a.g_cls[real]):
        recall[c] = float(m.g_used[real & (a.g_cls == c)].mean())
    g = np.flatnonzero(real & (e.own_hi < SPURIOUS_BELOW_SCORE) & (e.other < 0))
    value = (1.0 - np.maximum(e.own_hi[g], 0.0)) * recall[a.g_cls[g]] if len(g) else np.zeros(0)
    keep = value > 0
    return Found(g[keep], -np.ones(int(keep.sum()), np.int64), value[keep])


#: review kind (a findings row's ``check``, in this order) -> (its finder, the threshold the row names)
REVIEWS: dict[str, tuple[Callable[[Evidence], Found], float]] = {
    "possibly_missing": (possibly_missing, MISSING_NEAR_IOU),
    "possibly_wrong_class": (possibly_wrong_class, POS_IOU),
    "possibly_misplaced": (possibly_misplaced, POS_IOU),
    "possibly_duplicate": (possibly_duplicate, POS_IOU),
    "possibly_spurious": (possibly_spurious, BG_IOU),
}
REVIEW_KINDS = tuple(REVIEWS)


def _rows(kind: str, found: Found, a: Arrays, limit: int | None) -> list[dict[str, Any]]:
    """One kind's candidates as findings rows, by value (largest first), then image id and box
    id; the first ``limit`` (None: all)."""
    g, d, iou, related = found.g, found.d, found.iou, found.related
    value = np.round(found.value.astype(np.float64), 6)
    # padded with one element so that index -1 (none) is valid even without any box or detection
    img = np.where(g >= 0, np.append(a.g_img, 0)[g], np.append(a.d_img, 0)[d])
    ann = np.where(g >= 0, np.append(a.g_ann_id, 0)[g], 0)
    order = np.lexsort((ann, a.image_ids[img] if len(img) else img, -value))
    kept = f" (the top {limit} kept)" if limit and len(order) > limit else ""
    log.info("review: %d %s candidates%s", len(order), kind, kept)
    rows = []
    for n, i in enumerate(order[:limit] if limit else order, start=1):
        gi, di = int(g[i]), int(d[i])
        rows.append(
            {
                "split": "train",
                "image_id": int(a.image_ids[img[i]]),
                "ann_id": None if gi < 0 else int(a.g_ann_id[gi]),
                "file_name": a.file_names[img[i]],
                "category": a.names.get(int(a.g_cls[gi] if gi >= 0 else a.d_cls[di]), ""),
                "check": kind,
                "value": float(value[i]),
                "threshold": REVIEWS[kind][1],
                "action": "flag",
                "related_ann_id": None if related is None else int(a.g_ann_id[related[i]]),
                "rank": n,
                "score": None if di < 0 else round(float(a.d_score[di]), 6),
                "iou": None if iou is None else round(float(iou[i]), 4),
                "predicted_category": None if di < 0 else a.names.get(int(a.d_cls[di]), ""),
                "bbox": None if gi < 0 else [round(float(v), 2) for v in a.g_box[gi]],
                "pred_bbox": None if di < 0 else [round(float(v), 2) for v in a.d_box[di]],
            }
        )
    return rows


def review_candidates(
    gt: Mapping[str, Any], predictions: Detections, limit: int | None = 500, match: TideMatch | None = None
) -> list[dict[str, Any]]:
    """Label-review candidates from predictions of images the model never saw, as findings rows
    of the training images (:data:`detfold.audit.checks.FINDING_FIELDS`, split ``train``, action
    ``flag``) plus :data:`REVIEW_EXTRA_FIELDS`; ranked within each kind (:data:`REVIEWS`) by
    ``value`` (largest first), at most ``limit`` per kind. ``match``: the matching of ``gt`` and
    ``predictions`` when the caller has it."""
    m = match or tide_match(prepare(gt, predictions))
    evidence = Evidence.of(m)
    return [row for kind, (find, _) in REVIEWS.items() for row in _rows(kind, find(evidence), m.arrays, limit)]
