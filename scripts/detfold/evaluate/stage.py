"""Stage evaluate (workflow/evaluate.smk): what its rule scripts call (read inputs, call the library, write outputs)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from detfold.core.coco import Coco, Detections, is_labelled, load_coco, load_detections, pooled_dataset
from detfold.core.io import atomic_open, read_product, write_json
from detfold.evaluate.metrics import evaluate_coco, mean_std

log = logging.getLogger(__name__)


def run_evaluate(
    model: str,
    folds: Sequence[int],
    val_jsons: Sequence[str],
    oof_preds: Sequence[str],
    test_json: str | None,
    test_preds: Sequence[str],
    out: str,
    out_pr_curves: str | None,
    seed: int,
) -> None:
    """Per-fold OOF metrics of the ``folds`` the model trained (``val_jsons`` and ``oof_preds``
    theirs), mean +- std (ddof 1) over them, pooled OOF metrics with bootstrap 95 % intervals
    over the images (and per-class PR curves, also as CSV), and per-fold test metrics when there
    is a labelled test set (``test_preds``: by fold too, or none)."""
    per_fold, parts, gts = [], [], []
    for fold, val_json, pred_json in zip(folds, val_jsons, oof_preds, strict=True):
        gt = load_coco(val_json)
        preds, metrics = evaluate_file(gt, pred_json)
        per_fold.append({"fold": fold, **metrics})
        parts.append(preds)
        gts.append(gt.data)
    pooled_preds, pooled_gt = Detections.concat(parts), pooled_dataset(gts) if gts else {}
    result: dict[str, Any] = {"model": model, "folds": per_fold}
    result["cv"] = {name: mean_std([f[name] for f in per_fold]) for name in ("mAP", "mAP50")}
    pooled = evaluate_coco(Coco(pooled_gt, path="pooled OOF"), pooled_preds, "pooled OOF", pr_curves=True)
    if out_pr_curves:
        rows = [
            {"class": name, "recall": r, "precision_iou50": p50, "precision_iou50_95": pm}
            for name, c in pooled["per_class"].items()
            for r, p50, pm in zip(
                *(c["pr_curve"][k] for k in ("recall", "precision_iou50", "precision_iou50_95")), strict=True
            )
        ]
        with atomic_open(out_pr_curves) as handle:
            pd.DataFrame(rows).to_csv(handle, index=False, lineterminator="\n")
    pooled.update(_pooled_intervals(Coco(pooled_gt, path="pooled OOF"), pooled_preds, seed))
    result["pooled_oof"] = pooled
    test = load_coco(test_json, require_annotations=False) if test_json else None
    if test is not None and is_labelled(test) and test_preds:
        result["test"] = [
            {"fold": f, **evaluate_file(test, path)[1]} for f, path in zip(folds, test_preds, strict=True)
        ]
    write_json(out, result)
    log.info("%s: pooled OOF mAP %.4f, mAP50 %.4f", model, result["pooled_oof"]["mAP"], result["pooled_oof"]["mAP50"])


def evaluate_file(
    gt: Coco, pred_json: str, read: Callable[[str | Path], Any] = read_product
) -> tuple[Detections, dict[str, Any]]:
    """One predictions file checked (values, and ids against ``gt``) and scored
    (:func:`detfold.evaluate.metrics.evaluate_coco`): its detections and metrics. ``read``
    reads a file that does not decode, for the message: :func:`detfold.core.io.read_product`
    (a file an earlier job wrote: deleted when corrupt, so the next run redoes that job) or
    :func:`detfold.core.io.read_json` (a user's file)."""
    detections = load_detections(pred_json, read)
    return detections, evaluate_coco(gt, detections, pred_json)


def _pooled_intervals(gt: Coco, preds: Detections, seed: int) -> dict[str, Any]:
    """Bootstrap (over images, seeded) 95 % intervals of mAP and mAP50."""
    from detfold.evaluate import stats
    from detfold.evaluate.cocoeval import BboxEvaluator

    matched = BboxEvaluator(gt.data).match_results(preds)
    counts = stats.bootstrap_counts(len(gt.images), stats.BOOTSTRAP_SAMPLES, seed)
    boot = stats.bootstrap_scores(matched, counts)
    return {
        "mAP_ci95": stats.interval(boot[:, 0]),
        "mAP50_ci95": stats.interval(boot[:, 1]),
        "bootstrap": {"samples": stats.BOOTSTRAP_SAMPLES, "seed": seed, "over": "images"},
    }
