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
#: a high-scoring prediction with no box of any class at this IoU or more is a possibly missing box
MISSING_NEAR_IOU = 0.3
#: a box that no prediction of any class meets at IoU >= 0.1 with this score or more is possibly spurious
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
    :mod:`detfold._analysis_kernels`) / its ground truth; per box used / fixable / missed."""

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
    from detfold import _analysis_kernels as k

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


def _ap(score: np.ndarray, tp: np.ndarray, group: np.ndarray, npos: int) -> float:
    """tidecv's APDataObject.get_ap (fraction): sorted by score descending, ties in push order."""
    if npos == 0:
        return 0.0
    order = np.lexsort((group, -score))
    hits = tp[order]
    n_true = np.cumsum(hits)
    precision = n_true / np.arange(1, len(hits) + 1)
    recall = n_true / npos
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    y = np.where(idx < len(precision), precision[np.minimum(idx, max(len(precision) - 1, 0))], 0.0)
    return sum(y.tolist()) / len(y)


def _scenario_aps(
    classes: list[int], cls: np.ndarray, score: np.ndarray, tp: np.ndarray, group: np.ndarray, npos: dict[int, int]
) -> dict[int, float]:
    """AP per non-empty class (tidecv: detections or ground truth)."""
    out = {}
    for c in classes:
        sel = cls == c
        if not sel.any() and npos.get(c, 0) == 0:
            continue
        out[c] = _ap(score[sel], tp[sel], group[sel], npos.get(c, 0))
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
    from detfold import _analysis_kernels as k

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
    precision, recall, f1, tp, fp, fn there. ``score_thr`` None: no detection of the class."""
    from detfold.cocoeval import BboxEvaluator

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
        if len(score) and n:
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


def confusion_matrix(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    score_thr: Mapping[str, float | None] | float,
    iou_thr: float = POS_IOU,
) -> tuple[list[str], np.ndarray]:
    """Rows: true class (+ ``background`` last: false positives); columns: predicted class (+
    ``background``: missed boxes). Detections at or above their class's ``score_thr`` (a float
    for all classes; None: the class is left out of the predictions); per image first matched
    within their class (score order, best IoU >= ``iou_thr``, one to one, as COCO), then the
    leftovers across classes by IoU descending, one to one (what supervision's and YOLO's
    matrices count as confusion). Crowd boxes are left out."""
    from detfold._analysis_kernels import _iou

    cats = sorted(gt["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    pos = {c["id"]: i for i, c in enumerate(cats)}
    thr = {n: score_thr for n in names} if isinstance(score_thr, float | int) else dict(score_thr)
    bg = len(names)
    cm = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    arrays = prepare(gt, predictions)
    keep = np.array(
        [
            thr.get(names[pos[c]]) is not None and s >= thr[names[pos[c]]]
            for c, s in zip(arrays.d_cls, arrays.d_score, strict=True)
        ],
        dtype=np.bool_,
    )
    gs, ge, ds, de = arrays.bounds()
    for i in range(len(arrays.image_ids)):
        g = np.arange(gs[i], ge[i])
        g = g[~arrays.g_crowd[g]]
        d = np.arange(ds[i], de[i])
        d = d[keep[d]]
        g_free = np.ones(len(g), dtype=np.bool_)
        d_free = np.ones(len(d), dtype=np.bool_)
        ious = np.array([[_iou(arrays.d_box[x], arrays.g_box[y], False) for y in g] for x in d]).reshape(len(d), len(g))
        same = arrays.d_cls[d][:, None] == arrays.g_cls[g][None, :]
        for x in range(len(d)):  # within the class, by score (d is score-sorted)
            cand = np.where(same[x] & g_free, ious[x], -1.0)
            if len(cand) and cand.max() >= iou_thr:
                y = int(np.argmax(cand))
                g_free[y], d_free[x] = False, False
                cm[pos[arrays.g_cls[g[y]]], pos[arrays.d_cls[d[x]]]] += 1
        pairs = [
            (ious[x, y], x, y)
            for x in range(len(d))
            for y in range(len(g))
            if ious[x, y] >= iou_thr and d_free[x] and g_free[y]
        ]
        for _, x, y in sorted(pairs, key=lambda t: (-t[0], t[1], t[2])):
            if d_free[x] and g_free[y]:
                d_free[x], g_free[y] = False, False
                cm[pos[arrays.g_cls[g[y]]], pos[arrays.d_cls[d[x]]]] += 1
        for y in np.flatnonzero(g_free):
            cm[pos[arrays.g_cls[g[y]]], bg] += 1
        for x in np.flatnonzero(d_free):
            cm[bg, pos[arrays.d_cls[d[x]]]] += 1
    return [*names, "background"], cm


def review_candidates(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    split: str = "train",
    limit: int | None = 500,
    match: TideMatch | None = None,
) -> list[dict[str, Any]]:
    """Label-review candidates from predictions of images the model never saw, as findings rows
    (:data:`detfold.audit.FINDING_FIELDS`, action ``flag``) plus :data:`REVIEW_EXTRA_FIELDS`;
    ranked within each kind by ``value`` (largest first), at most ``limit`` per kind:

    - ``possibly_missing``: an unmatched prediction with no box of any class at IoU >=
      :data:`MISSING_NEAR_IOU` (value: its score; one per object: overlapping candidates of an
      image at IoU >= 0.5 keep the highest score);
    - ``possibly_wrong_class``: a box that a prediction of another class covers at IoU >= 0.5 with
      a higher score than any prediction of the box's own class there (value: the score margin);
    - ``possibly_misplaced``: a box whose own-class prediction, unmatched and closest to it, meets
      it only at IoU in [0.1, 0.5), with a higher score than any own-class prediction at IoU >= 0.5
      (value: the score margin);
    - ``possibly_duplicate``: two boxes of a class at IoU >= 0.5 whose best own-class prediction
      is one and the same: one object labelled twice (value: that prediction's score minus the
      next own-class score there; ``ann_id``: the box it covers less; ``related_ann_id``: the other);
    - ``possibly_spurious``: a box that no prediction of any class meets at IoU >= 0.1 with a score
      of :data:`SPURIOUS_BELOW_SCORE` or more, in a class the model does find: (1 minus the best
      such score) times the share of the class's boxes the model matches (a box of a class the
      model never finds says nothing about the label).
    """
    from detfold import _analysis_kernels as k

    m = match or tide_match(prepare(gt, predictions))
    a = m.arrays
    names = {c["id"]: c["name"] for c in gt["categories"]}
    gs, ge, ds, de = a.bounds()
    same_best, same_2nd, other, loc, loc_iou, any_hi, twin, twin_iou = k.review_images(
        gs, ge, ds, de, a.g_box, a.g_cls, a.g_crowd, a.d_box, a.d_cls, a.d_score, m.tp, POS_IOU, BG_IOU
    )
    rows: list[dict[str, Any]] = []

    def row(
        kind: str, img: int, g: int | None, d: int | None, value: float, threshold: float, **extra: Any
    ) -> dict[str, Any]:
        return {
            "split": split,
            "image_id": int(a.image_ids[img]),
            "ann_id": None if g is None else int(a.g_ann_id[g]),
            "file_name": a.file_names[img],
            "category": names.get(int(a.g_cls[g] if g is not None else a.d_cls[d]), ""),
            "check": kind,
            "value": round(float(value), 6),
            "threshold": threshold,
            "action": "flag",
            "related_ann_id": extra.pop("related", None),
            "iou": extra.pop("iou", None),
            "score": None if d is None else round(float(a.d_score[d]), 6),
            "predicted_category": None if d is None else names.get(int(a.d_cls[d]), ""),
            "bbox": None if g is None else [round(float(v), 2) for v in a.g_box[g]],
            "pred_bbox": None if d is None else [round(float(v), 2) for v in a.d_box[d]],
            **extra,
        }

    # possibly missing: one candidate per object
    cand = np.flatnonzero(~m.tp & ~m.ignored & (m.iou_any < MISSING_NEAR_IOU))
    cand = cand[np.lexsort((cand, -a.d_score[cand], a.d_img[cand]))]
    kept: list[int] = []
    for d in cand:
        if any(a.d_img[x] == a.d_img[d] and k._iou(a.d_box[x], a.d_box[d], False) >= POS_IOU for x in kept[-50:]):
            continue
        kept.append(int(d))
    found = {kind: [] for kind in REVIEW_KINDS}
    for d in kept:
        found["possibly_missing"].append(
            row(
                "possibly_missing",
                int(a.d_img[d]),
                None,
                d,
                a.d_score[d],
                MISSING_NEAR_IOU,
                iou=round(float(m.iou_any[d]), 4),
            )
        )
    own = np.where(same_best >= 0, a.d_score[np.maximum(same_best, 0)], 0.0)
    for g in np.flatnonzero((other >= 0) & ~a.g_crowd):
        d = int(other[g])
        if a.d_score[d] > own[g]:
            iou = round(float(k._iou(a.d_box[d], a.g_box[g], False)), 4)
            found["possibly_wrong_class"].append(
                row("possibly_wrong_class", int(a.g_img[g]), int(g), d, a.d_score[d] - own[g], POS_IOU, iou=iou)
            )
    for g in np.flatnonzero((loc >= 0) & ~a.g_crowd):
        d = int(loc[g])
        if a.d_score[d] > own[g]:
            iou = round(float(loc_iou[g]), 4)
            found["possibly_misplaced"].append(
                row("possibly_misplaced", int(a.g_img[g]), int(g), d, a.d_score[d] - own[g], POS_IOU, iou=iou)
            )
    seen: set[tuple[int, int]] = set()
    for g in np.flatnonzero(twin >= 0):
        h, d = int(twin[g]), int(same_best[g])
        if (min(g, h), max(g, h)) in seen:
            continue
        seen.add((min(g, h), max(g, h)))
        # the box the shared detection covers less is the likely extra label
        if k._iou(a.d_box[d], a.g_box[g], False) > k._iou(a.d_box[d], a.g_box[h], False):
            g, h = h, int(g)
        margin = a.d_score[d] - max(same_2nd[g], same_2nd[h], 0.0)
        found["possibly_duplicate"].append(
            row(
                "possibly_duplicate",
                int(a.g_img[g]),
                int(g),
                d,
                margin,
                POS_IOU,
                iou=round(float(twin_iou[g]), 4),
                related=int(a.g_ann_id[h]),
            )
        )
    recall = {}  # per class: the share of its boxes the model matches (how often it finds a real one)
    for c in np.unique(a.g_cls[~a.g_crowd]):
        sel = ~a.g_crowd & (a.g_cls == c)
        recall[int(c)] = float(m.g_used[sel].mean())
    for g in np.flatnonzero(~a.g_crowd & (any_hi < SPURIOUS_BELOW_SCORE)):
        value = (1.0 - max(any_hi[g], 0.0)) * recall[int(a.g_cls[g])]
        if value > 0:
            found["possibly_spurious"].append(row("possibly_spurious", int(a.g_img[g]), int(g), None, value, BG_IOU))
    for kind in REVIEW_KINDS:
        items = sorted(found[kind], key=lambda r: (-r["value"], r["image_id"], r["ann_id"] or 0))
        log.info(
            "review: %d %s candidates%s",
            len(items),
            kind,
            f" (the top {limit} kept)" if limit and len(items) > limit else "",
        )
        for n, r in enumerate(items[:limit] if limit else items, start=1):
            r["rank"] = n
            rows.append(r)
    return rows


def write_analysis(
    gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], out_dir: str, split: str = "train"
) -> dict[str, Any]:
    """The breakdown (``tide.json``), the best-F1 thresholds (``thresholds.json``), the confusion
    matrix at them (``confusion.csv``) and the review candidates (``review.csv``) in ``out_dir``;
    each file written atomically. Returns the TIDE result."""
    import csv
    from pathlib import Path

    from detfold.audit import FINDING_FIELDS
    from detfold.io import atomic_open, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    match = tide_match(prepare(gt, predictions))
    result = tide(gt, predictions, match=match)
    thresholds = best_f1_thresholds(gt, predictions)
    names, cm = confusion_matrix(gt, predictions, {n: t["score_thr"] for n, t in thresholds.items()})
    rows = review_candidates(gt, predictions, split=split, match=match)
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
    log.info("analysis: TIDE mAP50 %.4f; %d review candidates; wrote %s", result["mAP"], len(rows), out)
    return result
