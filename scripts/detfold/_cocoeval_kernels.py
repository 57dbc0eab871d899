"""Compiled (numba) kernel of :mod:`detfold.cocoeval`: greedy matching of detections to
ground truth per (image, category) group, with pycocotools' exact rules."""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def match_groups(gt_start, gt_end, dt_start, dt_end, gt_box, gt_area, gt_crowd, dt_box, dt_area, iou_thrs, area_rng):  # type: ignore[no-untyped-def]
    """Greedy matching of every (image, category) group; returns matched and ignored flags of
    every detection, both [A, T, n_dt]."""
    n_area, n_thr, n_dt = area_rng.shape[0], iou_thrs.shape[0], dt_box.shape[0]
    matched = np.zeros((n_area, n_thr, n_dt), dtype=np.bool_)
    ignored = np.zeros((n_area, n_thr, n_dt), dtype=np.bool_)
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
                        ignored[a, t, ds + d] = dt_area[ds + d] < lo or dt_area[ds + d] > hi
                    else:
                        matched[a, t, ds + d] = True
                        ignored[a, t, ds + d] = gt_ignore[order[m]]
                        taken[m] = True
    return matched, ignored
