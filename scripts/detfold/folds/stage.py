"""Stage folds (workflow/folds.smk): what its rule scripts call (read inputs, call the library, write outputs)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from detfold.core.coco import Coco, load_coco, require_content, write_coco
from detfold.core.io import atomic_open, write_json
from detfold.folds import assign

log = logging.getLogger(__name__)


def run_split(
    annotations: str,
    k: int,
    seed: int,
    method: str,
    group_by: str | None,
    weights: dict[str, float],
    images: str | None,
    near_duplicate_distance: int,
    blend_share: float,
    out_table: str,
    out_balance: str | None = None,
    out_plot: str | None = None,
    out_summary: str | None = None,
    out_near_duplicates: str | None = None,
    out_blend: str | None = None,
) -> dict[str, Any]:
    """Assign folds; write the table and (the ``out_*`` paths given) the balance report, its
    plot and summary, the near-duplicate pairs and the blend split. ``group_by: auto`` keeps
    near-duplicate images in one fold.

    With ``blend_share`` > 0 a balanced share of the images is first set aside as the blend
    split (``out_blend``, a COCO file): no fold model trains on it, every fold model predicts it,
    and the ensembles are chosen there; the K folds split the other images (0: no blend split)."""
    coco = require_content(load_coco(annotations), "to split into folds and train on")
    groups, pairs = _groups(coco, group_by, images, near_duplicate_distance, bool(out_near_duplicates))
    balance_weights = assign.BalanceWeights(**weights)
    blend_ids: list[int] = []
    if blend_share:
        blend_ids = assign.split_blend(coco, blend_share, seed, method, groups, balance_weights)
        keep = ~np.isin(coco.image_ids, blend_ids)
        blend, coco, groups = coco.subset(blend_ids), coco.subset(np.array(coco.image_ids)[keep].tolist()), groups[keep]
        log.info(
            "blend split (share %s): %d images, %d boxes that no fold model trains on",
            blend_share,
            len(blend.images),
            len(blend.annotations),
        )
        if out_blend:
            write_coco(blend, out_blend)
    table = assign.assign_folds(coco, k=k, seed=seed, method=method, groups=groups, weights=balance_weights)
    summary = {
        "method": method,
        "k": k,
        "seed": seed,
        "group_by": group_by,
        "blend_share": blend_share,
        "blend_images": len(blend_ids),
        "groups_of_several_images": int(sum(1 for n in pd.Series(groups).value_counts() if n > 1)),
        "fold_images": table.fold.value_counts().sort_index().astype(int).tolist(),
        **assign.balance_summary(coco, table),
    }
    if pairs is not None and out_near_duplicates:
        _write_csv(pairs, out_near_duplicates)
    balance = assign.balance_table(coco, table)
    if out_balance:
        _write_csv(balance, out_balance)
    if out_plot:
        assign.plot_balance(balance, out_plot)
    if out_summary:
        write_json(out_summary, summary)
    assign.write_folds(table, out_table)
    log.info("folds (%s, k=%d, seed %d): images per fold %s", method, k, seed, summary["fold_images"])
    log.info(
        "max deviation from 1/K: box share %.4f, image share %.4f",
        summary["max_box_share_deviation"],
        summary["max_image_share_deviation"],
    )
    return summary


def _groups(
    coco: Coco, group_by: str | None, images: str | None, distance: int, find_pairs: bool
) -> tuple[np.ndarray, pd.DataFrame | None]:
    """One group label per image (:func:`detfold.folds.assign.groups_from`) and, when the images
    are hashed (``group_by: auto``, or ``find_pairs``), the near-duplicate pairs."""
    mapping, pairs = None, None
    if images is not None and (find_pairs or group_by == "auto"):
        mapping, pairs = assign.near_duplicate_groups(coco, images, distance)
        log.info("near-duplicate image pairs (dHash distance <= %d): %d", distance, len(pairs))
    elif group_by == "auto":
        raise ValueError("folds.group_by: auto needs the image folder to hash the images")
    return assign.groups_from(coco, group_by, mapping), pairs


def _write_csv(table: pd.DataFrame, path: str) -> None:
    with atomic_open(path) as handle:
        table.to_csv(handle, index=False, lineterminator="\n")


def run_fold_files(annotations: str, table: str, fold: int, out_train: str, out_val: str) -> None:
    train, val = assign.fold_split(load_coco(annotations), assign.read_folds(table), fold)
    write_coco(train, out_train)
    write_coco(val, out_val)
    log.info("fold %d: %d train images, %d val images", fold, len(train.images), len(val.images))
