"""Per-class score thresholds: the best F1 at IoU 0.5 under COCO's matching (crowd boxes
ignored, 100 detections per image and class), how thresholds chosen elsewhere do on other
images, and the confusion matrix of classes + background at them. Scores are fractions;
classes by name; boxes COCO ``xywh_abs``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detfold.analyze.tide import POS_IOU, Arrays, prepare
from detfold.core.coco import Detections


def _counts(tp: int, fp: int, n: int) -> dict[str, Any]:
    """Precision, recall, f1, tp, fp, fn of ``tp`` true and ``fp`` false positives against ``n`` boxes."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / n if n else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp, "fp": fp, "fn": n - tp}


def _matches(gt: Mapping[str, Any], prediction_sets: Sequence[Detections]) -> tuple[list[str], list[tuple]]:
    """Class names (sorted ids) and per prediction set COCO's matching at IoU 0.5: (class index,
    score, true positive) of each detection it does not ignore, and the boxes per class."""
    from detfold.evaluate.cocoeval import BboxEvaluator

    ev = BboxEvaluator(dict(gt))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    out = []
    for predictions in prediction_sets:
        matched = ev.match_results(predictions)
        kept = ~(matched.ignored & 1).astype(bool)
        hit = (matched.matched & 1).astype(bool)
        out.append((matched.cat[kept], matched.score[kept], hit[kept], matched.gt_counts.sum(0).astype(np.int64)))
    return [names[c] for c in ev.cat_ids], out


def best_f1_thresholds(gt: Mapping[str, Any], predictions: Detections) -> dict[str, dict[str, Any]]:
    """Per class (name): the score threshold with the best F1 at IoU 0.5 (COCO's matching), with
    precision, recall, f1, tp, fp, fn there. ``score_thr`` None: no detection of the class is a
    true positive (every threshold gives F1 0: the class is best left out)."""
    names, [(cat, scores, hits, npos)] = _matches(gt, [predictions])
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        sel = cat == k
        order = np.argsort(-scores[sel], kind="stable")
        score, hit, n = scores[sel][order], hits[sel][order], int(npos[k])
        if not (len(score) and n and hit.any()):
            out[name] = {"score_thr": None, **_counts(0, 0, n)}
            continue
        tp, fp = np.cumsum(hit), np.cumsum(~hit)
        p, r = tp / (tp + fp), tp / n
        f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        i = int(np.argmax(np.where(np.r_[score[1:] != score[:-1], True], f1, -1.0)))  # a threshold keeps every tie
        out[name] = {"score_thr": float(score[i]), **_counts(int(tp[i]), int(fp[i]), n)}
    return out


def scores_at_thresholds(
    gt: Mapping[str, Any], prediction_sets: Sequence[Detections], score_thr: Mapping[str, float | None]
) -> dict[str, dict[str, Any]]:
    """Per class (name): precision, recall, f1, tp, fp, fn of the detections at or above
    ``score_thr[name]`` (thresholds chosen elsewhere: measured here on other images) under the
    same matching as :func:`best_f1_thresholds`; with several prediction sets of the same images
    (each fold model's), their counts are summed: how one such model does at the threshold."""
    names, sets = _matches(gt, prediction_sets)
    cls_thr = np.array([np.inf if score_thr.get(n) is None else score_thr[n] for n in names])
    cat, score, hit = (np.concatenate([s[i] for s in sets]) for i in range(3))  # the sets pooled
    sel = score >= cls_thr[cat]
    tp = np.bincount(cat[sel & hit], minlength=len(names))
    fp = np.bincount(cat[sel & ~hit], minlength=len(names))
    npos = np.sum([s[3] for s in sets], axis=0)
    return {name: _counts(int(tp[k]), int(fp[k]), int(npos[k])) for k, name in enumerate(names)}


def kept_detections(arrays: Arrays, score_thr: Mapping[str, float | None] | float) -> np.ndarray:
    """Per detection of ``arrays``: at or above its class's ``score_thr`` (by class name; a float
    for all classes; None: the class is left out)."""
    thr = {n: score_thr for n in arrays.names.values()} if isinstance(score_thr, float | int) else dict(score_thr)
    by_id = {c: np.inf if (t := thr.get(n)) is None else float(t) for c, n in arrays.names.items()}
    return arrays.d_score >= np.array([by_id[c] for c in arrays.d_cls.tolist()], dtype=np.float64)


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
