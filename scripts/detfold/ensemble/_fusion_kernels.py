"""Compiled (numba) kernels of :mod:`detfold.ensemble.fusion`: one pass over many groups of boxes.

Every kernel takes boxes sorted into groups (one group per image and label, or per image for
class-agnostic fusion) given by ``starts`` (group g is rows starts[g]:starts[g + 1]), xyxy_norm
coordinates and weighted scores sorted descending within each group.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def sort_groups(group, neg_score):
    """Row order by (group, -score, row index) and the start of each group (plus the end)."""
    n = group.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    low, high = group.min(), group.max()
    if high - low <= 4 * n + 1024:  # counting sort: O(n), stable, rows of a group in index order
        counts = np.zeros(high - low + 2, dtype=np.int64)
        for r in range(n):
            counts[group[r] - low + 1] += 1
        for k in range(1, counts.shape[0]):
            counts[k] += counts[k - 1]
        order = np.empty(n, dtype=np.int64)
        for r in range(n):
            key = group[r] - low
            order[counts[key]] = r
            counts[key] += 1
    else:  # sparse keys: quicksort; rows of a group are put in (-score, index) order below
        order = np.argsort(group)
    starts = np.empty(n + 1, dtype=np.int64)
    n_groups = 0
    i = 0
    while i < n:
        j = i + 1
        while j < n and group[order[j]] == group[order[i]]:
            j += 1
        sub = np.sort(order[i:j])
        order[i:j] = sub[np.argsort(neg_score[sub], kind="mergesort")]
        starts[n_groups] = i
        n_groups += 1
        i = j
    starts[n_groups] = n
    return order, starts[: n_groups + 1]


@njit(cache=True, nogil=True)
def order_within_images(images, neg_score, max_per_img):
    """Order of rows already grouped by (non-decreasing) image: by image, then by -score,
    ties in row order (a stable sort within each image); the first ``max_per_img`` rows of
    each image (all when negative). Where an image has more rows, only those that make its
    first ``max_per_img`` are sorted (selected around the cut value, O(n))."""
    n = images.shape[0]
    order = np.empty(n, dtype=np.int64)
    sel = np.empty(max(max_per_img, 0), dtype=np.int64)  # the rows selected, and their values
    picked = np.empty(max(max_per_img, 0))
    k = 0
    i = 0
    while i < n:
        j = i + 1
        while j < n and images[j] == images[i]:
            j += 1
        m = j - i
        take = m if max_per_img < 0 else min(m, max_per_img)
        if m == 1:
            order[k] = i
        elif take < m:
            seg = neg_score[i:j]
            cut = np.partition(seg, take - 1)[take - 1]  # the take-th smallest value
            ties = take  # rows at the cut value kept, the first ones
            for r in range(m):
                if seg[r] < cut:
                    ties -= 1
            c = 0
            for r in range(m):
                if seg[r] < cut or (seg[r] == cut and ties > 0):
                    if seg[r] == cut:
                        ties -= 1
                    sel[c] = r
                    picked[c] = seg[r]
                    c += 1
            by_value = np.argsort(picked[:take], kind="mergesort")
            for q in range(take):
                order[k + q] = i + sel[by_value[q]]
        else:
            order[k : k + take] = i + np.argsort(neg_score[i:j], kind="mergesort")
        k += take
        i = j
    return order[:k]


@njit(cache=True, nogil=True)
def to_xywh_abs(boxes, images, wh, scores, box_decimals, score_decimals):
    """Fused boxes (xyxy_norm) of images ``images`` (rows of ``wh``: width, height in px) as
    xywh_abs rounded to ``box_decimals``, and scores rounded to ``score_decimals``: in one
    pass what numpy computes with temporaries (x1 * w, then (x2 * w) - (x1 * w); rounding as
    ``np.round``: rint(x * 10**d) / 10**d), bit for bit."""
    n = boxes.shape[0]
    xywh = np.empty((n, 4))
    rounded = np.empty(n)
    fb, fs = 10.0**box_decimals, 10.0**score_decimals
    for r in range(n):
        w, h = wh[images[r], 0], wh[images[r], 1]
        x1, y1, x2, y2 = boxes[r, 0] * w, boxes[r, 1] * h, boxes[r, 2] * w, boxes[r, 3] * h
        xywh[r, 0] = np.rint(x1 * fb) / fb
        xywh[r, 1] = np.rint(y1 * fb) / fb
        xywh[r, 2] = np.rint((x2 - x1) * fb) / fb
        xywh[r, 3] = np.rint((y2 - y1) * fb) / fb
        rounded[r] = np.rint(scores[r] * fs) / fs
    return xywh, rounded


@njit(cache=True, inline="always")
def _iou(a0, a1, a2, a3, b0, b1, b2, b3):
    inter = max(min(a2, b2) - max(a0, b0), 0.0) * max(min(a3, b3) - max(a1, b1), 0.0)
    union = (a2 - a0) * (a3 - a1) + (b2 - b0) * (b3 - b1) - inter
    return inter / union if union > 0 else 0.0


@njit(cache=True, inline="always")
def _iou_rows(boxes, a, b):
    """:func:`_iou` of rows ``a`` and ``b`` of ``boxes``."""
    return _iou(boxes[a, 0], boxes[a, 1], boxes[a, 2], boxes[a, 3], boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3])


@njit(cache=True, nogil=True)
def wbf_groups(order, starts, boxes, scores, models, weights, n_models, iou_thr, allows_overflow):
    """WBF over groups of boxes sorted by score (descending) within each group.

    Returns, per output box: coords, its score under each conf_type [k, 4] (avg, max,
    box_and_model_avg, absent_model_aware_avg: the clusters do not depend on it, so a search
    over conf_type clusters once), group and the index of its first (best) member."""
    n = boxes.shape[0]
    out_box = np.zeros((n, 4))
    out_score = np.zeros((n, 4))
    out_group = np.zeros(n, dtype=np.int64)
    out_first = np.zeros(n, dtype=np.int64)
    largest = 0
    for g in range(starts.shape[0] - 1):
        largest = max(largest, starts[g + 1] - starts[g])
    # accumulators of the current group's clusters (index c - c0), reset per group
    sum_xy = np.zeros((largest, 4))
    sum_s = np.zeros(largest)
    max_s = np.zeros(largest)
    count = np.zeros(largest, dtype=np.int64)
    w_in = np.zeros(largest)
    member_models = np.zeros((largest, n_models), dtype=np.bool_)
    k = 0
    w_sum_all = weights.sum()
    w_max = weights.max()
    for g in range(starts.shape[0] - 1):
        s, e = starts[g], starts[g + 1]
        c0 = k  # clusters of this group are out[c0:k]
        for i in range(e - s):
            sum_xy[i, :] = 0.0
            sum_s[i] = 0.0
            max_s[i] = 0.0
            count[i] = 0
            w_in[i] = 0.0
            member_models[i, :] = False
        for jj in range(s, e):
            j = order[jj]
            x1, y1, x2, y2 = boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3]
            best, best_iou = -1, iou_thr
            for c in range(c0, k):
                iou = _iou(out_box[c, 0], out_box[c, 1], out_box[c, 2], out_box[c, 3], x1, y1, x2, y2)
                if iou > best_iou:
                    best, best_iou = c, iou
            if best < 0:
                best = k
                out_group[k] = g
                out_first[k] = j
                k += 1
            i = best - c0
            sc = scores[j]
            sum_xy[i, 0] += sc * x1
            sum_xy[i, 1] += sc * y1
            sum_xy[i, 2] += sc * x2
            sum_xy[i, 3] += sc * y2
            sum_s[i] += sc
            max_s[i] = max(max_s[i], sc)
            count[i] += 1
            w_in[i] += weights[models[j]]
            member_models[i, models[j]] = True
            if sum_s[i] > 0:  # score-weighted mean; a cluster of zero scores only keeps its first box
                for q in range(4):
                    out_box[best, q] = sum_xy[i, q] / sum_s[i]
            elif count[i] == 1:
                out_box[best, 0], out_box[best, 1], out_box[best, 2], out_box[best, 3] = x1, y1, x2, y2
        for c in range(c0, k):
            i = c - c0
            conf = sum_s[i] / count[i]
            n_eff = count[i] if allows_overflow else min(n_models, count[i])
            out_score[c, 0] = conf * n_eff / w_sum_all  # avg
            out_score[c, 1] = max_s[i] / w_max  # max
            present, absent = 0.0, 0.0  # summed in model order, as before
            for m in range(n_models):
                if member_models[i, m]:
                    present += weights[m]
                else:
                    absent += weights[m]
            out_score[c, 2] = conf * count[i] / w_in[i] * present / w_sum_all  # box_and_model_avg
            out_score[c, 3] = conf * count[i] / (w_in[i] + absent)  # absent_model_aware_avg
    return out_box[:k], out_score[:k], out_group[:k], out_first[:k]


@njit(cache=True, nogil=True)
def nmw_groups(order, starts, boxes, scores, iou_thr):
    """Non-maximum weighted: clusters around their best box; coords weighted by score x IoU."""
    n = boxes.shape[0]
    out_box = np.zeros((n, 4))
    out_score = np.zeros(n)
    out_group = np.zeros(n, dtype=np.int64)
    out_first = np.zeros(n, dtype=np.int64)
    sum_xy = np.zeros((n, 4))
    sum_w = np.zeros(n)
    k = 0
    for g in range(starts.shape[0] - 1):
        s, e = starts[g], starts[g + 1]
        c0 = k
        for jj in range(s, e):
            j = order[jj]
            best, best_iou = -1, iou_thr
            for c in range(c0, k):
                f = out_first[c]
                iou = _iou_rows(boxes, f, j)
                if iou > best_iou:
                    best, best_iou = c, iou
            if best < 0:
                best = k
                out_group[k] = g
                out_first[k] = j
                out_score[k] = scores[j]
                k += 1
            f = out_first[best]
            wgt = scores[j] * _iou_rows(boxes, j, f)
            for q in range(4):
                sum_xy[best, q] += wgt * boxes[j, q]
            sum_w[best] += wgt
        for c in range(c0, k):
            f = out_first[c]
            for q in range(4):  # weighted mean; weights all zero (zero scores or IoU): the first box
                out_box[c, q] = sum_xy[c, q] / sum_w[c] if sum_w[c] > 0 else boxes[f, q]
    return out_box[:k], out_score[:k], out_group[:k], out_first[:k]


@njit(cache=True, nogil=True)
def nms_groups(order, starts, boxes, iou_thr):
    """Hard NMS per group, greedy in the group's (score descending) order: a box is kept unless
    it overlaps an already kept box by more than ``iou_thr``. Returns the kept input indices in
    that order: what :func:`soft_nms_groups` with method 3 returns, without its O(m^2) passes
    over the suppressed boxes."""
    n = boxes.shape[0]
    keep = np.empty(n, dtype=np.int64)
    suppressed = np.zeros(n, dtype=np.bool_)  # by position in ``order``
    k = 0
    for g in range(starts.shape[0] - 1):
        s, e = starts[g], starts[g + 1]
        for ii in range(s, e):
            if suppressed[ii]:
                continue
            a = order[ii]
            keep[k] = a
            k += 1
            for jj in range(ii + 1, e):
                if suppressed[jj]:
                    continue
                b = order[jj]
                ovr = _iou_rows(boxes, a, b)
                if ovr > iou_thr:
                    suppressed[jj] = True
    return keep[:k]


@njit(cache=True, nogil=True)
def soft_nms_groups(order, starts, boxes, scores, iou_thr, sigma, thresh, method_code):
    """Soft-NMS per group (method 1 linear, 2 gaussian, 3 hard NMS), boxes in input order.

    At each step the highest remaining (decayed) score is selected; the others decay by
    their IoU with it. Returns kept input indices in selection order and decayed scores."""
    n = boxes.shape[0]
    keep = np.zeros(n, dtype=np.int64)
    decayed = np.zeros(n)
    k = 0
    for g in range(starts.shape[0] - 1):
        s, e = starts[g], starts[g + 1]
        idx = order[s:e].copy()
        sc = scores[idx]
        m = e - s
        for i in range(m):
            best = i
            for j in range(i + 1, m):
                if sc[j] > sc[best]:
                    best = j
            if best != i:
                idx[i], idx[best] = idx[best], idx[i]
                sc[i], sc[best] = sc[best], sc[i]
            a = idx[i]
            for j in range(i + 1, m):
                b = idx[j]
                ovr = _iou_rows(boxes, a, b)
                if method_code == 1:
                    if ovr > iou_thr:
                        sc[j] *= 1.0 - ovr
                elif method_code == 2:
                    if ovr > 0.0:  # exp(0) = 1: boxes that do not overlap keep their score
                        sc[j] *= np.exp(-(ovr * ovr) / sigma)
                elif ovr > iou_thr:
                    sc[j] = -np.inf  # hard NMS: suppressed whatever its score
        for i in range(m):
            if sc[i] > thresh:
                keep[k] = idx[i]
                decayed[k] = sc[i]
                k += 1
    return keep[:k], decayed[:k]
