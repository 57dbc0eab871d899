"""Statistics over images: seeded bootstrap resamples and their 95 % intervals, and the parts of
nested selection. Light (numpy only): the config gate imports :data:`NESTED_PARTS`.

Scores are (mAP, mAP50) pairs of :class:`detfold.evaluate.cocoeval.Matched`, which scores any
weighting of the images (a resample is a vector of image counts) without matching again.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from detfold.evaluate.cocoeval import Matched

#: Bootstrap resamples of the images behind a 95 % interval (the pooled OOF metrics; the
#: ensemble's own come from ``ensemble.bootstrap_samples``, whose default is the same).
BOOTSTRAP_SAMPLES = 1000
#: The blend images are cut into this many parts for nested selection (leave one part out).
NESTED_PARTS = 5


def bootstrap_counts(n_images: int, samples: int, seed: int) -> np.ndarray:
    """[samples, n_images] multiplicities of a bootstrap over images (seeded)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=samples).astype(np.int64)


def bootstrap_scores(matched: Matched, counts: np.ndarray, threads: int = 1) -> np.ndarray:
    """[samples, 2] (mAP, mAP50) of ``matched`` under each resample's image counts, on
    ``threads`` threads (the scoring kernel releases the GIL); the same numbers in any case."""
    if threads <= 1 or len(counts) < 2:
        return np.array([matched.scores(c) for c in counts]).reshape(-1, 2)
    with ThreadPoolExecutor(threads) as pool:
        return np.array(list(pool.map(matched.scores, counts))).reshape(-1, 2)


def interval(values: np.ndarray) -> list[float]:
    """The 95 % percentile interval, rounded to 1e-6 (undefined resamples, -1, left out)."""
    values = np.asarray(values, dtype=float)
    values = values[values > -1] if values.ndim == 1 else values
    if len(values) == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), 6), round(float(hi), 6)]


def intervals(boot: np.ndarray) -> dict[str, list[float]]:
    """``mAP_ci95`` and ``mAP50_ci95`` of [samples, 2] bootstrap scores (or their differences)."""
    return {"mAP_ci95": interval(boot[:, 0]), "mAP50_ci95": interval(boot[:, 1])}


def nested_parts(image_ids: Sequence[int], parts: int, seed: int) -> np.ndarray:
    """Part (0 .. parts-1) of every image, images in sorted id order: a seeded shuffle dealt
    round-robin, so part sizes differ by at most one."""
    n = len(image_ids)
    if n < parts:
        raise ValueError(f"the blend split has {n} images, fewer than the {parts} parts of nested selection")
    part = np.empty(n, dtype=np.int64)
    part[np.random.default_rng(seed).permutation(n)] = np.arange(n) % parts
    return part
