"""Per-class score thresholds: the best F1 at IoU 0.5 under COCO's matching (crowd boxes
ignored, 100 detections per image and class), and how thresholds chosen elsewhere do on other
images. Scores are fractions; classes by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detfold.analyze.tide import Arrays
from detfold.core.coco import Detections

#: a class that no threshold serves (no detection of it is a true positive)
_LEFT_OUT = {"score_thr": None, "precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0}


def _best_f1(score: np.ndarray, hit: np.ndarray, n: int) -> dict[str, Any]:
    """The best-F1 point of one class's detections (``score`` descending, ``hit`` true
    positives) against ``n`` boxes; a threshold keeps every tie."""
    if not (len(score) and n and hit.any()):
        return {**_LEFT_OUT, "fn": n}
    tp = np.cumsum(hit)
    fp = np.cumsum(~hit)
    last = np.r_[score[1:] != score[:-1], True]
    p, r = tp / (tp + fp), tp / n
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    f1 = np.where(last, f1, -1.0)
    i = int(np.argmax(f1))
    return {
        "score_thr": float(score[i]),
        "precision": float(p[i]),
        "recall": float(r[i]),
        "f1": float(f1[i]),
        "tp": int(tp[i]),
        "fp": int(fp[i]),
        "fn": n - int(tp[i]),
    }


def best_f1_thresholds(gt: Mapping[str, Any], predictions: Detections) -> dict[str, dict[str, Any]]:
    """Per class (name): the score threshold with the best F1 at IoU 0.5 (COCO's matching), with
    precision, recall, f1, tp, fp, fn there. ``score_thr`` None: no detection of the class is a
    true positive (every threshold gives F1 0: the class is best left out)."""
    from detfold.evaluate.cocoeval import BboxEvaluator

    ev = BboxEvaluator(dict(gt))
    matched = ev.match_results(predictions)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    npos = matched.gt_counts.sum(0)
    hit = (matched.matched & 1).astype(bool)
    ignored = (matched.ignored & 1).astype(bool)
    out: dict[str, dict[str, Any]] = {}
    for k, cat_id in enumerate(ev.cat_ids):
        sel = (matched.cat == k) & ~ignored
        score = matched.score[sel]
        order = np.argsort(-score, kind="stable")
        out[names[cat_id]] = _best_f1(score[order], hit[sel][order], int(npos[k]))
    return out


def scores_at_thresholds(
    gt: Mapping[str, Any],
    prediction_sets: Sequence[Detections],
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
        matched = ev.match_results(predictions)
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


def kept_detections(gt: Mapping[str, Any], arrays: Arrays, score_thr: Mapping[str, float | None] | float) -> np.ndarray:
    """Per detection of ``arrays``: at or above its class's ``score_thr`` (by class name; a float
    for all classes; None: the class is left out)."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    thr = {n: score_thr for n in names.values()} if isinstance(score_thr, float | int) else dict(score_thr)
    by_id = {c: np.inf if (t := thr.get(n)) is None else float(t) for c, n in names.items()}
    cls_thr = np.array([by_id[c] for c in arrays.d_cls.tolist()], dtype=np.float64)
    return arrays.d_score >= cls_thr
