"""Build detfold's bundled demo data from the shared BCCD COCO export.

    python tests/data/bccd/make_demo.py --src ../shared/data/bccd --out tests/data/bccd

What it does, and nothing more:
  * every image is downscaled by exactly 1/2 (640x480 -> 320x240, Pillow LANCZOS,
    JPEG quality 90) and every bbox is scaled by the same factor, so box geometry,
    IoUs and the annotation oddities (zero-area boxes, near-duplicates) survive;
  * image and annotation ids, file names and categories are kept unchanged;
  * a fixed, labelled test split is set aside: every fifth image by id (id % 5 == 0),
    with near-identical frames kept on the same side (see NEAR_DUPLICATE_IMAGES);
    train.json holds the rest. The demo trains its K folds on train.json and scores
    the fold ensemble on test.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from PIL import Image

SCALE = 0.5
#: BloodImage_00037 and _00038 show the same field of view (source README): keep together.
NEAR_DUPLICATE_IMAGES = {"BloodImage_00038.jpg": "BloodImage_00037.jpg"}


def is_test(image: dict, id_by_name: dict[str, int]) -> bool:
    """Deterministic test membership: id % 5 == 0, near-duplicates follow their twin."""
    twin = NEAR_DUPLICATE_IMAGES.get(image["file_name"])
    image_id = id_by_name[twin] if twin else image["id"]
    return image_id % 5 == 4


def scale_box(bbox: list[float]) -> list[float]:
    return [round(v * SCALE, 2) for v in bbox]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    coco = json.loads((args.src / "annotations.json").read_text())
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for image in coco["images"]:
        with Image.open(args.src / "images" / image["file_name"]) as im:
            size = (round(im.width * SCALE), round(im.height * SCALE))
            small = im.convert("RGB").resize(size, Image.LANCZOS)
        small.save(args.out / "images" / image["file_name"], quality=90)
        images.append({**image, "width": size[0], "height": size[1]})
    annotations = []
    for ann in coco["annotations"]:
        bbox = scale_box(ann["bbox"])
        annotations.append({**ann, "bbox": bbox, "area": round(bbox[2] * bbox[3], 4)})

    id_by_name = {im["file_name"]: im["id"] for im in images}
    test_ids = {im["id"] for im in images if is_test(im, id_by_name)}
    base = {k: copy.deepcopy(coco[k]) for k in ("info", "licenses", "categories")}
    base["info"]["description"] += " - detfold demo: downscaled 1/2"
    for name, keep in (("train", lambda i: i not in test_ids), ("test", lambda i: i in test_ids)):
        split = {
            **base,
            "images": [im for im in images if keep(im["id"])],
            "annotations": [a for a in annotations if keep(a["image_id"])],
        }
        (args.out / f"{name}.json").write_text(json.dumps(split, indent=1) + "\n")


if __name__ == "__main__":
    main()
