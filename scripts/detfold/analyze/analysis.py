"""Why a model fails and which labels look wrong, from predictions of images the model never saw
(the pooled out-of-fold predictions; any COCO results work), written as one folder:

- ``tide.json``: TIDE's error breakdown (:mod:`detfold.analyze.tide`);
- ``thresholds.json``: per class the score threshold of the best F1 at IoU 0.5, measured on
  other images too (:mod:`detfold.analyze.thresholds`);
- ``confusion.csv``: classes + background at those thresholds (:func:`detfold.analyze.thresholds.confusion_matrix`);
- ``review.csv``: label-review candidates in ``findings.csv`` columns (:mod:`detfold.analyze.review`);
- ``gallery/*.png``: the errors, the worst images and the candidates (:mod:`detfold.analyze.galleries`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detfold.analyze.review import REVIEW_EXTRA_FIELDS, review_candidates
from detfold.analyze.thresholds import best_f1_thresholds, confusion_matrix, kept_detections, scores_at_thresholds
from detfold.analyze.tide import POS_IOU, prepare, tide, tide_match
from detfold.audit.checks import FINDING_FIELDS
from detfold.core.coco import Detections
from detfold.core.io import atomic_open, write_json

log = logging.getLogger(__name__)

Split = tuple[Mapping[str, Any], Detections]  #: (COCO ground truth, predictions of its images)


def merge_splits(parts: Sequence[Split]) -> tuple[dict[str, Any], Detections]:
    """Several (ground truth, predictions) of one dataset's disjoint image sets as one."""
    gt = {
        **parts[0][0],
        "images": [im for g, _ in parts for im in g["images"]],
        "annotations": [a for g, _ in parts for a in g.get("annotations", [])],
    }
    return gt, Detections.concat([preds for _, preds in parts])


def _thresholds(
    gt: Mapping[str, Any],
    predictions: Detections,
    holdout: Split | None,
    holdout_sets: Sequence[Detections] | None,
) -> dict[str, Any]:
    """``thresholds.json``: the best-F1 thresholds chosen on ``gt``, and measured on the holdout."""
    per_class = best_f1_thresholds(gt, predictions)
    score_thr = {n: t["score_thr"] for n, t in per_class.items()}
    thresholds: dict[str, Any] = {
        "score_thr": score_thr,
        "iou_thr": POS_IOU,
        "chosen_on": f"{len(gt['images'])} images (best F1 per class)",
        "per_class": per_class,
    }
    if holdout is not None:
        sets = holdout_sets if holdout_sets is not None else [holdout[1]]
        thresholds["holdout"] = {
            "images": len(holdout[0]["images"]),
            "prediction_sets": len(sets),
            "per_class": scores_at_thresholds(holdout[0], sets, score_thr),
        }
    return thresholds


def _write_confusion(path: Path, names: Sequence[str], cm: np.ndarray) -> None:
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["true \\ predicted", *names])
        writer.writerows([name, *counts] for name, counts in zip(names, cm.tolist(), strict=True))


def _write_review(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=[*FINDING_FIELDS, *REVIEW_EXTRA_FIELDS], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()} for r in rows)


def write_analysis(
    gt: Mapping[str, Any],
    predictions: Detections,
    out_dir: str,
    images_dir: str | None = None,
    holdout: Split | None = None,
    holdout_sets: Sequence[Detections] | None = None,
    gallery_dir: str | None = None,
) -> dict[str, Any]:
    """The folder of the module docstring in ``out_dir``, each file written atomically; the
    galleries only with ``images_dir`` (in ``gallery_dir``, default ``out_dir/gallery``).
    ``holdout``: (ground truth, predictions) of other images of the dataset (the blend split),
    whose boxes join the review; the thresholds chosen on ``gt`` are measured there too (an
    honest estimate of their precision and recall), on ``holdout_sets`` (default: the holdout's
    predictions) with their counts summed: predictions of the kind the thresholds were chosen
    on (each fold model's, not their fusion, whose scores differ). Returns the TIDE result."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = prepare(gt, predictions)
    match = tide_match(arrays)
    result = tide(gt, predictions, match=match)
    thresholds = _thresholds(gt, predictions, holdout, holdout_sets)
    names, cm, per_image = confusion_matrix(gt, predictions, thresholds["score_thr"], arrays=arrays)
    review = (gt, predictions) if holdout is None else merge_splits([(gt, predictions), holdout])
    review_match = match if holdout is None else tide_match(prepare(*review))
    rows = review_candidates(*review, match=review_match)
    write_json(out / "tide.json", result)
    write_json(out / "thresholds.json", thresholds)
    _write_confusion(out / "confusion.csv", names, cm)
    _write_review(out / "review.csv", rows)
    if images_dir is not None:
        from detfold.analyze.galleries import write_galleries

        keep = kept_detections(arrays, thresholds["score_thr"])
        gallery = Path(gallery_dir) if gallery_dir else out / "gallery"
        write_galleries(match, keep, per_image, (review_match, rows), images_dir, gallery)
    log.info("analysis: TIDE mAP50 %.4f; %d review candidates; wrote %s", result["mAP"], len(rows), out)
    return result
