"""Benchmark: COCO bbox evaluation, detfold vs pycocotools vs faster-coco-eval, one run.

    .venv/bin/python tests/bench/bench_eval.py [--images 5000]

Synthetic: 10 classes, about 10 ground-truth boxes and 100 detections per image (jittered
ground truth plus false positives). All three evaluate the same inputs; the table gives the
time of each (evaluate + accumulate + summarize; detfold's numba kernel compiled before
timing, as it is cached on disk after the first use) and the ratio to pycocotools, and
checks that the 12 stats agree.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from detfold.cocoeval import evaluate_bbox


def synthetic(n_images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(1, n_images + 1)]
    anns, preds = [], []
    for im in images:
        for _ in range(10):
            w, h = rng.uniform(10, 200, 2)
            box = [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), float(w), float(h)]
            cat = int(rng.integers(1, 11))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
            for _ in range(5):
                jitter = [v + float(rng.normal(0, 0.1 * w)) for v in box]
                jitter[2:] = [max(jitter[2], 1.0), max(jitter[3], 1.0)]
                preds.append({"image_id": im["id"], "category_id": cat, "bbox": jitter, "score": float(rng.random())})
        for _ in range(50):
            w, h = rng.uniform(10, 200, 2)
            preds.append(
                {
                    "image_id": im["id"],
                    "category_id": int(rng.integers(1, 11)),
                    "bbox": [float(rng.uniform(0, 440)), float(rng.uniform(0, 280)), float(w), float(h)],
                    "score": float(rng.random()) * 0.6,
                }
            )
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 11)]
    return {"images": images, "annotations": anns, "categories": cats}, preds


def run_pycocotools(gt: dict, preds: list[dict], module: str) -> np.ndarray:
    if module == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Eval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Eval
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = copy.deepcopy(gt)
        api.createIndex()
        ev = Eval(api, api.loadRes(copy.deepcopy(preds)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    gt, preds = synthetic(args.images)
    small_gt, small_preds = synthetic(5, seed=1)
    evaluate_bbox(small_gt, small_preds)  # compile (or load the cached kernel)
    rows = []
    results = {}
    for name, run in (
        ("pycocotools", lambda: run_pycocotools(gt, preds, "pycocotools")),
        ("faster-coco-eval", lambda: run_pycocotools(gt, preds, "faster")),
        ("detfold", lambda: evaluate_bbox(gt, preds).stats),
    ):
        t = time.perf_counter()
        results[name] = run()
        rows.append((name, time.perf_counter() - t))
    base = rows[0][1]
    print(
        f"COCO bbox evaluation: {len(gt['images'])} images, {len(gt['annotations'])} GT boxes, {len(preds)} detections"
    )
    print()
    print("| evaluator | seconds | speed-up vs pycocotools | 12 stats equal pycocotools |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        same = np.array_equal(results[name], results["pycocotools"])
        print(f"| {name} | {seconds:.2f} | {base / seconds:.1f}x | {'bit-identical' if same else 'NO'} |")


if __name__ == "__main__":
    main()
