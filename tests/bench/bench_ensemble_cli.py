"""Benchmark: the whole `detfold fuse --method wbf` command against ensemble-boxes, one run.

    .venv/bin/python tests/bench/bench_ensemble_cli.py [--images 400] [--models 5] [--boxes 75]

400 images (640x480) x 5 models x 75 boxes, 10 classes, clustered (tests/bench/bench_fusion.py's
generator, seed 0), written as COCO results files with an image list. ensemble-boxes runs in
this process, timed from reading the five JSON files to its fused boxes (one
``weighted_boxes_fusion`` call per image, as it is used; its numba parts compiled first).
``detfold fuse`` runs as a whole process, interpreter start, numba's start-up and the written
output included. The outputs are compared image by image: the same boxes within 0.01 px and
the same scores within 1e-6.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fusion import canonical, make

WIDTH, HEIGHT = 640.0, 480.0


def write_inputs(root: Path, n_images: int, n_models: int, n_boxes: int) -> list[Path]:
    data = make(n_images, n_models, n_boxes)
    images = [{"id": i + 1, "file_name": f"{i + 1}.jpg", "width": WIDTH, "height": HEIGHT} for i in range(n_images)]
    (root / "images.json").write_text(
        json.dumps({"images": images, "categories": [{"id": c, "name": f"c{c}"} for c in range(10)]})
    )
    scale = np.array([WIDTH, HEIGHT, WIDTH, HEIGHT])
    paths = []
    for m in range(n_models):
        results = []
        for i, (boxes_l, scores_l, labels_l) in enumerate(data):
            xyxy = boxes_l[m] * scale
            for box, score, label in zip(xyxy, scores_l[m], labels_l[m], strict=True):
                x1, y1, x2, y2 = (float(v) for v in box)
                results.append(
                    {
                        "image_id": i + 1,
                        "category_id": int(label),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": float(score),
                    }
                )
        paths.append(root / f"model{m}.json")
        paths[-1].write_text(json.dumps(results))
    return paths


def ensemble_boxes_run(paths: list[Path], n_images: int) -> dict[int, np.ndarray]:
    import ensemble_boxes as eb

    start = time.perf_counter()
    members = [json.loads(p.read_text()) for p in paths]
    per_image: dict[int, list[list[list]]] = {i: [[[], [], []] for _ in paths] for i in range(1, n_images + 1)}
    for m, results in enumerate(members):
        for r in results:
            x, y, w, h = r["bbox"]
            slot = per_image[r["image_id"]][m]
            slot[0].append([x / WIDTH, y / HEIGHT, (x + w) / WIDTH, (y + h) / HEIGHT])
            slot[1].append(r["score"])
            slot[2].append(r["category_id"])
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for image_id, sets in per_image.items():
            boxes, scores, labels = eb.weighted_boxes_fusion(
                [s[0] for s in sets], [s[1] for s in sets], [s[2] for s in sets], iou_thr=0.55, skip_box_thr=0.0
            )
            xyxy = boxes * np.array([WIDTH, HEIGHT, WIDTH, HEIGHT])
            xywh = np.hstack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])
            out[image_id] = canonical(xywh, scores, labels)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--boxes", type=int, default=75)
    args = parser.parse_args()
    import ensemble_boxes as eb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eb.weighted_boxes_fusion([[[0.1, 0.1, 0.2, 0.2]]], [[0.5]], [[0]])  # compile its numba parts
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_inputs(root, args.images, args.models, args.boxes)
        theirs, t_ref = ensemble_boxes_run(paths, args.images)
        command = [str(Path(sys.executable).with_name("detfold")), "fuse", "--gt", str(root / "images.json")]
        command += ["--pred", *map(str, paths), "--method", "wbf", "--iou-thr", "0.55", "--max-per-img", "100000"]
        command += ["--out", str(root / "fused.json")]
        subprocess.run(command, capture_output=True, check=True)  # first run on a machine fills numba's cache
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        t_ours = time.perf_counter() - start
        fused = json.loads((root / "fused.json").read_text())
    mine: dict[int, list] = {i: [] for i in theirs}
    for r in fused:
        mine[r["image_id"]].append(r)
    same_count = same_values = True
    worst_box = worst_score = 0.0
    for image_id, ref in theirs.items():
        rows = mine[image_id]
        got = canonical([r["bbox"] for r in rows], [r["score"] for r in rows], [r["category_id"] for r in rows])
        if got.shape != ref.shape:
            same_count = False
            continue
        # pair each fused box with the nearest reference box of its class (scores rounded to 1e-6
        # can swap the order of near-ties, so a sort does not line them up)
        dist = np.abs(got[:, None, 2:] - ref[None, :, 2:]).max(axis=2)
        dist[got[:, None, 0] != ref[None, :, 0]] = np.inf
        nearest = dist.argmin(axis=1)
        if len(set(nearest.tolist())) != len(nearest):
            same_count = False
            continue
        worst_box = max(worst_box, float(dist[np.arange(len(got)), nearest].max(initial=0)))
        worst_score = max(worst_score, float(np.abs(got[:, 1] - ref[nearest, 1]).max(initial=0)))
    same_values = same_count and worst_box <= 0.01 and worst_score <= 1e-6
    n_in = args.images * args.models * args.boxes
    print(f"WBF: {args.images} images x {args.models} models x {args.boxes} boxes ({n_in} boxes), 10 classes")
    print()
    print("| run | seconds | x ensemble-boxes |")
    print("|---|---|---|")
    print(f"| ensemble-boxes, in-process (read JSON, fuse per image) | {t_ref:.2f} | 1.0 |")
    print(f"| `detfold fuse --method wbf`, whole process (output written) | {t_ours:.2f} | {t_ref / t_ours:.1f} |")
    print()
    print(f"outputs: same boxes per image: {same_count}; max difference {worst_box:.4f} px, score {worst_score:.1e}")
    print(f"equal outputs: {'yes' if same_values else 'NO'}")


if __name__ == "__main__":
    main()
