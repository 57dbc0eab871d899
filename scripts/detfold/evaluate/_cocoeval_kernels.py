"""Compiled (numba) kernels of :mod:`detfold.evaluate.cocoeval`: greedy matching of detections to
ground truth per (image, category) group, and the precision of matched detections on any
weighting of the images, with pycocotools' exact rules."""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def match_groups(gt_start, gt_end, dt_start, dt_end, gt_box, gt_area, gt_crowd, dt_box, dt_area, iou_thrs, area_rng):  # type: ignore[no-untyped-def]
    """Greedy matching of every (image, category) group; returns the matched and ignored flags
    of every detection as bit masks [A, n_dt] (bit t: at IoU threshold t; at most 32)."""
    n_area, n_thr, n_dt = area_rng.shape[0], iou_thrs.shape[0], dt_box.shape[0]
    matched = np.zeros((n_area, n_dt), dtype=np.uint32)
    ignored = np.zeros((n_area, n_dt), dtype=np.uint32)
    for grp in range(gt_start.shape[0]):
        gs, ge, ds, de = gt_start[grp], gt_end[grp], dt_start[grp], dt_end[grp]
        n_g, n_d = ge - gs, de - ds
        if n_d == 0:
            continue
        ious = np.zeros((n_d, n_g))
        for g in range(n_g):
            gx, gy, gw, gh = gt_box[gs + g, 0], gt_box[gs + g, 1], gt_box[gs + g, 2], gt_box[gs + g, 3]
            crowd = gt_crowd[gs + g]
            ga = gw * gh
            for d in range(n_d):
                dx, dy, dw, dh = dt_box[ds + d, 0], dt_box[ds + d, 1], dt_box[ds + d, 2], dt_box[ds + d, 3]
                da = dw * dh
                w = min(dw + dx, gw + gx) - max(dx, gx)
                if w <= 0:
                    continue
                h = min(dh + dy, gh + gy) - max(dy, gy)
                if h <= 0:
                    continue
                inter = w * h
                union = da if crowd else da + ga - inter
                ious[d, g] = inter / union
        gt_ignore = np.zeros(n_g, dtype=np.bool_)
        order = np.empty(n_g, dtype=np.int64)
        taken = np.zeros(n_g, dtype=np.bool_)
        for a in range(n_area):
            lo, hi = area_rng[a, 0], area_rng[a, 1]
            for g in range(n_g):
                area = gt_area[gs + g]
                gt_ignore[g] = gt_crowd[gs + g] or area < lo or area > hi
            k = 0
            for flag in (False, True):  # non-ignored ground truth first, stable
                for g in range(n_g):
                    if gt_ignore[g] == flag:
                        order[k] = g
                        k += 1
            for t in range(n_thr):
                taken[:] = False
                for d in range(n_d):
                    best_iou = min(iou_thrs[t], 1 - 1e-10)
                    m = -1
                    for jj in range(n_g):
                        j = order[jj]
                        if taken[jj] and not gt_crowd[gs + j]:
                            continue
                        if m > -1 and not gt_ignore[order[m]] and gt_ignore[j]:
                            break
                        if ious[d, j] < best_iou:
                            continue
                        best_iou = ious[d, j]
                        m = jj
                    if m == -1:
                        if dt_area[ds + d] < lo or dt_area[ds + d] > hi:
                            ignored[a, ds + d] |= 1 << t
                    else:
                        matched[a, ds + d] |= 1 << t
                        if gt_ignore[order[m]]:
                            ignored[a, ds + d] |= 1 << t
                        taken[m] = True
    return matched, ignored


@njit(cache=True, nogil=True)
def accumulate_weighted(cat_start, det_img, matched, ignored, image_weights, n_thr, npig, rec_thrs):  # type: ignore[no-untyped-def]
    """pycocotools' accumulate (one area range, every detection within the limit) of detections
    whose image is counted ``image_weights[img]`` times (0: left out; bootstrap counts): the
    numbers of the detections repeated that often, without making the copies. Detections come
    class by class (``cat_start[k]:cat_start[k + 1]``), each class by score descending
    (stable); ``matched``/``ignored`` are the bit masks of :func:`match_groups` (bit t: IoU
    threshold t); ``npig`` [K] counts the weighted ground truth; returns precision [T, R, K]
    (-1 where a class has no ground truth).

    Recall only grows at a true positive, and from one true positive to the next precision
    falls (or stays, at an ignored detection), so pycocotools' running maximum from the end
    and its recall-threshold lookup need the values at the true positives only: the same
    numbers (same float operations), without a division per detection."""
    n_cat, n_rec = npig.shape[0], rec_thrs.shape[0]
    precision = -np.ones((n_thr, n_rec, n_cat))
    most = 1 if npig.size == 0 else max(1, npig.max())
    pr = np.empty((n_thr, most))  # recall at the n-th true positive is n / n_pos: not stored
    tp, fp = np.empty(n_thr, dtype=np.int64), np.empty(n_thr, dtype=np.int64)
    first_at = np.empty(n_rec, dtype=np.int64)
    eps = np.spacing(1.0)
    for k in range(n_cat):
        n_pos = npig[k]
        if n_pos == 0:
            continue
        tp[:] = 0
        fp[:] = 0
        fp_all = 0
        for j in range(cat_start[k], cat_start[k + 1]):
            m, ig = matched[j], ignored[j]
            if m == 0 and ig == 0:  # a false positive at every threshold (most detections)
                fp_all += image_weights[det_img[j]]
                continue
            for _ in range(image_weights[det_img[j]]):
                for t in range(n_thr):
                    if ig >> t & 1:
                        continue
                    if m >> t & 1:
                        n = tp[t] + 1
                        pr[t, n - 1] = float(n) / (float(fp[t] + fp_all) + float(n) + eps)
                        tp[t] = n
                    else:
                        fp[t] += 1
        # the first true positive reaching each recall point (the recall accumulate stores is
        # (i + 1) / n_pos): the same for every threshold
        i = 0
        for r in range(n_rec):
            while i < most and float(i + 1) / n_pos < rec_thrs[r]:
                i += 1
            first_at[r] = i
        for t in range(n_thr):
            n = tp[t]
            best, i = 0.0, n  # precision made non-increasing: the best at or after each point
            for r in range(n_rec - 1, -1, -1):
                if first_at[r] >= n:
                    precision[t, r, k] = 0.0
                    continue
                while i > first_at[r]:
                    i -= 1
                    best = max(best, pr[t, i])
                precision[t, r, k] = best
    return precision
