"""Why a model fails and which labels look wrong, from predictions of images the model never saw
(the pooled out-of-fold predictions; any COCO results work).

- :func:`tide`: TIDE's error breakdown (Bolya et al., ECCV 2020) with tidecv 1.0.1's exact rules:
  foreground IoU 0.5, background IoU 0.1, at most 100 detections per image (all classes), AP
  from 101 recall points with tidecv's own precision (no epsilon) and class set (a class with
  detections but no ground truth counts, with AP 0). Each error type's dAP is the mAP gained by
  fixing only that type, as tidecv's ``get_main_errors``; FalsePos / FalseNeg as its
  ``get_special_errors``. The tests compare every number with tidecv itself.
- :func:`best_f1_thresholds`: per class the score threshold of the best F1 at IoU 0.5 (COCO's
  matching: crowd boxes ignored, 100 per image and class), with its precision and recall.
- :func:`confusion_matrix`: classes + background at IoU 0.5 and a score threshold per class.
- :func:`review_candidates`: label-review candidates in ``findings.csv`` columns.

Boxes are COCO ``xywh_abs``; scores and APs are fractions (tidecv prints percent).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detfold.core import gallery

log = logging.getLogger(__name__)

POS_IOU = 0.5  #: TIDE's foreground threshold (and the review's "matched")
BG_IOU = 0.1  #: TIDE's background threshold
MAX_DETS = 100  #: per image, all classes (TIDE); COCO's 100 per image and class for the F1 curves
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")  #: tidecv's order and short names
SPECIAL_TYPES = ("FalsePos", "FalseNeg")
#: review kinds, as the ``check`` of a findings row (what a person looks at, in the gallery)
REVIEW_KINDS = (
    "possibly_missing",
    "possibly_wrong_class",
    "possibly_misplaced",
    "possibly_duplicate",
    "possibly_spurious",
)
REVIEW_EXTRA_FIELDS = ("rank", "score", "iou", "predicted_category", "bbox", "pred_bbox")
#: an unmatched prediction that meets no unmatched box at this IoU or more (nor any box at 0.5) is a
#: possibly missing box: the boxes it overlaps are already found by other detections
MISSING_NEAR_IOU = 0.3
#: a box that no prediction of its class meets at IoU >= 0.1 with this score or more is possibly spurious
SPURIOUS_BELOW_SCORE = 0.1
_RECALL_POINTS = np.array([x / 100 for x in range(101)])  # tidecv's, bit for bit


@dataclass
class Arrays:
    """Ground truth and detections in tidecv's order: images in the ground truth's file order;
    per image the boxes in file order and the detections by score (stable), at most
    ``max_dets``. ``det_index``: each detection's position in the input list."""

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
        n = np.arange(len(self.image_ids) + 1)
        g = np.searchsorted(self.g_img, n, side="left")
        d = np.searchsorted(self.d_img, n, side="left")
        return g[:-1], g[1:], d[:-1], d[1:]


def prepare(gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], max_dets: int = MAX_DETS) -> Arrays:
    """COCO ground truth + COCO results -> :class:`Arrays` (ids already checked by the caller)."""
    image_ids = np.array([im["id"] for im in gt["images"]], dtype=np.int64)
    pos = {int(i): p for p, i in enumerate(image_ids)}
    anns = gt.get("annotations", [])
    g_img = np.array([pos[a["image_id"]] for a in anns], dtype=np.int64)
    order = np.argsort(g_img, kind="stable")
    d_img = np.array([pos[p["image_id"]] for p in predictions], dtype=np.int64)
    d_score = np.array([p["score"] for p in predictions], dtype=np.float64)
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
        d_cls=np.array([p["category_id"] for p in predictions], dtype=np.int64)[d_order],
        d_box=np.array([p["bbox"] for p in predictions], dtype=np.float64).reshape(-1, 4)[d_order],
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


def tide_match(arrays: Arrays, pos_thr: float = POS_IOU, bg_thr: float = BG_IOU) -> TideMatch:
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


def tide(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    pos_thr: float = POS_IOU,
    bg_thr: float = BG_IOU,
    max_dets: int = MAX_DETS,
    match: TideMatch | None = None,
) -> dict[str, Any]:
    """TIDE's breakdown: ``mAP`` (at ``pos_thr``), ``main`` (dAP per error type), ``special``
    (FalsePos / FalseNeg), ``counts`` per type, and ``per_class`` (AP, dAP per type, counts)."""
    from detfold.analyze import _analysis_kernels as k

    m = match or tide_match(prepare(gt, predictions, max_dets), pos_thr, bg_thr)
    a = m.arrays
    seq = np.arange(len(a.d_score))
    real_gt = ~a.g_crowd
    classes = sorted(set(a.g_cls[real_gt].tolist()) | set(a.d_cls[~m.ignored].tolist()))
    npos = {c: int(n) for c, n in zip(*np.unique(a.g_cls[real_gt], return_counts=True), strict=True)}
    names = {c["id"]: c["name"] for c in gt["categories"]}

    base = _scenario_aps(classes, a.d_cls[~m.ignored], a.d_score[~m.ignored], m.tp[~m.ignored], seq[~m.ignored], npos)
    is_fp = ~m.tp
    orig = is_fp & ~m.ignored  # the errors' original points (pushed before the true positives)
    code = {"Cls": k.CLS, "Loc": k.LOC, "Both": k.BOTH, "Dupe": k.DUPE, "Bkg": k.BKG}

    def fixed(kind: str) -> dict[int, float]:
        keep_orig = orig.copy()
        cls, score, hit, grp = [], [], [], []
        npos_k = dict(npos)
        if kind in ("Cls", "Loc"):
            sel = m.error == code[kind]
            keep_orig &= ~sel
            good = sel & m.best_fix
            fix_cls = a.g_cls[m.error_gt[good]] if kind == "Cls" else a.d_cls[good]
            cls.append(fix_cls)
            score.append(a.d_score[good])
            hit.append(np.ones(good.sum(), dtype=np.bool_))
            grp.append(seq[good])
        elif kind in ("Both", "Dupe", "Bkg"):
            keep_orig &= m.error != code[kind]
        elif kind == "Miss":
            for c, n in zip(*np.unique(a.g_cls[m.missed], return_counts=True), strict=True):
                npos_k[int(c)] -= int(n)
        # error points (fixed or original) in push order, then the true positives
        err_pts = np.concatenate([seq[keep_orig], *grp]) if grp else seq[keep_orig]
        e_cls = np.concatenate([a.d_cls[keep_orig], *cls]) if cls else a.d_cls[keep_orig]
        e_score = np.concatenate([a.d_score[keep_orig], *score]) if score else a.d_score[keep_orig]
        e_hit = (
            np.concatenate([np.zeros(keep_orig.sum(), dtype=np.bool_), *hit])
            if hit
            else np.zeros(keep_orig.sum(), dtype=np.bool_)
        )
        e_order = np.argsort(err_pts, kind="stable")
        n_err = len(err_pts)
        all_cls = np.concatenate([e_cls[e_order], a.d_cls[m.tp]])
        all_score = np.concatenate([e_score[e_order], a.d_score[m.tp]])
        all_hit = np.concatenate([e_hit[e_order], np.ones(int(m.tp.sum()), dtype=np.bool_)])
        group = np.arange(n_err + int(m.tp.sum()))
        return _scenario_aps(classes, all_cls, all_score, all_hit, group, npos_k)

    def mean(aps: Mapping[int, float]) -> float:
        values = list(aps.values())
        return sum(values) / len(values) if values else 0.0

    base_map = mean(base)
    result: dict[str, Any] = {
        "mAP": base_map,
        "pos_iou": pos_thr,
        "bg_iou": bg_thr,
        "main": {},
        "special": {},
        "counts": {},
        "per_class": {names.get(c, str(c)): {"AP": base[c], "dAP": {}, "counts": {}} for c in base},
    }
    for kind in ERROR_TYPES:
        aps = fixed(kind)
        result["main"][kind] = max(mean(aps) - base_map, 0.0)
        for c, ap in aps.items():
            if c in base:
                result["per_class"][names.get(c, str(c))]["dAP"][kind] = max(ap - base[c], 0.0)
    # special: every false positive scored 0 and every true positive 1; every unmatched box gone
    n_tp = int(m.tp.sum())
    fp_cls, tp_cls = a.d_cls[orig], a.d_cls[m.tp]
    cls_all = np.concatenate([fp_cls, tp_cls])
    score_all = np.concatenate([np.zeros(len(fp_cls)), np.ones(n_tp)])
    hit_all = np.concatenate([np.zeros(len(fp_cls), dtype=np.bool_), np.ones(n_tp, dtype=np.bool_)])
    group = np.arange(len(cls_all))
    result["special"]["FalsePos"] = mean(_scenario_aps(classes, cls_all, score_all, hit_all, group, npos)) - base_map
    unmatched = real_gt & ~m.g_used
    npos_fn = dict(npos)
    for c, n in zip(*np.unique(a.g_cls[unmatched], return_counts=True), strict=True):
        npos_fn[int(c)] -= int(n)
    score_orig = np.concatenate([a.d_score[orig], a.d_score[m.tp]])
    result["special"]["FalseNeg"] = (
        mean(_scenario_aps(classes, cls_all, score_orig, hit_all, group, npos_fn)) - base_map
    )
    for kind in ERROR_TYPES:
        if kind == "Miss":
            per = a.g_cls[m.missed]
        else:
            per = a.d_cls[m.error == code[kind]]
        result["counts"][kind] = len(per)
        for c in base:
            result["per_class"][names.get(c, str(c))]["counts"][kind] = int((per == c).sum())
    return result


def best_f1_thresholds(gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per class (name): the score threshold with the best F1 at IoU 0.5 (COCO's matching), with
    precision, recall, f1, tp, fp, fn there. ``score_thr`` None: no detection of the class is a
    true positive (every threshold gives F1 0: the class is best left out)."""
    from detfold.evaluate.cocoeval import BboxEvaluator

    ev = BboxEvaluator(dict(gt))
    matched = ev.match_results(list(predictions))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    npos = matched.gt_counts.sum(0)
    hit = (matched.matched & 1).astype(bool)
    ignored = (matched.ignored & 1).astype(bool)
    out: dict[str, dict[str, Any]] = {}
    for k, cat_id in enumerate(ev.cat_ids):
        sel = (matched.cat == k) & ~ignored
        score = matched.score[sel]
        order = np.argsort(-score, kind="stable")
        score, h = score[order], hit[sel][order]
        n = int(npos[k])
        entry: dict[str, Any] = {
            "score_thr": None,
            "precision": 0.0,
            "recall": 0.0,
            "f1": 0.0,
            "tp": 0,
            "fp": 0,
            "fn": n,
        }
        if len(score) and n and h.any():
            tp = np.cumsum(h)
            fp = np.cumsum(~h)
            last = np.r_[score[1:] != score[:-1], True]  # a threshold keeps every tie
            p, r = tp / (tp + fp), tp / n
            f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
            f1 = np.where(last, f1, -1.0)
            i = int(np.argmax(f1))
            entry = {
                "score_thr": float(score[i]),
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f1[i]),
                "tp": int(tp[i]),
                "fp": int(fp[i]),
                "fn": n - int(tp[i]),
            }
        out[names[cat_id]] = entry
    return out


def kept_detections(gt: Mapping[str, Any], arrays: Arrays, score_thr: Mapping[str, float | None] | float) -> np.ndarray:
    """Per detection of ``arrays``: at or above its class's ``score_thr`` (by class name; a float
    for all classes; None: the class is left out)."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    thr = {n: score_thr for n in names.values()} if isinstance(score_thr, float | int) else dict(score_thr)
    by_id = {c: np.inf if thr.get(n) is None else float(thr[n]) for c, n in names.items()}
    cls_thr = np.array([by_id[c] for c in arrays.d_cls.tolist()], dtype=np.float64)
    return arrays.d_score >= cls_thr


def confusion_matrix(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    score_thr: Mapping[str, float | None] | float,
    iou_thr: float = POS_IOU,
    arrays: Arrays | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Rows: true class (+ ``background`` last: false positives); columns: predicted class (+
    ``background``: missed boxes). Detections at or above their class's ``score_thr`` (a float
    for all classes; None: the class is left out of the predictions); per image first matched
    within their class (score order, best IoU >= ``iou_thr``, one to one, as COCO), then the
    leftovers across classes by IoU descending, one to one (what supervision's and YOLO's
    matrices count as confusion). Crowd boxes are left out. Also returns, per image of the
    ground truth (file order), its false positives, missed boxes and class confusions.

    faster-coco-eval's ``PreviewResults.compute_confusion_matrix`` matches class-agnostically in
    one greedy pass (score order, best IoU whatever the class), so where boxes of two classes
    overlap it can pair a detection with the wrong-class box although its own class's box is
    free; detfold counts the same-class match first, as the COCO metric does. Where no two
    boxes of different classes compete the two are equal (tests/analyze/test_analyze.py)."""
    from detfold.analyze._analysis_kernels import confusion_images

    cats = sorted(gt["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    index = {c["id"]: i for i, c in enumerate(cats)}
    a = arrays if arrays is not None else prepare(gt, predictions)
    g_idx = np.array([index[c] for c in a.g_cls.tolist()], dtype=np.int64)
    d_idx = np.array([index[c] for c in a.d_cls.tolist()], dtype=np.int64)
    keep = kept_detections(gt, a, score_thr)
    gs, ge, ds, de = a.bounds()
    cm, per_image = confusion_images(
        gs, ge, ds, de, a.g_box, g_idx, a.g_crowd, a.d_box, d_idx, keep, iou_thr, len(names)
    )
    return [*names, "background"], cm, per_image


def review_candidates(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    split: str = "train",
    limit: int | None = 500,
    match: TideMatch | None = None,
) -> list[dict[str, Any]]:
    """Label-review candidates from predictions of images the model never saw, as findings rows
    (:data:`detfold.audit.checks.FINDING_FIELDS`, action ``flag``) plus :data:`REVIEW_EXTRA_FIELDS`;
    ranked within each kind by ``value`` (largest first), at most ``limit`` per kind:

    - ``possibly_missing``: an unmatched prediction with no box of any class at IoU >= 0.5 and
      no unmatched box (one that no detection found) at IoU >= :data:`MISSING_NEAR_IOU`: what it
      overlaps is already explained by other detections (value: its score; one per object:
      overlapping candidates of an image at IoU >= 0.5 keep the highest score);
    - ``possibly_wrong_class``: a box that a prediction of another class covers at IoU >= 0.5 with
      a higher score than any prediction of the box's own class there (value: the score margin);
    - ``possibly_misplaced``: an unmatched box whose own-class prediction (unmatched, and closest
      to it of the unmatched boxes) meets it only at IoU in [0.1, 0.5), with a higher score than
      any own-class prediction at IoU >= 0.5 (value: the score margin);
    - ``possibly_duplicate``: two boxes of a class at IoU >= 0.5 whose best own-class prediction
      is one and the same: one object labelled twice (value: that prediction's score minus the
      next own-class score there; ``ann_id``: the box it covers less; ``related_ann_id``: the other);
    - ``possibly_spurious``: a box that no prediction of its class meets at IoU >= 0.1 with a
      score of :data:`SPURIOUS_BELOW_SCORE` or more (and none of another class at IoU >= 0.5:
      that is a possibly wrong class), in a class the model does find: (1 minus the best such
      score) times the share of the class's boxes the model matches (a box of a class the model
      never finds says nothing about the label; one of a class it finds nearly always, much).
    """
    from detfold.analyze import _analysis_kernels as k

    m = match or tide_match(prepare(gt, predictions))
    a = m.arrays
    names = {c["id"]: c["name"] for c in gt["categories"]}
    gs, ge, ds, de = a.bounds()
    same_best, same_2nd, other, loc, loc_iou, own_hi, twin, twin_iou, free_iou = k.review_images(
        gs, ge, ds, de, a.g_box, a.g_cls, a.g_crowd, m.g_used, a.d_box, a.d_cls, a.d_score, m.tp, POS_IOU, BG_IOU
    )
    rows: list[dict[str, Any]] = []
    n_g = len(a.g_box)
    iou_gd = np.zeros(n_g)  # per box: the IoU of the detection its candidate is about
    iou_gd[(other >= 0)] = k.pair_iou(a.g_box, a.d_box, np.flatnonzero(other >= 0), other[other >= 0])
    # padded with one element so that index -1 (none) is valid even without any box or detection
    d_score_pad, d_img_pad = np.append(a.d_score, 0.0), np.append(a.d_img, 0)
    g_img_pad, g_ann_pad = np.append(a.g_img, 0), np.append(a.g_ann_id, 0)
    own = np.where(same_best >= 0, d_score_pad[same_best], 0.0)
    real = ~a.g_crowd
    # each kind: (box index or -1, detection index or -1, value, iou, related box or -1)
    found: dict[str, tuple[np.ndarray, ...]] = {}
    # possibly missing: one candidate per object
    cand = np.flatnonzero(~m.tp & ~m.ignored & (m.iou_any < POS_IOU) & (free_iou < MISSING_NEAR_IOU))
    cand = cand[np.lexsort((cand, -a.d_score[cand], a.d_img[cand]))]
    cand = cand[k.first_per_object(cand, a.d_img, a.d_box, POS_IOU)]
    found["possibly_missing"] = (-np.ones(len(cand), np.int64), cand, a.d_score[cand], m.iou_any[cand], None)
    g = np.flatnonzero((other >= 0) & real)
    g = g[a.d_score[other[g]] > own[g]]
    found["possibly_wrong_class"] = (g, other[g], a.d_score[other[g]] - own[g], iou_gd[g], None)
    g = np.flatnonzero((loc >= 0) & real)
    g = g[a.d_score[loc[g]] > own[g]]
    found["possibly_misplaced"] = (g, loc[g], a.d_score[loc[g]] - own[g], loc_iou[g], None)
    # possibly duplicate: each pair once; the box the shared detection covers less is the likely extra label
    g = np.flatnonzero(twin >= 0)
    h = twin[g]
    first = (g < h) | (twin[h] != g)  # a pair whose twin points back is seen from its lower index
    g, h = g[first], h[first]
    shared = same_best[g]
    swap = k.pair_iou(a.g_box, a.d_box, g, shared) > k.pair_iou(a.g_box, a.d_box, h, shared)
    g, h = np.where(swap, h, g), np.where(swap, g, h)
    margin = a.d_score[shared] - np.maximum(np.maximum(same_2nd[g], same_2nd[h]), 0.0)
    found["possibly_duplicate"] = (g, shared, margin, twin_iou[g], h)
    recall = np.zeros(int(a.g_cls.max()) + 1 if n_g else 1)  # per class: the share of its boxes matched
    for c in np.unique(a.g_cls[real]):
        recall[c] = float(m.g_used[real & (a.g_cls == c)].mean())
    g = np.flatnonzero(real & (own_hi < SPURIOUS_BELOW_SCORE) & (other < 0))
    value = (1.0 - np.maximum(own_hi[g], 0.0)) * recall[a.g_cls[g]] if len(g) else np.zeros(0)
    keep = value > 0
    found["possibly_spurious"] = (g[keep], -np.ones(int(keep.sum()), np.int64), value[keep], None, None)
    threshold = {
        "possibly_missing": MISSING_NEAR_IOU,
        "possibly_wrong_class": POS_IOU,
        "possibly_misplaced": POS_IOU,
        "possibly_duplicate": POS_IOU,
        "possibly_spurious": BG_IOU,
    }
    for kind in REVIEW_KINDS:
        g, d, value, iou, related = found[kind]
        value = np.round(value.astype(np.float64), 6)
        img = np.where(g >= 0, g_img_pad[g], d_img_pad[d])
        ann = np.where(g >= 0, g_ann_pad[g], 0)
        order = np.lexsort((ann, a.image_ids[img] if len(img) else img, -value))
        log.info(
            "review: %d %s candidates%s",
            len(order),
            kind,
            f" (the top {limit} kept)" if limit and len(order) > limit else "",
        )
        for n, i in enumerate(order[:limit] if limit else order, start=1):
            gi, di = int(g[i]), int(d[i])
            rows.append(
                {
                    "split": split,
                    "image_id": int(a.image_ids[img[i]]),
                    "ann_id": None if gi < 0 else int(a.g_ann_id[gi]),
                    "file_name": a.file_names[img[i]],
                    "category": names.get(int(a.g_cls[gi] if gi >= 0 else a.d_cls[di]), ""),
                    "check": kind,
                    "value": float(value[i]),
                    "threshold": threshold[kind],
                    "action": "flag",
                    "related_ann_id": None if related is None else int(a.g_ann_id[related[i]]),
                    "rank": n,
                    "score": None if di < 0 else round(float(a.d_score[di]), 6),
                    "iou": None if iou is None else round(float(iou[i]), 4),
                    "predicted_category": None if di < 0 else names.get(int(a.d_cls[di]), ""),
                    "bbox": None if gi < 0 else [round(float(v), 2) for v in a.g_box[gi]],
                    "pred_bbox": None if di < 0 else [round(float(v), 2) for v in a.d_box[di]],
                }
            )
    return rows


def scores_at_thresholds(
    gt: Mapping[str, Any],
    prediction_sets: Sequence[Sequence[Mapping[str, Any]]],
    score_thr: Mapping[str, float | None],
) -> dict[str, dict[str, Any]]:
    """Per class (name): precision, recall, f1, tp, fp, fn of the detections at or above
    ``score_thr[name]`` (thresholds chosen elsewhere: measured here on other images) under the
    same matching as :func:`best_f1_thresholds`; with several prediction sets of the same images
    (each fold model's), their counts are summed: how one such model does at the threshold."""
    from detfold.evaluate.cocoeval import BboxEvaluator

    ev = BboxEvaluator(dict(gt))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    tp = np.zeros(len(ev.cat_ids), dtype=np.int64)
    fp = np.zeros(len(ev.cat_ids), dtype=np.int64)
    npos = np.zeros(len(ev.cat_ids), dtype=np.int64)
    cls_thr = np.array([np.inf if score_thr.get(names[c]) is None else score_thr[names[c]] for c in ev.cat_ids])
    for predictions in prediction_sets:
        matched = ev.match_results(list(predictions))
        hit = (matched.matched & 1).astype(bool)
        sel = ~(matched.ignored & 1).astype(bool) & (matched.score >= cls_thr[matched.cat])
        tp += np.bincount(matched.cat[sel & hit], minlength=len(ev.cat_ids))
        fp += np.bincount(matched.cat[sel & ~hit], minlength=len(ev.cat_ids))
        npos += matched.gt_counts.sum(0).astype(np.int64)
    out: dict[str, dict[str, Any]] = {}
    for k, cat_id in enumerate(ev.cat_ids):
        t, f, n = int(tp[k]), int(fp[k]), int(npos[k])
        p = t / (t + f) if t + f else 0.0
        r = t / n if n else 0.0
        out[names[cat_id]] = {
            "precision": p,
            "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "tp": t,
            "fp": f,
            "fn": n - t,
        }
    return out


WORST_IMAGES = 12  #: images in the worst-images gallery


@dataclass
class Tile:
    """One gallery item: an image (position in the ground truth), its boxes (``xywh_abs``), the
    box to crop around (None: the whole image) and a two-line caption."""

    image: int
    gt: list[Sequence[float]]
    pred: list[Sequence[float]]
    caption: tuple[str, str]
    focus: Sequence[float] | None = None
    related: list[Sequence[float]] | None = None


def _contact_sheet(tiles: Sequence[Tile], file_names: Sequence[str], images_dir: str, path: Any) -> None:
    from pathlib import Path

    sheet = [
        gallery.Tile(
            Path(images_dir) / file_names[t.image],
            [(gallery.RELATED_COLOUR, t.related or []), (gallery.GT_COLOUR, t.gt), (gallery.PRED_COLOUR, t.pred)],
            t.caption,
            t.focus,
        )
        for t in tiles
    ]
    gallery.contact_sheet(sheet, path, gallery.ANALYSIS_LOOK)


def review_tiles(match: TideMatch, gt: Mapping[str, Any], review: Sequence[Mapping[str, Any]]) -> dict[str, list[Tile]]:
    """The review galleries' items, by file stem ``review_<kind>``: the top candidates of each
    kind, the box in green, the prediction in red, the other box of a pair in cyan."""
    a = match.arrays
    pos = {int(i): p for p, i in enumerate(a.image_ids)}
    ann_box = {int(i): a.g_box[n].tolist() for n, i in enumerate(a.g_ann_id)}
    out: dict[str, list[Tile]] = {}
    for kind in REVIEW_KINDS:
        tiles = []
        for r in [r for r in review if r["check"] == kind][: gallery.MAX_TILES]:
            gt_boxes = [r["bbox"]] if r["bbox"] is not None else []
            pred = [r["pred_bbox"]] if r["pred_bbox"] is not None else []
            related = [ann_box[r["related_ann_id"]]] if r.get("related_ann_id") is not None else []
            label = f"{r['ann_id'] if r['ann_id'] is not None else 'img ' + str(r['image_id'])} {r['category']}"
            if r["predicted_category"] and r["predicted_category"] != r["category"]:
                label += f">{r['predicted_category']}"
            values = [
                f"{short}{r[key]:.2f}" for key, short in (("score", "s"), ("iou", "iou")) if r.get(key) is not None
            ]
            detail = " ".join(values) or f"v{r['value']:.2f}"
            focus = gallery.union([*gt_boxes, *pred, *related])
            tiles.append(Tile(pos[r["image_id"]], gt_boxes, pred, (f"#{r['rank']} {label}", detail), focus, related))
        out[f"review_{kind}"] = tiles
    return out


def error_tiles(
    match: TideMatch, gt: Mapping[str, Any], per_image: np.ndarray, keep: np.ndarray
) -> dict[str, list[Tile]]:
    """The error galleries' items, by file stem: ``error_<type>`` (TIDE's errors of each type,
    highest score first, with the box they were tested against; Miss: the largest missed boxes)
    and ``worst_images`` (the images with the most errors at the best-F1 thresholds: false
    positives + missed boxes + class confusions, ``per_image`` of :func:`confusion_matrix`;
    ``keep``: the detections at or above them, drawn)."""
    from detfold.analyze import _analysis_kernels as k

    a = match.arrays
    names = {c["id"]: c["name"] for c in gt["categories"]}
    out: dict[str, list[Tile]] = {}
    code = {"Cls": k.CLS, "Loc": k.LOC, "Both": k.BOTH, "Dupe": k.DUPE, "Bkg": k.BKG}
    for kind in ERROR_TYPES:
        tiles = []
        if kind == "Miss":
            missed = np.flatnonzero(match.missed)
            area = a.g_box[missed, 2] * a.g_box[missed, 3]
            for g in missed[np.argsort(-area, kind="stable")][: gallery.MAX_TILES]:
                box = a.g_box[g].tolist()
                caption = (f"{a.g_ann_id[g]} {names.get(int(a.g_cls[g]), '')}", "missed")
                tiles.append(Tile(int(a.g_img[g]), [box], [], caption, box))
        else:
            dets = np.flatnonzero(match.error == code[kind])
            for d in dets[np.argsort(-a.d_score[dets], kind="stable")][: gallery.MAX_TILES]:
                pred = a.d_box[d].tolist()
                g = int(match.error_gt[d])
                gt_boxes = [a.g_box[g].tolist()] if g >= 0 else []
                label = names.get(int(a.d_cls[d]), "")
                if kind == "Cls" and g >= 0:
                    label = f"{names.get(int(a.g_cls[g]), '')}>{label}"
                caption = (label, f"s{a.d_score[d]:.2f} iou{match.iou_any[d]:.2f}")
                tiles.append(Tile(int(a.d_img[d]), gt_boxes, [pred], caption, gallery.union([pred, *gt_boxes])))
        out[f"error_{kind}"] = tiles
    gs, ge, ds, de = a.bounds()
    total = per_image.sum(1)
    worst = [int(i) for i in np.argsort(-total, kind="stable")[:WORST_IMAGES] if total[i] > 0]
    out["worst_images"] = [
        Tile(
            i,
            [a.g_box[g].tolist() for g in range(gs[i], ge[i]) if not a.g_crowd[g]],
            [a.d_box[d].tolist() for d in range(ds[i], de[i]) if keep[d]],
            (a.file_names[i][-26:], f"fp{per_image[i, 0]} fn{per_image[i, 1]} cls{per_image[i, 2]}"),
        )
        for i in worst
    ]
    return out


def merge_splits(
    parts: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Several (ground truth, predictions) of one dataset's disjoint image sets as one."""
    first = parts[0][0]
    gt = {
        **first,
        "images": [im for g, _ in parts for im in g["images"]],
        "annotations": [a for g, _ in parts for a in g.get("annotations", [])],
    }
    return gt, [p for _, preds in parts for p in preds]


def write_analysis(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    out_dir: str,
    split: str = "train",
    images_dir: str | None = None,
    holdout: tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]] | None = None,
    holdout_sets: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    gallery_dir: str | None = None,
) -> dict[str, Any]:
    """The breakdown (``tide.json``), the best-F1 thresholds (``thresholds.json``), the confusion
    matrix at them (``confusion.csv``), the review candidates (``review.csv``) and, with
    ``images_dir``, the galleries (``gallery/*.png``, or ``gallery_dir``) in ``out_dir``; each
    file written atomically. ``holdout``: (ground truth, predictions) of other images of the
    dataset (the blend split), whose boxes join the review; the thresholds chosen on ``gt`` are
    measured there too (an honest estimate of their precision and recall), on ``holdout_sets``
    (default: the holdout's predictions) with their counts summed: predictions of the kind the
    thresholds were chosen on (each fold model's, not their fusion, whose scores differ).
    Returns the TIDE result."""
    import csv
    from pathlib import Path

    from detfold.audit.checks import FINDING_FIELDS
    from detfold.core.io import atomic_open, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = prepare(gt, predictions)
    match = tide_match(arrays)
    result = tide(gt, predictions, match=match)
    per_class = best_f1_thresholds(gt, predictions)
    score_thr = {n: t["score_thr"] for n, t in per_class.items()}
    names, cm, per_image = confusion_matrix(gt, predictions, score_thr, arrays=arrays)
    thresholds: dict[str, Any] = {
        "score_thr": score_thr,
        "iou_thr": POS_IOU,
        "chosen_on": f"{len(gt['images'])} images (best F1 per class)",
        "per_class": per_class,
    }
    review_match = match
    review_gt: Mapping[str, Any] = gt
    review_preds: Sequence[Mapping[str, Any]] = predictions
    if holdout is not None:
        sets = holdout_sets if holdout_sets is not None else [holdout[1]]
        thresholds["holdout"] = {
            "images": len(holdout[0]["images"]),
            "prediction_sets": len(sets),
            "per_class": scores_at_thresholds(holdout[0], sets, score_thr),
        }
        review_gt, review_preds = merge_splits([(gt, predictions), holdout])
        review_match = tide_match(prepare(review_gt, review_preds))
    rows = review_candidates(review_gt, review_preds, split=split, match=review_match)
    write_json(out / "tide.json", result)
    write_json(out / "thresholds.json", thresholds)
    with atomic_open(out / "confusion.csv") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["true \\ predicted", *names])
        for name, counts in zip(names, cm.tolist(), strict=True):
            writer.writerow([name, *counts])
    with atomic_open(out / "review.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*FINDING_FIELDS, *REVIEW_EXTRA_FIELDS], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    if images_dir is not None:
        tiles = {
            **error_tiles(match, gt, per_image, kept_detections(gt, arrays, score_thr)),
            **review_tiles(review_match, review_gt, rows),
        }
        sheets = Path(gallery_dir) if gallery_dir else out / "gallery"
        sheets.mkdir(parents=True, exist_ok=True)
        for stem, items in tiles.items():
            files = review_match.arrays.file_names if stem.startswith("review_") else arrays.file_names
            _contact_sheet(items, files, images_dir, sheets / f"{stem}.png")
        log.info("analysis: %d galleries in %s", len(tiles), sheets)
    log.info("analysis: TIDE mAP50 %.4f; %d review candidates; wrote %s", result["mAP"], len(rows), out)
    return result
