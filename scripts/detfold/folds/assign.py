"""K-fold assignment of images (or groups of images) and the per-fold COCO files.

Methods (all seeded; same inputs and seed give the same table):

- ``balanced`` (default): a greedy assignment, rarest classes first, then single-unit moves
  and pairwise swaps that minimise the squared relative deviation of every fold from 1/K of
  the totals of: per-class box counts, per-class image counts, images, boxes and (optionally)
  per-class box-size buckets. It balances boxes and images at once, which iterstrat and
  StratifiedGroupKFold each do for only one of them.
- ``iterstrat``: MultilabelStratifiedKFold on the classes present per unit.
- ``sgkf``: scikit-learn StratifiedGroupKFold, rows = boxes, groups = units.
- ``random``: a shuffled KFold of the units.

A *unit* is one image, or one group of images that must stay in one fold (``group_by``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detfold.core.coco import Coco
from detfold.core.io import atomic_open, read_text

log = logging.getLogger(__name__)

FOLD_COLUMNS = ["image_id", "file_name", "fold"]
#: the largest seed: numpy's and scikit-learn's generators take 32-bit seeds
MAX_SEED = 2**32 - 1
#: COCO area ranges (px^2): small < 32^2 <= medium < 96^2 <= large
SIZE_EDGES = (32.0**2, 96.0**2)


@dataclass(frozen=True)
class BalanceWeights:
    """Relative weight of each balanced quantity in the ``balanced`` objective."""

    class_boxes: float = 1.0
    class_images: float = 1.0
    fold_images: float = 1.0
    fold_boxes: float = 1.0
    size_buckets: float = 0.0  # per-class small/medium/large box counts; 0 = not balanced


def class_counts(coco: Coco, by_size: bool = False) -> np.ndarray:
    """(n_images, n_classes) box counts per image, rows in ``coco.images`` order; ``by_size``:
    (n_images, 3 * n_classes), each class's boxes by COCO size bucket (small/medium/large)."""
    col = {cid: j for j, cid in enumerate(coco.category_ids)}
    row = {iid: i for i, iid in enumerate(coco.image_ids)}
    buckets = 3 if by_size else 1
    counts = np.zeros((len(row), buckets * len(col)), dtype=np.int64)
    for ann in coco.annotations:
        bucket = int(np.searchsorted(SIZE_EDGES, ann["bbox"][2] * ann["bbox"][3], side="right")) if by_size else 0
        counts[row[ann["image_id"]], buckets * col[ann["category_id"]] + bucket] += 1
    return counts


def groups_from(coco: Coco, group_by: str | None, mapping: dict[str, str] | None = None) -> np.ndarray:
    """One group label per image (``coco.images`` order).

    ``group_by``: None (each image its own group), ``regex:PATTERN`` (the first capture group,
    or the whole match, of the pattern searched in the file name; no match = own group),
    ``field:NAME`` (a key of the image record), ``csv:PATH`` (:func:`read_group_csv`) or
    ``auto`` (``mapping`` from file name to group, as :func:`near_duplicate_groups` finds it).
    A regex or CSV that groups no file name, and a grouping that puts every image in one group,
    are refused: they are mistakes, not groupings.
    """
    names = [im["file_name"] for im in coco.images]
    if not group_by:
        return np.array([f"image:{n}" for n in names], dtype=object)
    kind, _, arg = group_by.partition(":")
    if kind in ("regex", "field", "csv") and not arg:
        raise ValueError(f"folds.group_by {group_by!r}: give the {kind} after the colon ({kind}:...)")
    if kind == "regex":
        labels = _regex_groups(names, arg)
    elif kind == "field":
        missing = [im["id"] for im in coco.images if arg not in im]
        if missing:
            raise ValueError(f"folds.group_by: field {arg!r} missing from image ids {missing[:5]} in {coco.path}")
        labels = [f"group:{im[arg]}" for im in coco.images]
    elif kind in ("csv", "auto"):
        mapping = read_group_csv(arg) if kind == "csv" else mapping or {}
        if kind == "csv" and names and not set(names) & set(mapping):
            raise ValueError(
                f"folds.group_by {group_by!r}: the CSV names none of the {len(names)} file names of {coco.path} "
                f"(e.g. {names[0]!r}); its file_name column must hold them as they are written there"
            )
        labels = [f"group:{mapping[n]}" if n in mapping else f"image:{n}" for n in names]
    else:
        raise ValueError(f"folds.group_by must be regex:PATTERN, field:NAME, csv:PATH or auto, got {group_by!r}")
    if len(names) > 1 and len(set(labels)) == 1:
        raise ValueError(
            f"folds.group_by {group_by!r} puts all {len(names)} images of {coco.path} in one group "
            f"({labels[0].partition(':')[2]!r}): no fold could be made; group by something that differs between images"
        )
    return np.array(labels, dtype=object)


def _regex_groups(names: list[str], pattern_text: str) -> list[str]:
    """``group:`` the pattern's first capture group (or whole match) in each file name,
    ``image:`` the name where it does not match; ValueError when it matches no name."""
    try:
        pattern = re.compile(pattern_text)
    except re.error as err:
        raise ValueError(f"folds.group_by: bad regular expression {pattern_text!r} ({err})") from None
    labels = []
    for n in names:
        m = pattern.search(n)
        labels.append(f"group:{m.group(1) if m and m.groups() else m.group(0)}" if m else f"image:{n}")
    if names and all(label.startswith("image:") for label in labels):
        raise ValueError(
            f"folds.group_by 'regex:{pattern_text}' matches no file name (e.g. {names[0]!r}): "
            "the pattern is searched in each image's file_name"
        )
    return labels


def read_group_csv(path: str | Path) -> dict[str, str]:
    """CSV with columns file_name, group -> {file_name: group}."""
    import io

    text = read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: empty file, expected a CSV with columns file_name, group")
    table = pd.read_csv(io.StringIO(text), dtype=str)
    missing = [c for c in ("file_name", "group") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}, expected file_name, group")
    return dict(zip(table.file_name, table.group, strict=True))


def _features(coco: Coco, weights: BalanceWeights) -> tuple[np.ndarray, np.ndarray]:
    """Per-image feature columns and their weights: class boxes, class images, 1 image, boxes
    and, when weighted, class boxes by size bucket."""
    counts = class_counts(coco)
    cols = [counts, (counts > 0).astype(np.int64), np.ones((len(counts), 1), np.int64), counts.sum(1, keepdims=True)]
    w = [
        np.full(counts.shape[1], weights.class_boxes),
        np.full(counts.shape[1], weights.class_images),
        [weights.fold_images],
        [weights.fold_boxes],
    ]
    if weights.size_buckets > 0:
        sizes = class_counts(coco, by_size=True)
        cols.append(sizes)
        w.append(np.full(sizes.shape[1], weights.size_buckets))
    return np.hstack(cols).astype(float), np.concatenate([np.asarray(x, dtype=float) for x in w])


def _balanced(x_units: np.ndarray, feature_w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Assign units to k folds minimising sum_f sum_d w_d ((T_fd - t_d) / t_d)^2."""
    totals = x_units.sum(0)
    keep = (totals > 0) & (feature_w > 0)
    target = totals[keep] / k
    x = x_units[:, keep] * (np.sqrt(feature_w[keep]) / target)  # scaled: objective = sum |T' - 1'|^2
    n = len(x)
    one = np.sqrt(feature_w[keep])  # the scaled target t' per fold
    # Greedy: units holding the rarest classes first, larger units first, ties in seeded order.
    present = x_units[:, keep] > 0
    rarity = np.where(present, 1.0 / np.maximum(present.sum(0), 1), 0).max(1)
    order = np.lexsort((rng.permutation(n), -np.abs(x).sum(1), -rarity))
    fold = np.empty(n, dtype=np.int64)
    t = np.zeros((k, x.shape[1]))
    for u in order:
        cost = ((t + x[u] - one) ** 2).sum(1) - ((t - one) ** 2).sum(1)
        best = np.flatnonzero(cost <= cost.min() + 1e-12)
        f = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
        fold[u] = f
        t[f] += x[u]
    sq = (x**2).sum(1)
    for _ in range(20 * n):
        # best single move: delta(u -> g) = 2 x_u . (T_g - T_f(u)) + 2 |x_u|^2
        xt = x @ t.T  # (n, k)
        delta = 2 * (xt - xt[np.arange(n), fold][:, None]) + 2 * sq[:, None]
        delta[np.arange(n), fold] = np.inf
        u, g = (int(i) for i in np.unravel_index(np.argmin(delta), delta.shape))
        if delta[u, g] < -1e-9:
            t[fold[u]] -= x[u]
            t[g] += x[u]
            fold[u] = g
            continue
        # best swap of u in f with v in g: delta = 2 d . (T_g - T_f) + 2 |d|^2, d = x_u - x_v
        best_delta, best_pair = -1e-9, None
        for f in range(k):
            in_f = np.flatnonzero(fold == f)
            for g in range(f + 1, k):
                in_g = np.flatnonzero(fold == g)
                diff = t[g] - t[f]
                d = (
                    2 * (x[in_f] @ diff)[:, None]
                    - 2 * (x[in_g] @ diff)[None, :]
                    + 2 * sq[in_f][:, None]
                    + 2 * sq[in_g][None, :]
                    - 4 * (x[in_f] @ x[in_g].T)
                )
                i, j = np.unravel_index(np.argmin(d), d.shape)
                if d[i, j] < best_delta:
                    best_delta, best_pair = d[i, j], (in_f[i], in_g[j])
        if best_pair is None:
            break
        u, v = best_pair
        f, g = fold[u], fold[v]
        t[f] += x[v] - x[u]
        t[g] += x[u] - x[v]
        fold[u], fold[v] = g, f
    return fold


@dataclass(frozen=True)
class _Units:
    """What the methods assign: units (an image, or a group of images that share a fold)."""

    coco: Coco
    unit: np.ndarray  # unit index per image (coco.images order)
    per_unit: np.ndarray  # (n_units, n_classes) box counts
    weights: BalanceWeights | None


def _test_folds(splitter: Any, n: int, *labels: np.ndarray) -> np.ndarray:
    """The fold of each of ``n`` samples: the split of a scikit-learn style splitter that tests it."""
    import warnings

    fold = np.full(n, -1, dtype=np.int64)
    with warnings.catch_warnings():  # scikit-learn's "least populated class" warning: assign_folds warns by name
        warnings.simplefilter("ignore", UserWarning)
        for f, (_, idx) in enumerate(splitter.split(np.zeros((n, 1)), *labels)):
            fold[idx] = f
    return fold


def _by_balance(units: _Units, k: int, seed: int) -> np.ndarray:
    feats, feat_w = _features(units.coco, units.weights or BalanceWeights())
    x_units = np.zeros((len(units.per_unit), feats.shape[1]))
    np.add.at(x_units, units.unit, feats)
    return _balanced(x_units, feat_w, k, np.random.default_rng(seed))


def _by_iterstrat(units: _Units, k: int, seed: int) -> np.ndarray:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    labels_present = (units.per_unit > 0).astype(int)
    if labels_present.shape[1] < 2:  # iterstrat needs 2+ label columns: add "has no box"
        labels_present = np.hstack([labels_present, 1 - labels_present.max(1, keepdims=True)])
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return _test_folds(splitter, len(labels_present), labels_present)


def _by_sgkf(units: _Units, k: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    per_unit = units.per_unit
    per_class, with_boxes = per_unit.sum(0), int((per_unit.sum(1) > 0).sum())
    if per_class.max(initial=0) < k or with_boxes < k:  # scikit-learn's own message would name neither
        counts = dict(zip(units.coco.class_names, per_class.tolist(), strict=True))
        raise ValueError(
            f"folds.method sgkf (stratified by box class) needs folds.k={k} or more boxes of some class and {k} or "
            f"more images (or groups) with boxes; {units.coco.path} has boxes {counts} in {with_boxes} images "
            "(or groups): use fewer folds or the balanced method"
        )
    box_unit = np.repeat(np.arange(len(per_unit)), per_unit.sum(1))
    box_class = np.concatenate([np.repeat(np.arange(per_unit.shape[1]), row) for row in per_unit])
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    unit_fold = np.full(len(per_unit), -1, dtype=np.int64)
    unit_fold[box_unit] = _test_folds(splitter, len(box_unit), box_class, box_unit)  # a unit's boxes share a fold
    empty = np.flatnonzero(unit_fold < 0)  # units without boxes: spread over the folds
    unit_fold[empty] = np.random.default_rng(seed).permutation(np.arange(len(empty)) % k)
    return unit_fold


def _by_random(units: _Units, k: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import KFold

    return _test_folds(KFold(n_splits=k, shuffle=True, random_state=seed), len(units.per_unit))


#: method -> the fold (0..k-1) of every unit
ASSIGNERS = {"balanced": _by_balance, "iterstrat": _by_iterstrat, "sgkf": _by_sgkf, "random": _by_random}
METHODS = tuple(ASSIGNERS)


def assign_folds(
    coco: Coco,
    k: int,
    seed: int,
    method: str = "balanced",
    groups: Sequence[str] | np.ndarray | None = None,
    weights: BalanceWeights | None = None,
) -> pd.DataFrame:
    """Assign each image to one of ``k`` folds; images of one group share a fold.

    Returns columns image_id, file_name, fold (0-based), sorted by image_id.
    """
    if method not in METHODS:
        raise ValueError(f"folds.method must be one of {list(METHODS)}, got {method!r}")
    n_images = len(coco.images)
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"folds.k must be an integer >= 2, got {k!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if n_images < k:
        raise ValueError(f"folds.k={k} is larger than the number of images ({n_images}) in {coco.path}")
    unit, labels = pd.factorize(np.asarray(groups_from(coco, None) if groups is None else groups, dtype=object))
    n_units = len(labels)
    if n_units < k:
        raise ValueError(
            f"folds.k={k} is larger than the number of groups of images that share a fold ({n_units}, of "
            f"{n_images} images in {coco.path}): cannot fill every fold; use fewer folds or smaller groups"
        )
    unit_sizes = np.bincount(unit, minlength=n_units)
    too_big = [(str(labels[u]), int(s)) for u, s in enumerate(unit_sizes) if s > n_images / k]
    if too_big:
        raise ValueError(
            f"group(s) larger than a fold ({n_images / k:.1f} images): {too_big[:5]}; use fewer folds or smaller groups"
        )
    counts = class_counts(coco)
    for name, n in zip(coco.class_names, (counts > 0).sum(axis=0), strict=True):
        if n == 0:
            log.warning("class %r has no box in %s: no fold has it", name, coco.path)
        elif n < k:
            log.warning("class %r is in only %d images, fewer than k=%d folds: some folds lack it", name, n, k)
    per_unit = np.zeros((n_units, counts.shape[1]), dtype=np.int64)
    np.add.at(per_unit, unit, counts)
    unit_fold = ASSIGNERS[method](_Units(coco, unit, per_unit, weights), k, seed)
    table = pd.DataFrame(
        {"image_id": coco.image_ids, "file_name": [im["file_name"] for im in coco.images], "fold": unit_fold[unit]}
    )
    return table.sort_values("image_id", kind="stable").reset_index(drop=True)


def split_blend(
    coco: Coco,
    share: float,
    seed: int,
    method: str,
    groups: Sequence[str] | np.ndarray | None = None,
    weights: BalanceWeights | None = None,
) -> list[int]:
    """Image ids of the blend split: a seeded share of the images, balanced as the folds are
    (the same method, groups kept whole), that no fold model trains on.

    The images are split into ``round(1 / share)`` balanced parts and the first part is the
    blend split, so its size is ``1 / round(1 / share)`` of the images (share 0.2: a fifth;
    the config gate keeps it in (0, 0.5])."""
    parts = max(2, round(1 / share))
    table = assign_folds(coco, k=parts, seed=seed, method=method, groups=groups, weights=weights)
    return table.loc[table.fold == 0, "image_id"].astype(int).tolist()


def _image_folds(coco: Coco, folds: pd.DataFrame) -> tuple[np.ndarray, int]:
    """The fold of every image (``coco.images`` order), and K."""
    return folds.set_index("image_id").loc[coco.image_ids, "fold"].to_numpy(), int(folds.fold.max()) + 1


def balance_table(coco: Coco, folds: pd.DataFrame) -> pd.DataFrame:
    """Per fold x class: boxes, images, their shares of the class total, deviation from 1/K."""
    counts, (fold, k) = class_counts(coco), _image_folds(coco, folds)
    rows = []
    for f in range(k):
        for j, name in enumerate(coco.class_names):
            boxes, images = int(counts[fold == f, j].sum()), int((counts[fold == f, j] > 0).sum())
            total_boxes, total_images = int(counts[:, j].sum()), int((counts[:, j] > 0).sum())
            box_share = boxes / total_boxes if total_boxes else float("nan")
            image_share = images / total_images if total_images else float("nan")
            rows.append(
                {
                    "fold": f,
                    "class": name,
                    "boxes": boxes,
                    "images": images,
                    "box_share": round(box_share, 6),
                    "image_share": round(image_share, 6),
                    "box_share_deviation": round(box_share - 1 / k, 6),
                    "image_share_deviation": round(image_share - 1 / k, 6),
                }
            )
    return pd.DataFrame(rows)


def balance_summary(coco: Coco, folds: pd.DataFrame) -> dict[str, float]:
    """Max and mean absolute share deviations, and fold size spread ((max - min) / mean)."""
    table, counts, (fold, k) = balance_table(coco, folds), class_counts(coco), _image_folds(coco, folds)
    images = np.bincount(fold, minlength=k)
    boxes = np.bincount(fold, weights=counts.sum(1), minlength=k)
    box_dev, image_dev = table.box_share_deviation.abs(), table.image_share_deviation.abs()
    return {
        "max_box_share_deviation": round(float(box_dev.max()), 6),
        "mean_box_share_deviation": round(float(box_dev.mean()), 6),
        "max_image_share_deviation": round(float(image_dev.max()), 6),
        "mean_image_share_deviation": round(float(image_dev.mean()), 6),
        "fold_images_spread": round(float((images.max() - images.min()) / images.mean()), 6),
        "fold_boxes_spread": round(float((boxes.max() - boxes.min()) / max(boxes.mean(), 1e-12)), 6),
    }


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    with atomic_open(path) as handle:
        folds[FOLD_COLUMNS].to_csv(handle, index=False, lineterminator="\n")


def read_folds(path: str | Path) -> pd.DataFrame:
    import io

    text = read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: empty file, expected a CSV with columns {FOLD_COLUMNS}")
    table = pd.read_csv(io.StringIO(text))
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


def dhash(path: str | Path, size: int = 8) -> int:
    """64-bit difference hash of an image: grey, (size+1) x size, bit = left pixel > right pixel."""
    from PIL import Image

    try:
        with Image.open(path) as handle:
            grey = np.asarray(handle.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    except (OSError, SyntaxError) as err:  # missing, truncated, not an image
        raise ValueError(f"{path}: image file unreadable for near-duplicate grouping ({err})") from None
    bits = (grey[:, :-1] > grey[:, 1:]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def near_duplicate_groups(coco: Coco, images_dir: str | Path, max_distance: int) -> tuple[dict[str, str], pd.DataFrame]:
    """Find likely near-identical frames by dHash Hamming distance <= ``max_distance``.

    Returns {file_name: group} for images in a group of two or more (groups = connected pairs,
    named after their first file) and the table of pairs (file_name_a, file_name_b, distance).
    """
    names = [im["file_name"] for im in coco.images]
    hashes = np.array([dhash(Path(images_dir) / n) for n in names], dtype=np.uint64)
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    for i in range(len(names) - 1):
        dist = np.bitwise_count(hashes[i] ^ hashes[i + 1 :])
        for j in np.flatnonzero(dist <= max_distance) + i + 1:
            pairs.append((names[i], names[j], int(dist[j - i - 1])))
            parent[root(int(j))] = root(i)
    members: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        members.setdefault(root(i), []).append(name)
    mapping = {n: group[0] for group in members.values() if len(group) > 1 for n in group}
    return mapping, pd.DataFrame(pairs, columns=["file_name_a", "file_name_b", "distance"])


def plot_balance(table: pd.DataFrame, path: str | Path) -> None:
    """Heatmaps of box share and image share per fold x class (deviation from 1/K annotated)."""
    from matplotlib.figure import Figure

    k = int(table.fold.max()) + 1
    classes = list(dict.fromkeys(table["class"]))
    fig = Figure(figsize=(2 + 1.1 * len(classes) * 2, 1.5 + 0.5 * k))
    axes = fig.subplots(1, 2, squeeze=False)
    for ax, column, title in zip(axes[0], ("box_share", "image_share"), ("boxes", "images"), strict=True):
        grid = table.pivot(index="fold", columns="class", values=column)[classes].to_numpy()
        image = ax.imshow(grid - 1 / k, cmap="coolwarm", vmin=-0.05, vmax=0.05, aspect="auto")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), [f"fold {f}" for f in range(k)])
        ax.set_title(f"share of each class's {title} (1/K = {1 / k:.3f})")
        for (r, c), value in np.ndenumerate(grid):
            ax.text(c, r, f"{value:.3f}", ha="center", va="center", fontsize=7)
        fig.colorbar(image, ax=ax, label="share - 1/K")
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
