"""COCO -> Pascal VOC XML / YOLO txt, the inverse of detfold.audit.convert's import: the tests'
round trips and the workflow test's VOC source."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def coco_to_voc(coco: dict, out_dir: str | Path) -> None:
    """Write one Pascal VOC XML per image (the inverse of :func:`voc_to_coco`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    for im in coco["images"]:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = im["file_name"]
        size = ET.SubElement(root, "size")
        for key, value in (("width", im["width"]), ("height", im["height"]), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        for ann in by_image[im["id"]]:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[ann["category_id"]]
            box = ET.SubElement(obj, "bndbox")
            x, y, w, h = ann["bbox"]
            for key, value in (("xmin", x), ("ymin", y), ("xmax", x + w), ("ymax", y + h)):
                ET.SubElement(box, key).text = repr(float(value))
        (out / f"{Path(im['file_name']).stem}.xml").write_text(ET.tostring(root, encoding="unicode"))


def coco_to_yolo(coco: dict, out_dir: str | Path) -> list[str]:
    """Write YOLO txt labels (one per image) and return the class names in index order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cats = [c["id"] for c in coco["categories"]]
    index = {cid: i for i, cid in enumerate(cats)}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    for im in coco["images"]:
        lines = []
        for ann in by_image[im["id"]]:
            x, y, w, h = ann["bbox"]
            cx, cy = (x + w / 2) / im["width"], (y + h / 2) / im["height"]
            lines.append(f"{index[ann['category_id']]} {cx:.8f} {cy:.8f} {w / im['width']:.8f} {h / im['height']:.8f}")
        (out / f"{Path(im['file_name']).stem}.txt").write_text("".join(line + "\n" for line in lines))
    return [c["name"] for c in coco["categories"]]
