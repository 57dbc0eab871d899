"""Import Pascal VOC XML and YOLO txt annotations into COCO.

Conventions: VOC ``bndbox`` (xmin, ymin, xmax, ymax) becomes ``bbox = [xmin, ymin,
xmax - xmin, ymax - ymin]`` in pixels (no +1, no clipping: the audit decides about boxes past
the border). YOLO lines are ``class cx cy w h`` normalised by the image size. Images get ids
1..N in file-name order and annotations ids 1..M in (image, object) order. Categories keep
the order of the class-names list (or, for VOC without one, sorted names).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class AnnotationImportError(ValueError):
    """An annotation file of another format is malformed; the message names file and value."""


def listed_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 text file (a byte-order mark is fine) that is
    neither blank nor a ``#`` comment, stripped."""
    lines = [(n, line.strip()) for n, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1)]
    return [(n, text) for n, text in lines if text and not text.startswith("#")]


def read_class_names(path: str | Path, by_line: bool = False) -> list[str]:
    """One class name per line, stripped (blank lines and # comments ignored); raise if none,
    duplicates, or names that differ only in case. ``by_line`` (YOLO, whose class index is the
    line number): a blank or comment line before the last name is an error, it would shift
    every later class."""
    try:
        kept = listed_lines(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: class names file not found") from None
    if not kept:
        raise AnnotationImportError(f"{path}: no class names in the file")
    if by_line:
        gaps = [n for n in range(1, kept[-1][0]) if n not in {line for line, _ in kept}]
        if gaps:
            raise AnnotationImportError(
                f"{path}: line {gaps[0]} is blank or a comment, but YOLO class indices are line numbers: "
                "it would shift every later class; remove it"
            )
    names = [name for _, name in kept]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AnnotationImportError(f"{path}: duplicate class names {dupes}")
    folded = sorted({n for n in names if sum(m.lower() == n.lower() for m in names) > 1})
    if folded:
        raise AnnotationImportError(f"{path}: class names that differ only in case {folded}: one class or two?")
    return names


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            return handle.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise AnnotationImportError(f"{path}: image file unreadable ({err})") from None


#: one image: file name, width, height and its boxes as (category id, [x, y, w, h] px)
Record = tuple[str, int, int, list[tuple[int, list[float]]]]


def _coco(records: list[Record], names: list[str]) -> dict:
    """A COCO dict: images ids 1..N in ``records`` order, annotation ids 1..M in (image, box) order."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (file_name, width, height, boxes) in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for category_id, (x, y, w, h) in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": name} for i, name in enumerate(names, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _number(text: str | None, where: str, what: str) -> float:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AnnotationImportError(f"{where}: {what} must be a finite number, got {text!r}")
    return value


def voc_to_coco(
    xml_dir: str | Path, images_dir: str | Path | None = None, class_names: list[str] | None = None
) -> dict:
    """Read every ``*.xml`` in ``xml_dir`` (Pascal VOC) into a COCO dict.

    Without ``<size>`` the image is opened (in ``images_dir``) to read it, and a warning says so.
    Objects of a class not in ``class_names`` (when given) are an error.
    """
    files = sorted(Path(xml_dir).glob("*.xml"))
    if not files:
        raise AnnotationImportError(f"{xml_dir}: no .xml files (expected Pascal VOC annotations)")
    records = []
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as err:
            raise AnnotationImportError(f"{path}: not valid XML ({err})") from None
        file_name = (root.findtext("filename") or "").strip() or f"{path.stem}.jpg"
        size = root.find("size")
        if size is not None and size.findtext("width") and size.findtext("height"):
            width = int(_number(size.findtext("width"), str(path), "size/width"))
            height = int(_number(size.findtext("height"), str(path), "size/height"))
        else:
            if images_dir is None:
                raise AnnotationImportError(f"{path}: no <size>; give the images folder to read it from the image")
            width, height = _image_size(Path(images_dir) / file_name)
            log.warning("%s: no <size>; read %dx%d from the image", path, width, height)
        objects = []
        for n, obj in enumerate(root.iter("object")):
            where = f"{path}: object {n}"
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise AnnotationImportError(f"{where}: missing <name>")
            box = obj.find("bndbox")
            if box is None:
                raise AnnotationImportError(f"{where} ({name}): missing <bndbox>")
            coords = [_number(box.findtext(k), where, f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append((name, coords))
        records.append((file_name, width, height, objects))
    names = class_names or sorted({name for *_, objects in records for name, _ in objects})
    cat_id = {name: i for i, name in enumerate(names, start=1)}
    boxed: list[Record] = []
    for file_name, width, height, objects in sorted(records):
        unknown = [name for name, _ in objects if name not in cat_id]
        if unknown:
            where = f"{xml_dir}/{Path(file_name).stem}.xml"
            raise AnnotationImportError(f"{where}: class {unknown[0]!r} is not in the class names {names}")
        boxes = [(cat_id[name], [x1, y1, x2 - x1, y2 - y1]) for name, (x1, y1, x2, y2) in objects]
        boxed.append((file_name, width, height, boxes))
    return _coco(boxed, names)


def yolo_to_coco(labels_dir: str | Path, images_dir: str | Path, class_names: list[str]) -> dict:
    """Read YOLO txt labels (one file per image, same stem) into a COCO dict.

    Every image in ``images_dir`` becomes an image (one without a label file has no boxes);
    a label file without an image is an error.
    """
    if not Path(labels_dir).is_dir():
        raise FileNotFoundError(f"{labels_dir}: labels folder not found")
    if not any(Path(labels_dir).glob("*.txt")):
        raise AnnotationImportError(f"{labels_dir}: no .txt label files in the labels folder")
    image_files = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not image_files:
        raise AnnotationImportError(f"{images_dir}: no image files")
    stems = {p.stem for p in image_files}
    orphans = sorted(p.name for p in Path(labels_dir).glob("*.txt") if p.stem not in stems)
    if orphans:
        raise AnnotationImportError(f"{labels_dir}: label files without an image in {images_dir}: {orphans[:5]}")
    records: list[Record] = []
    for image_path in image_files:
        width, height = _image_size(image_path)
        boxes: list[tuple[int, list[float]]] = []
        records.append((image_path.name, width, height, boxes))
        label_path = Path(labels_dir) / f"{image_path.stem}.txt"
        if not label_path.is_file():
            continue
        for line_no, line in enumerate(label_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{label_path}: line {line_no}"
            fields = line.split()
            if len(fields) != 5:
                raise AnnotationImportError(
                    f"{where}: expected 'class cx cy w h' (5 fields), got {len(fields)}: {line.strip()!r}"
                )
            try:
                cls = int(fields[0])
            except ValueError:
                raise AnnotationImportError(f"{where}: class must be an integer index, got {fields[0]!r}") from None
            if not 0 <= cls < len(class_names):
                raise AnnotationImportError(
                    f"{where}: class index {cls} outside 0..{len(class_names) - 1} ({len(class_names)} names)"
                )
            cx, cy, w, h = (_number(v, where, k) for v, k in zip(fields[1:], ("cx", "cy", "w", "h"), strict=True))
            for key, value in (("cx", cx), ("cy", cy), ("w", w), ("h", h)):
                if not 0 <= value <= 1:
                    raise AnnotationImportError(
                        f"{where}: {key} = {value:g} is outside [0, 1]: YOLO coordinates are fractions of the "
                        "image size (pixel coordinates?)"
                    )
            bw, bh = w * width, h * height
            boxes.append((cls + 1, [cx * width - bw / 2, cy * height - bh / 2, bw, bh]))
    return _coco(records, class_names)
