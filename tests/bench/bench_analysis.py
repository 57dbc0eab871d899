"""Benchmark: detfold's error analysis against the COCO evaluation itself and tidecv, one run.

    .venv/bin/python tests/bench/bench_analysis.py [--images 5000] [--no-tidecv]

Issue 16's goal: on 5,000 images / 280,000 detections the TIDE breakdown and the label review
take no longer than the COCO evaluation itself. Synthetic: 10 classes, 4-12 ground-truth boxes
per image (mean 8), five jittered detections per box (one in ten of another class) and 16
background detections per image (about 56 per image). Every step is timed in this process on
the same inputs (numba kernels compiled, or loaded from their cache, before timing); the table
gives seconds and the ratio to pycocotools' evaluate + accumulate + summarize, and checks that
detfold's TIDE numbers equal tidecv's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench_eval import run_pycocotools  # the same reference run as the evaluation benchmark
from detfold.analyze.review import review_candidates
from detfold.analyze.thresholds import best_f1_thresholds, confusion_matrix
from detfold.analyze.tide import ERROR_TYPES, prepare, tide, tide_match
from detfold.core.coco import Detections
from detfold.evaluate.cocoeval import evaluate_bbox


def synthetic(n_images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(1, n_images + 1)]
    anns, preds = [], []
    for im in images:
        for _ in range(int(rng.integers(4, 13))):
            w, h = rng.uniform(10, 200, 2)
            box = [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), float(w), float(h)]
            cat = int(rng.integers(1, 11))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "bbox": box, "iscrowd": 0})
            anns[-1]["area"] = box[2] * box[3]
            for _ in range(5):
                jitter = [v + float(rng.normal(0, 0.1 * w)) for v in box]
                jitter[2:] = [max(jitter[2], 1.0), max(jitter[3], 1.0)]
                pred_cat = cat if rng.random() < 0.9 else int(rng.integers(1, 11))
                preds.append(
                    {"image_id": im["id"], "category_id": pred_cat, "bbox": jitter, "score": float(rng.random())}
                )
        for _ in range(16):
            w, h = rng.uniform(10, 200, 2)
            box = [float(rng.uniform(0, 440)), float(rng.uniform(0, 280)), float(w), float(h)]
            preds.append(
                {
                    "image_id": im["id"],
                    "category_id": int(rng.integers(1, 11)),
                    "bbox": box,
                    "score": float(rng.random()) * 0.6,
                }
            )
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 11)]
    return {"images": images, "annotations": anns, "categories": cats}, preds


def run_tidecv(gt: dict, preds: list[dict]) -> dict:
    import tidecv

    data = tidecv.Data("gt")
    for im in gt["images"]:
        data.add_image(im["id"], im["file_name"])
    for c in gt["categories"]:
        data.add_class(c["id"], c["name"])
    for a in gt["annotations"]:
        data.add_ground_truth(a["image_id"], a["category_id"], a["bbox"])
    dets = tidecv.Data("pred")
    for p in preds:
        dets.add_detection(p["image_id"], p["category_id"], p["score"], p["bbox"])
    tide = tidecv.TIDE()
    with contextlib.redirect_stdout(io.StringIO()):
        run = tide.evaluate(data, dets, mode=tidecv.TIDE.BOX)
        main = tide.get_main_errors()["pred"]
    return {"mAP": run.ap / 100, **{k: v / 100 for k, v in main.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--no-tidecv", action="store_true", help="leave tidecv out (it takes minutes)")
    args = parser.parse_args()
    gt, preds = synthetic(args.images)
    dets = Detections.from_results(preds)  # what the analysis takes
    small_gt, small_preds = synthetic(5, seed=1)
    evaluate_bbox(small_gt, small_preds)  # compile (or load the cached kernels)
    small_dets = Detections.from_results(small_preds)
    review_candidates(small_gt, small_dets)
    confusion_matrix(small_gt, small_dets, 0.5)
    tide(small_gt, small_dets)
    rows, out = [], {}

    def timed(name: str, run) -> None:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out[name] = run()
        rows.append((name, time.perf_counter() - t))

    timed(
        "pycocotools evaluate + accumulate + summarize (reference)", lambda: run_pycocotools(gt, preds, "pycocotools")
    )
    timed("detfold COCO evaluation (evaluate_bbox)", lambda: evaluate_bbox(gt, preds).stats)
    timed("detfold TIDE breakdown (tide: prepare, match, 8 fixed mAPs)", lambda: tide(gt, dets))
    timed("detfold label review (review_candidates, its own match)", lambda: review_candidates(gt, dets))
    timed("detfold best-F1 thresholds", lambda: best_f1_thresholds(gt, dets))
    thr = {n: t["score_thr"] for n, t in out["detfold best-F1 thresholds"].items()}
    timed("detfold confusion matrix", lambda: confusion_matrix(gt, dets, thr))
    timed("detfold breakdown + review together (one match)", lambda: _breakdown_and_review(gt, dets))
    if not args.no_tidecv:
        timed("tidecv 1.0.1 (reference for TIDE)", lambda: run_tidecv(gt, preds))
    base = rows[0][1]
    print(f"Error analysis: {len(gt['images'])} images, {len(gt['annotations'])} GT boxes, {len(preds)} detections")
    print()
    print("| step | seconds | x pycocotools' time |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f} |")
    ours = out["detfold TIDE breakdown (tide: prepare, match, 8 fixed mAPs)"]
    if "tidecv 1.0.1 (reference for TIDE)" in out:
        theirs = out["tidecv 1.0.1 (reference for TIDE)"]
        diff = max(abs(ours["mAP"] - theirs["mAP"]), *(abs(ours["main"][k] - theirs[k]) for k in ERROR_TYPES))
        print()
        print(f"TIDE mAP50 and the six dAPs vs tidecv: largest difference {diff:.1e}")
    equal = np.array_equal(
        out["pycocotools evaluate + accumulate + summarize (reference)"], out["detfold COCO evaluation (evaluate_bbox)"]
    )
    print(f"detfold's 12 COCO stats equal pycocotools': {equal}")


def _breakdown_and_review(gt: dict, preds: Detections) -> int:
    match = tide_match(prepare(gt, preds))
    tide(gt, preds, match=match)
    return len(review_candidates(gt, preds, match=match))


if __name__ == "__main__":
    main()
