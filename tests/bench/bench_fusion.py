"""Benchmark: box fusion, detfold vs ensemble-boxes, per method, in one run.

    .venv/bin/python tests/bench/bench_fusion.py [--images 1000] [--models 5] [--boxes 100]

Random but clustered inputs (each model detects shared objects with jitter, plus false
positives), normalised xyxy. ensemble-boxes is called once per image, as it is used;
detfold fuses all images in one call of :func:`detfold.ensemble.fusion.fuse_arrays` (its numba kernels
compiled before timing, as they are cached on disk after the first use). The table gives
images per second, the speed-up, and whether the outputs agree within 1e-6 on every image.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from detfold.ensemble import fusion


def make(n_images: int, n_models: int, n_boxes: int, seed: int = 0) -> list[tuple[list, list, list]]:
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(n_images):
        n_obj = n_boxes // 2
        centres, sizes = rng.uniform(0.1, 0.9, (n_obj, 2)), rng.uniform(0.02, 0.15, (n_obj, 2))
        labels = rng.integers(0, 10, n_obj)
        boxes_l, scores_l, labels_l = [], [], []
        for _ in range(n_models):
            pick = rng.integers(0, n_obj, n_boxes)
            c = centres[pick] + rng.normal(0, 0.1, (n_boxes, 2)) * sizes[pick]
            wh = sizes[pick] * rng.uniform(0.8, 1.2, (n_boxes, 2))
            b = np.clip(np.hstack([c - wh / 2, c + wh / 2]), 0, 1)
            boxes_l.append(b)
            scores_l.append(rng.uniform(0.01, 1, n_boxes))
            labels_l.append(labels[pick].astype(float))
        data.append((boxes_l, scores_l, labels_l))
    return data


def flatten(data: list) -> tuple[np.ndarray, ...]:
    boxes, scores, labels, models, images = [], [], [], [], []
    for i, (b_l, s_l, l_l) in enumerate(data):
        for m, (b, s, lab) in enumerate(zip(b_l, s_l, l_l, strict=True)):
            boxes.append(b)
            scores.append(s)
            labels.append(lab.astype(np.int64))
            models.append(np.full(len(b), m))
            images.append(np.full(len(b), i))
    return tuple(np.concatenate(x) for x in (boxes, scores, labels, models, images))


METHODS = {
    # name: (ensemble-boxes call, detfold fuse_arrays kwargs)
    "WBF (avg)": (lambda eb, b, s, lab: eb.weighted_boxes_fusion(b, s, lab, iou_thr=0.55), {"method": "wbf"}),
    "NMS": (lambda eb, b, s, lab: eb.nms(b, s, lab, iou_thr=0.5), {"method": "nms", "iou_thr": 0.5}),
    "soft-NMS (gaussian)": (
        lambda eb, b, s, lab: eb.soft_nms(b, s, lab, method=2, iou_thr=0.5, sigma=0.5, thresh=0.001),
        {"method": "soft_nms", "iou_thr": 0.5, "rescore": False},
    ),
    "NMW": (lambda eb, b, s, lab: eb.non_maximum_weighted(b, s, lab, iou_thr=0.55), {"method": "nmw"}),
}


def canonical(boxes, scores, labels):  # type: ignore[no-untyped-def]
    rows = np.column_stack([np.asarray(labels, float), np.asarray(scores, float), np.asarray(boxes, float)])
    return rows[np.lexsort(rows.T[::-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--boxes", type=int, default=100)
    args = parser.parse_args()
    import ensemble_boxes as eb

    data = make(args.images, args.models, args.boxes)
    flat = flatten(data)
    warm = flatten(make(2, args.models, 10, seed=1))
    print(f"fusion: {args.images} images x {args.models} models x {args.boxes} boxes, 10 classes")
    print()
    print("| method | ensemble-boxes img/s | detfold img/s | speed-up | same output (1e-6) |")
    print("|---|---|---|---|---|")
    for name, (ref, kwargs) in METHODS.items():
        fusion.fuse_arrays(*warm, args.models, **kwargs)  # compile / load cached kernels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b0, s0, l0 = data[0]
            ref(eb, [x.copy() for x in b0], [x.copy() for x in s0], l0)  # its numba parts compile too
            t = time.perf_counter()
            theirs = [ref(eb, [x.copy() for x in b], [x.copy() for x in s], lab) for b, s, lab in data]
            t_ref = time.perf_counter() - t
        t = time.perf_counter()
        boxes, scores, labels, images = fusion.fuse_arrays(*flat, args.models, **kwargs)
        t_ours = time.perf_counter() - t
        same = True
        for i, out in enumerate(theirs):
            mine = images == i
            a, b = canonical(boxes[mine], scores[mine], labels[mine]), canonical(*out)
            same &= a.shape == b.shape and bool(np.allclose(a, b, atol=1e-6, rtol=0))
        n = args.images
        print(f"| {name} | {n / t_ref:.0f} | {n / t_ours:.0f} | {t_ref / t_ours:.0f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
