"""Class-stratified K-fold assignment of images, and the per-fold COCO files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from detfold.coco import Coco, write_coco
from detfold.io import atomic_open

log = logging.getLogger(__name__)

FOLD_COLUMNS = ["image_id", "file_name", "fold"]


def class_counts(coco: Coco) -> np.ndarray:
    """(n_images, n_classes) box counts per image, rows in ``coco.images`` order."""
    col = {cid: j for j, cid in enumerate(coco.category_ids)}
    row = {iid: i for i, iid in enumerate(coco.image_ids)}
    counts = np.zeros((len(row), len(col)), dtype=np.int64)
    for ann in coco.annotations:
        counts[row[ann["image_id"]], col[ann["category_id"]]] += 1
    return counts


def assign_folds(coco: Coco, k: int, seed: int = 42) -> pd.DataFrame:
    """Assign each image to one of ``k`` folds with iterstrat's MultilabelStratifiedKFold.

    Labels are the classes present in an image. Returns columns image_id, file_name, fold
    (0-based), sorted by image_id. Same inputs and seed give the same table.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    n_images = len(coco.images)
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"folds.k must be an integer >= 2, got {k!r}")
    if n_images < k:
        raise ValueError(f"folds.k={k} is larger than the number of images ({n_images}) in {coco.path}")
    counts = class_counts(coco)
    for name, n in zip(coco.class_names, (counts > 0).sum(axis=0), strict=True):
        if n < k:
            log.warning("class %r is present in only %d images, fewer than k=%d folds", name, n, k)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(n_images, -1, dtype=np.int64)
    for f, (_, val_idx) in enumerate(splitter.split(np.zeros((n_images, 1)), (counts > 0).astype(int))):
        fold[val_idx] = f
    table = pd.DataFrame(
        {"image_id": coco.image_ids, "file_name": [im["file_name"] for im in coco.images], "fold": fold}
    )
    return table.sort_values("image_id", kind="stable").reset_index(drop=True)


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    with atomic_open(path) as handle:
        folds[FOLD_COLUMNS].to_csv(handle, index=False, lineterminator="\n")


def read_folds(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = [c for c in FOLD_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}, expected {FOLD_COLUMNS}")
    return table


def fold_split(coco: Coco, folds: pd.DataFrame, fold: int) -> tuple[Coco, Coco]:
    """(train, val) COCO subsets of fold ``fold``: val is that fold, train the others."""
    if fold not in set(folds.fold):
        raise ValueError(f"fold {fold} not in the fold table (folds: {sorted(set(folds.fold))})")
    val_ids = folds.loc[folds.fold == fold, "image_id"].tolist()
    train_ids = folds.loc[folds.fold != fold, "image_id"].tolist()
    return coco.subset(train_ids), coco.subset(val_ids)


def write_fold_split(coco: Coco, folds: pd.DataFrame, fold: int, train_path: str | Path, val_path: str | Path) -> None:
    train, val = fold_split(coco, folds, fold)
    write_coco(train, train_path)
    write_coco(val, val_path)
    log.info("fold %d: %d train images, %d val images", fold, len(train.images), len(val.images))
