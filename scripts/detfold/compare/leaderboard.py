"""The leaderboard: models scored on the same images, with paired bootstrap differences to the
leader. Every model's out-of-fold predictions on one scope of images (the val images of the
folds all models trained; the pooled OOF images of the models that trained every fold) are
matched once; one set of bootstrap resamples of the images scores them all, so a model's
difference to the leader is measured resample by resample on the same images. That difference's
interval, not the overlap of two separate intervals, says whether the lead is real.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from detfold.core.coco import Detections
from detfold.evaluate.stats import bootstrap_counts, bootstrap_scores, interval

METRICS = ("mAP", "mAP50")  #: the columns of :meth:`detfold.evaluate.cocoeval.Matched.scores`


def paired_scores(gt: dict[str, Any], predictions: Mapping[str, Detections], samples: int, seed: int) -> dict[str, Any]:
    """Each model's (mAP, mAP50) on all of ``gt``'s images (``point``) and on the same
    ``samples`` bootstrap resamples of them (``boot``, [samples, 2]), and the resamples' image
    counts (``counts``): the image order is ``gt``'s, so the same seed and images give the same
    resamples as the pooled OOF intervals of ``results/eval``."""
    from detfold.evaluate.cocoeval import BboxEvaluator

    evaluator = BboxEvaluator(gt)
    counts = bootstrap_counts(len(gt["images"]), samples, seed)
    point, boot = {}, {}
    for name, detections in predictions.items():
        matched = evaluator.match_results(detections)
        point[name] = np.array(matched.scores())
        boot[name] = bootstrap_scores(matched, counts)
    return {"point": point, "boot": boot, "counts": counts}


def leaderboard_rows(scope: str, scores: Mapping[str, Any], metric: str) -> list[dict[str, Any]]:
    """One row per model of ``scope`` (its name, e.g. "fold 0"), best ``metric`` first (ties by
    name): point scores with 95 % intervals, the paired difference to the leader with its
    interval, and whether that interval leaves out 0 (the model can be told apart from it)."""
    col = METRICS.index(metric)
    names = sorted(scores["point"], key=lambda n: (-scores["point"][n][col], n))
    leader = names[0]
    rows = []
    for rank, name in enumerate(names, start=1):
        point, boot = scores["point"][name], scores["boot"][name]
        diff = boot - scores["boot"][leader]
        row: dict[str, Any] = {"scope": scope, "rank": rank, "model": name}
        for i, key in enumerate(METRICS):
            lo, hi = interval(boot[:, i])
            dlo, dhi = _difference_interval(diff[:, i])
            row |= {key: round(float(point[i]), 6), f"{key}_lo": lo, f"{key}_hi": hi}
            row |= {f"{key}_diff": round(float(point[i] - scores["point"][leader][i]), 6)}
            row |= {f"{key}_diff_lo": dlo, f"{key}_diff_hi": dhi}
        row["distinct_from_leader"] = bool(row[f"{metric}_diff_hi"] < 0 or row[f"{metric}_diff_lo"] > 0)
        rows.append(row)
    return rows


def _difference_interval(diff: np.ndarray) -> list[float]:
    """The 95 % percentile interval of paired differences (which may be -1 or less: not the
    "undefined" marker of one score), rounded to 1e-6."""
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return [round(float(lo), 6), round(float(hi), 6)]
