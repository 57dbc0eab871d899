"""Benchmark: the audit of 5,000 images / 50,000 boxes (goal: under 10 s on 2 cores).

    .venv/bin/python tests/bench/bench_audit.py [--images 5000] [--boxes-per-image 10]

Synthetic but shaped like real data: 10 classes with skewed shares, box sizes per class
log-normal, plus planted oddities (degenerate, outside, tiny, whole-image, extreme aspect,
duplicates) at about 1 % each. Times each step separately, including reading every image
header from disk (tiny PNGs written before timing), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from detfold.audit import checks
from detfold.core.coco import Coco, load_coco, write_coco
from detfold.core.gallery import write_findings_gallery


def synthetic(n_images: int, per_image: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shares = np.array([35, 20, 12, 9, 7, 6, 4, 3, 2, 2], dtype=float)
    shares /= shares.sum()
    width, height = 640, 480
    images = [{"id": i, "file_name": f"{i:05d}.png", "width": width, "height": height} for i in range(1, n_images + 1)]
    annotations = []
    for im in images:
        for _ in range(per_image):
            cls = int(rng.choice(10, p=shares))
            side = float(np.exp(rng.normal(3.5 + 0.1 * cls, 0.3)))
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            roll = rng.random()
            if roll < 0.01:
                w = 0.0
            elif roll < 0.02:
                x = width - w / 2
            elif roll < 0.03:
                w = 1.0
            elif roll < 0.04:
                x, y, w, h = 1.0, 1.0, width - 2.0, height - 2.0
            elif roll < 0.05:
                h = w / 12
            bbox = [round(v, 2) for v in (x, y, w, h)]
            annotations.append({"id": len(annotations) + 1, "image_id": im["id"], "category_id": cls + 1, "bbox": bbox})
            if rng.random() < 0.01:
                dup = [bbox[0] + 1, bbox[1] + 1, bbox[2], bbox[3]]
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": im["id"], "category_id": cls + 1, "bbox": dup}
                )
    categories = [{"id": i + 1, "name": f"class{i}"} for i in range(10)]
    return {"images": images, "annotations": annotations, "categories": categories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--boxes-per-image", type=int, default=10)
    args = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = synthetic(args.images, args.boxes_per_image)
        write_coco(data, tmp_path / "ann.json")
        blank = Image.new("RGB", (640, 480))
        blank.save(tmp_path / "00001.png")
        payload = (tmp_path / "00001.png").read_bytes()
        for im in data["images"][1:]:
            (tmp_path / im["file_name"]).write_bytes(payload)

        rows = []
        t0 = time.perf_counter()
        coco = load_coco(tmp_path / "ann.json")
        rows.append(("load + validate COCO", time.perf_counter() - t0))
        t = time.perf_counter()
        checks.check_image_files(coco, tmp_path)
        rows.append(("read every image header", time.perf_counter() - t))
        t = time.perf_counter()
        clean, findings = checks.audit_coco(coco, checks.AuditPolicy(), "train")
        rows.append(("all checks + policy", time.perf_counter() - t))
        t = time.perf_counter()
        checks.write_findings(findings, tmp_path / "findings.csv")
        write_coco(Coco(clean.data), tmp_path / "clean.json")
        rows.append(("write findings + cleaned COCO", time.perf_counter() - t))
        t = time.perf_counter()
        write_findings_gallery(findings, {"train": coco}, {"train": tmp_path}, tmp_path / "gallery")
        rows.append(("gallery PNGs", time.perf_counter() - t))
        total = time.perf_counter() - t0

    print(f"audit benchmark: {len(data['images'])} images, {len(data['annotations'])} boxes, {len(findings)} findings")
    print()
    print("| step | seconds |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print(f"| **total** | **{total:.2f}** (goal < 10) |")


if __name__ == "__main__":
    main()
