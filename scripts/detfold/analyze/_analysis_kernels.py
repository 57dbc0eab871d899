"""Compiled (numba) kernels of the error analysis: TIDE's per-image matching and error
classification with tidecv 1.0.1's exact rules (:func:`tide_images`), the label review's
evidence (:func:`review_images`) and the confusion matrix (:func:`confusion_images`)."""

import numpy as np
from numba import njit

#: error codes of a false-positive detection (0: a true positive)
CLS, LOC, BOTH, DUPE, BKG = 1, 2, 3, 4, 5


@njit(cache=True)
def _iou(a, b, crowd):
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    if w <= 0:
        return 0.0
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if h <= 0:
        return 0.0
    inter = w * h
    union = a[2] * a[3] if crowd else a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@njit(cache=True)
def _first_max(values, ok):
    """The first index of the largest ``values[j]`` where ``ok[j]`` (elsewhere 0), and that value."""
    arg, best = 0, -1.0
    for j in range(values.shape[0]):
        v = values[j] if ok[j] else 0.0
        if v > best:
            best, arg = v, j
    return arg, best


@njit(cache=True)
def _error(ious, same, taken, pos_thr, bg_thr):
    """tidecv's error of an unmatched detection, from its IoU with each box (``same``: of its class,
    ``taken``: matched): (error code, the box's index or -1)."""
    j, best = _first_max(ious, same)  # no box at all: best -1
    if bg_thr <= best <= pos_thr:
        return LOC, j
    j, best = _first_max(ious, ~same)
    if best >= pos_thr:
        return CLS, j
    j, best = _first_max(ious, same & taken)
    if best >= pos_thr:
        return DUPE, j
    return (BKG if ious.shape[0] == 0 or ious.max() <= bg_thr else BOTH), -1


@njit(cache=True)
def tide_images(g_start, g_end, d_start, d_end, g_box, g_cls, g_crowd, d_box, d_cls, pos_thr, bg_thr):
    """Per image (ground truth ``g_start[i]:g_end[i]`` in file order, detections
    ``d_start[i]:d_end[i]`` by score descending): tidecv's greedy class-aware matching
    (IoU >= ``pos_thr``, argmax over the unused ground truth of the detection's class), crowd
    regions ignoring unmatched same-class detections (crowd IoU > ``pos_thr``), then each
    unmatched detection's error in tidecv's order: Loc (same-class IoU in [bg, pos]), Cls
    (other-class IoU >= pos), Dupe (IoU >= pos with a used same-class box), Bkg (IoU <= bg with
    every box), else Both.

    Returns per detection: tp, ignored (by a crowd region), error code, the ground-truth index
    of a Loc / Cls / Dupe error (-1 otherwise), the best IoU with any box; per ground truth:
    used (matched).
    """
    n_d = d_box.shape[0]
    tp = np.zeros(n_d, dtype=np.bool_)
    ign = np.zeros(n_d, dtype=np.bool_)
    err = np.zeros(n_d, dtype=np.int8)
    err_gt = -np.ones(n_d, dtype=np.int64)
    iou_any = np.zeros(n_d)
    g_used = np.zeros(g_box.shape[0], dtype=np.bool_)
    for i in range(g_start.shape[0]):
        ds, de, gs, ge = d_start[i], d_end[i], g_start[i], g_end[i]
        real = np.flatnonzero(~g_crowd[gs:ge]) + gs
        real_cls = g_cls[real]
        ious = np.zeros((de - ds, real.shape[0]))
        for d in range(de - ds):
            for j in range(real.shape[0]):
                ious[d, j] = _iou(d_box[ds + d], g_box[real[j]], False)
        taken = np.zeros(real.shape[0], dtype=np.bool_)
        for d in range(de - ds):
            j, best = _first_max(ious[d], (real_cls == d_cls[ds + d]) & ~taken)
            if best >= pos_thr:
                tp[ds + d], taken[j], g_used[real[j]] = True, True, True
        for g in range(gs, ge):  # crowd regions
            if g_crowd[g]:
                for d in range(ds, de):
                    if not tp[d] and not ign[d] and g_cls[g] == d_cls[d] and _iou(d_box[d], g_box[g], True) > pos_thr:
                        ign[d] = True
        for d in range(de - ds):
            if real.shape[0]:
                iou_any[ds + d] = ious[d].max()
            if not tp[ds + d]:
                err[ds + d], j = _error(ious[d], real_cls == d_cls[ds + d], taken, pos_thr, bg_thr)
                err_gt[ds + d] = real[j] if j >= 0 else -1
    return tp, ign, err, err_gt, iou_any, g_used


@njit(cache=True)
def review_images(
    g_start, g_end, d_start, d_end, g_box, g_cls, g_crowd, g_used, d_box, d_cls, d_score, d_tp, pos_thr, bg_thr
):
    """Per ground-truth box (crowd boxes skipped; detections by score descending, so the first
    found is the best): the highest-scoring same-class detection at IoU >= ``pos_thr`` (index,
    -1: none; its IoU) and the second-best score there (-1: none); the highest-scoring other-class
    detection at IoU >= ``pos_thr`` (index; its IoU); the highest-scoring unmatched same-class detection
    whose closest unmatched same-class box it is, at IoU in [``bg_thr``, ``pos_thr``) (index)
    and that IoU; the best score of a same-class detection at IoU >= ``bg_thr`` (-1: none); the
    same-class box overlapping it most at IoU >= ``pos_thr`` whose best detection is the same
    one (index, -1: none) and their IoU. Per detection: its best IoU with a box no detection
    matched (``g_used`` false)."""
    n_g = g_box.shape[0]
    same_best = -np.ones(n_g, dtype=np.int64)
    same_iou = np.zeros(n_g)
    same_2nd = -np.ones(n_g)
    other = -np.ones(n_g, dtype=np.int64)
    other_iou = np.zeros(n_g)
    loc = -np.ones(n_g, dtype=np.int64)
    loc_iou = np.zeros(n_g)
    own_hi = -np.ones(n_g)
    twin = -np.ones(n_g, dtype=np.int64)
    twin_iou = np.zeros(n_g)
    free_iou = np.zeros(d_box.shape[0])
    for i in range(g_start.shape[0]):
        gs, ge, ds, de = g_start[i], g_end[i], d_start[i], d_end[i]
        for d in range(ds, de):
            closest, closest_iou = -1, 0.0
            for g in range(gs, ge):
                v = 0.0 if g_crowd[g] else _iou(d_box[d], g_box[g], False)
                if v <= 0:
                    continue
                if not g_used[g] and v > free_iou[d]:
                    free_iou[d] = v
                if v >= bg_thr and g_cls[g] == d_cls[d] and d_score[d] > own_hi[g]:
                    own_hi[g] = d_score[d]
                if g_cls[g] == d_cls[d]:
                    if v >= pos_thr and same_best[g] == -1:
                        same_best[g], same_iou[g] = d, v
                    elif v >= pos_thr and d_score[d] > same_2nd[g]:
                        same_2nd[g] = d_score[d]
                    if not g_used[g] and v > closest_iou:
                        closest, closest_iou = g, v
                elif v >= pos_thr and other[g] == -1:
                    other[g], other_iou[g] = d, v
            if closest > -1 and not d_tp[d] and bg_thr <= closest_iou < pos_thr and loc[closest] == -1:
                loc[closest], loc_iou[closest] = d, closest_iou
        for g in range(gs, ge):  # a best detection is of its box's class, and crowd boxes have none
            for h in range(gs, ge):
                if h != g and same_best[g] > -1 and same_best[h] == same_best[g]:
                    v = _iou(g_box[g], g_box[h], False)
                    if v >= pos_thr and v > twin_iou[g]:
                        twin[g], twin_iou[g] = h, v
    return same_best, same_iou, same_2nd, other, other_iou, loc, loc_iou, own_hi, twin, twin_iou, free_iou


@njit(cache=True)
def confusion_images(g_start, g_end, d_start, d_end, g_box, g_idx, g_crowd, d_box, d_idx, keep, iou_thr, n_cls):
    """The matching of :func:`detfold.analyze.thresholds.confusion_matrix` and its results, per
    image (detections by score descending; ``g_idx`` / ``d_idx``: class index 0..n-1; ties
    across classes: detection, then box, in order)."""
    cm = np.zeros((n_cls + 1, n_cls + 1), dtype=np.int64)
    per_image = np.zeros((g_start.shape[0], 3), dtype=np.int64)
    for i in range(g_start.shape[0]):
        gs, ge, ds, de = g_start[i], g_end[i], d_start[i], d_end[i]
        g_free = ~g_crowd[gs:ge]
        d_free = keep[ds:de].copy()
        ious = np.zeros((de - ds, ge - gs))
        for x in range(de - ds):
            for y in range(ge - gs):
                if d_free[x] and g_free[y]:
                    ious[x, y] = _iou(d_box[ds + x], g_box[gs + y], False)
        for x in range(de - ds):
            if d_free[x]:
                y, best = _first_max(ious[x], g_free & (g_idx[gs:ge] == d_idx[ds + x]))
                if best >= iou_thr:
                    g_free[y], d_free[x] = False, False
                    cm[g_idx[gs + y], d_idx[ds + x]] += 1
        pairs = np.flatnonzero((d_free.reshape(-1, 1) & g_free.reshape(1, -1) & (ious >= iou_thr)).ravel())
        for k in pairs[np.argsort(-ious.ravel()[pairs], kind="mergesort")]:  # by IoU, then in order
            x, y = k // (ge - gs), k % (ge - gs)
            if d_free[x] and g_free[y]:
                d_free[x], g_free[y] = False, False
                cm[g_idx[gs + y], d_idx[ds + x]] += 1
                per_image[i, 2] += 1
        for g in np.flatnonzero(g_free) + gs:
            cm[g_idx[g], n_cls] += 1
        for d in np.flatnonzero(d_free) + ds:
            cm[n_cls, d_idx[d]] += 1
        per_image[i, 0], per_image[i, 1] = d_free.sum(), g_free.sum()
    return cm, per_image


@njit(cache=True)
def first_per_object(cand, d_img, d_box, iou_thr):
    """``cand``: detections sorted by image, then score descending. True for each that overlaps
    no earlier kept one of its image at IoU >= ``iou_thr`` (one candidate per object)."""
    keep = np.ones(cand.shape[0], dtype=np.bool_)
    start = 0
    for i in range(cand.shape[0]):
        if i > 0 and d_img[cand[i]] != d_img[cand[i - 1]]:
            start = i
        for j in range(start, i):
            if keep[j] and _iou(d_box[cand[j]], d_box[cand[i]], False) >= iou_thr:
                keep[i] = False
                break
    return keep
