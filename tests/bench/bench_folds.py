"""Benchmark: fold balance of every method, on the bundled data and a synthetic trash-like set.

    .venv/bin/python tests/bench/bench_folds.py [--seeds 5] [--images 5000] [--k 5]

The synthetic set: 10 classes with box shares near 35, 20, 12, 9, 7, 6, 4, 3, 2, 2 %,
1-20 boxes per image (heavy-tailed), each image holding 1-3 classes. For each method and seed
it reports max |box share - 1/K| and max |image share - 1/K| over fold x class, fold size spread
in images and boxes, and time; then the worst value over the seeds. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from detfold.core.coco import Coco, load_coco
from detfold.folds.assign import METHODS, assign_folds, balance_summary

SHARES = np.array([35, 20, 12, 9, 7, 6, 4, 3, 2, 2], dtype=float)


def trash_like(n_images: int = 5000, seed: int = 0) -> Coco:
    """A synthetic 10-class detection set shaped like a trash dataset (see module doc)."""
    rng = np.random.default_rng(seed)
    p = SHARES / SHARES.sum()
    images, annotations = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i:05d}.jpg", "width": 1024, "height": 1024})
        n_boxes = int(min(20, 1 + np.floor(rng.pareto(1.5) * 2)))
        classes = rng.choice(10, size=int(rng.integers(1, 4)), replace=False, p=p)
        mix = p[classes] / p[classes].sum()
        for c in rng.choice(classes, size=n_boxes, p=mix):
            side = float(np.exp(rng.normal(4.5, 0.8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(c) + 1,
                    "bbox": [10.0, 10.0, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c + 1, "name": f"class{c}"} for c in range(10)]
    return Coco({"images": images, "annotations": annotations, "categories": categories}, path="trash-like")


def run(coco: Coco, k: int, seeds: list[int]) -> list[dict]:
    rows = []
    for method in METHODS:
        worst: dict[str, float] = {}
        times = []
        for seed in seeds:
            t = time.perf_counter()
            folds = assign_folds(coco, k=k, seed=seed, method=method)
            times.append(time.perf_counter() - t)
            for key, value in balance_summary(coco, folds).items():
                worst[key] = max(worst.get(key, 0.0), value)
        rows.append({"method": method, **worst, "seconds_max": max(times)})
    return rows


def table(title: str, coco: Coco, rows: list[dict]) -> str:
    lines = [
        f"{title}: {len(coco.images)} images, {len(coco.annotations)} boxes, {len(coco.categories)} classes "
        "(worst over seeds)",
        "",
        "| method | max box-share dev | max image-share dev | fold images spread | fold boxes spread | s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['max_box_share_deviation']:.2%} | {r['max_image_share_deviation']:.2%} "
            f"| {r['fold_images_spread']:.2%} | {r['fold_boxes_spread']:.2%} | {r['seconds_max']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    seeds = [42 + s for s in range(args.seeds)]
    bccd = load_coco(Path(__file__).resolve().parents[1] / "data" / "bccd" / "train.json")
    synthetic = trash_like(args.images)
    print(f"K = {args.k}, seeds {seeds}")
    print()
    print(table("bundled BCCD train split", bccd, run(bccd, args.k, seeds)))
    print()
    rows = run(synthetic, args.k, seeds)
    print(table("synthetic trash-like set", synthetic, rows))
    by = {r["method"]: r for r in rows}
    print()
    for key in ("max_box_share_deviation", "max_image_share_deviation"):
        best_ref = min(by["iterstrat"][key], by["sgkf"][key])
        print(f"balanced / best(iterstrat, sgkf) on {key}: {by['balanced'][key] / best_ref:.2f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
