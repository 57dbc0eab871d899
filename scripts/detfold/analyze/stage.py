"""Stage analyze (workflow/analyze.smk): what its rule scripts call (read inputs, call the library, write outputs)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from detfold.core.coco import Coco, Detections, load_coco, read_detections

log = logging.getLogger(__name__)


def run_analyze(
    name: str,
    val_jsons: Sequence[str],
    oof_preds: Sequence[Sequence[str]],
    blend_json: str,
    blend_preds: Sequence[Sequence[str]],
    images_dir: str,
    out_dir: str,
    gallery_dir: str,
    fusion: dict[str, Any],
) -> None:
    """Error analysis and label review (:func:`detfold.analyze.analysis.write_analysis`) of the
    pooled out-of-fold predictions of one model or of several fused (the OOF ensemble).

    ``oof_preds`` / ``blend_preds``: per member (a model), its K fold files (fold f's OOF
    predictions cover ``val_jsons[f]``); several members are fused with ``fusion`` (the untuned
    model fusion of config.yaml, ``max_per_img`` included: nothing here is chosen on these
    images). The blend split (no fold model trained on it) is the holdout, so that every
    training image is reviewed."""
    from detfold.analyze import analysis
    from detfold.ensemble.fusion import fuse_members, fusion_params

    params = {k: v for k, v in fusion_params(fusion).items() if k != "weights"}  # untuned: equal

    def fused(gt: Coco, members: list[Detections]) -> Detections:
        return fuse_members(members, gt.images, params, int(fusion["max_per_img"]))

    parts = []
    for fold, val_json in enumerate(val_jsons):
        gt = load_coco(val_json)
        parts.append((gt.data, fused(gt, [read_detections(gt, files[fold]) for files in oof_preds])))
        log.info("%s: fold %d: %d images, %d predictions", name, fold, len(gt.images), len(parts[-1][1]))
    blend = load_coco(blend_json)
    member_folds = [[read_detections(blend, path) for path in files] for files in blend_preds]
    # the thresholds are measured on what they were chosen on: per fold, the members fused
    holdout_sets = [fused(blend, [m[fold] for m in member_folds]) for fold in range(len(val_jsons))]
    # the review looks at the best prediction there is: every fold model of every member fused
    holdout = (blend.data, fused(blend, [preds for sets in member_folds for preds in sets]))
    log.info("%s: blend split: %d images, %d fused predictions", name, len(blend.images), len(holdout[1]))
    pooled_gt, pooled = analysis.merge_splits(parts)
    analysis.write_analysis(
        pooled_gt, pooled, out_dir, images_dir, holdout=holdout, holdout_sets=holdout_sets, gallery_dir=gallery_dir
    )
