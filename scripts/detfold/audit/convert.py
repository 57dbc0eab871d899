"""Import Pascal VOC XML and YOLO txt annotations into COCO.

Conventions: VOC ``bndbox`` (xmin, ymin, xmax, ymax) becomes ``bbox = [xmin, ymin,
xmax - xmin, ymax - ymin]`` in pixels (no +1, no clipping: the audit decides about boxes past
the border). YOLO lines are ``class cx cy w h`` normalised by the image size. Images get ids
1..N in file-name order and annotations ids 1..M in (image, object) order. Categories keep
the order of the class-names list (or, for VOC without one, sorted names). Class names lose
surrounding whitespace; names that differ only in case are one class only where the class
names list says so (it lists one spelling).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detfold.core.coco import MAX_COORDINATE
from detfold.core.io import parse_yaml

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: what a VOC ``<difficult>1</difficult>`` box becomes: iscrowd 1, an ordinary box, or nothing
DIFFICULT_CHOICES = ("ignore", "keep", "drop")
LIST_ONCE = "one class or two? list it once, or spell the two classes apart"
VOC_CASE_HINT = (
    "one class or two? fix the XML files, or list one spelling in a class names file (--classes, "
    "data.class_names) to take both as that class"
)
#: keys of an Ultralytics data.yaml; a names file with one of them is a data.yaml
DATA_YAML_KEYS = ("path", "train", "val", "test", "nc", "names", "download")
INDEXED_LINE = re.compile(r"(\d+)\s*:(.*)")


class AnnotationImportError(ValueError):
    """An annotation file of another format is malformed; the message names file and value."""


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 text file (a byte-order mark is fine); errors name the file and ``what`` it is."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise AnnotationImportError(f"{path}: {what} is a folder, not a file") from None
    except UnicodeDecodeError as err:
        byte = err.object[err.start : err.start + 1].hex()
        raise AnnotationImportError(
            f"{path}: {what} is not UTF-8 text (byte 0x{byte} at offset {err.start}): save it as UTF-8"
        ) from None


def listed_lines(path: str | Path, what: str = "text file") -> list[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 text file (a byte-order mark is fine) that is
    neither blank nor a ``#`` comment, stripped."""
    lines = [(n, line.strip()) for n, line in enumerate(read_text(path, what).splitlines(), 1)]
    return [(n, text) for n, text in lines if text and not text.startswith("#")]


# --- class names -------------------------------------------------------------------------------


def read_class_names(path: str | Path, by_line: bool = False) -> list[str]:
    """The class names in index order, each stripped of surrounding whitespace, from one of:
    a text file of one name per line (blank lines and # comments ignored); a text file of
    ``N: name`` lines (indices 0..n-1, each once); an Ultralytics data.yaml (``names:`` as a
    list or an index -> name mapping). Raises, naming the line, on none, duplicates, names that
    differ only in case, or a file that is none of these. ``by_line`` (YOLO, whose class index
    is the line number of a plain list): a blank or comment line before the last name is an
    error, it would shift every later class."""
    text = read_text(path, "class names file")
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    kept = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if Path(path).suffix.lower() in (".yaml", ".yml") or any(_yaml_key(line) == "names" for _, line in kept):
        named = _data_yaml_names(path, text)
    elif any(INDEXED_LINE.fullmatch(line) for _, line in kept):
        named = _indexed_names(path, kept)
    else:
        named = _plain_names(path, kept, by_line)
    if not named:
        raise AnnotationImportError(f"{path}: no class names in the file")
    _check_distinct(path, named)
    return [name for _, name in named]


def _yaml_key(line: str) -> str | None:
    """The key of a top-level ``key: ...`` YAML line, or None."""
    match = re.fullmatch(r"([A-Za-z_][\w-]*)\s*:(\s.*)?", line)
    return match.group(1) if match else None


def _plain_names(path: str | Path, kept: list[tuple[int, str]], by_line: bool) -> list[tuple[str, str]]:
    """(where, name) per line of a one-name-per-line file."""
    for n, line in kept:
        if _yaml_key(line) in DATA_YAML_KEYS:
            raise AnnotationImportError(
                f"{path}: line {n} {line!r} looks like a YOLO data.yaml, but the file has no 'names:' key: "
                "give a data.yaml with names:, or a file of one class name per line"
            )
    if kept and kept[0][1][0] in "{[":
        raise AnnotationImportError(
            f"{path}: line {kept[0][0]} starts with {kept[0][1][0]!r}: a JSON file? give one class name per line, "
            "'N: name' lines, or a YOLO data.yaml"
        )
    if kept and all(line.startswith("- ") for _, line in kept):
        raise AnnotationImportError(
            f"{path}: line {kept[0][0]} {kept[0][1]!r} looks like a YAML list: write one class name per line "
            "without '- ', or give a data.yaml with 'names:'"
        )
    if by_line and kept:
        gaps = [n for n in range(1, kept[-1][0]) if n not in {line for line, _ in kept}]
        if gaps:
            raise AnnotationImportError(
                f"{path}: line {gaps[0]} is blank or a comment, but YOLO class indices are line numbers: "
                "it would shift every later class; remove it"
            )
    return [(f"line {n}", name) for n, name in kept]


def _indexed_names(path: str | Path, kept: list[tuple[int, str]]) -> list[tuple[str, str]]:
    """(where, name) in index order from ``N: name`` lines; indices 0..n-1, each once."""
    by_index: dict[int, tuple[int, str]] = {}
    for n, line in kept:
        match = INDEXED_LINE.fullmatch(line)
        if match is None:
            raise AnnotationImportError(
                f"{path}: line {n} {line!r} is not 'N: name' like the other lines: write every line as "
                "'N: name', or every line as a bare name"
            )
        index, name = int(match.group(1)), _unquote(match.group(2).strip())
        if index in by_index:
            raise AnnotationImportError(f"{path}: line {n}: index {index} already given on line {by_index[index][0]}")
        if not name:
            raise AnnotationImportError(f"{path}: line {n}: no class name after '{index}:'")
        by_index[index] = (n, name)
    for index, (n, _) in by_index.items():
        if index >= len(by_index):
            raise AnnotationImportError(
                f"{path}: line {n}: index {index} is outside 0..{len(by_index) - 1}: the indices must be "
                f"0..{len(by_index) - 1}, each once ({len(by_index)} names)"
            )
    return [(f"line {by_index[i][0]}", by_index[i][1]) for i in range(len(by_index))]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].strip()
    return text


def _data_yaml_names(path: str | Path, text: str) -> list[tuple[str, str]]:
    """(where, name) in index order from an Ultralytics data.yaml's ``names:`` (a list, or a
    mapping of the indices 0..n-1; or that mapping alone) and its optional ``nc:``."""
    data = _load_yaml(path, text)
    if isinstance(data, dict) and data and all(isinstance(k, int) and not isinstance(k, bool) for k in data):
        data = {"names": data}  # the mapping alone
    if not isinstance(data, dict) or "names" not in data:
        found = f"keys {sorted(map(str, data))}" if isinstance(data, dict) else "not a mapping"
        raise AnnotationImportError(
            f"{path}: no 'names:' key ({found}): a YOLO data.yaml lists the class names under names:, as a "
            "list or as 'N: name' lines (a plain list of names, one per line, goes in a .txt file)"
        )
    names = data["names"]
    if isinstance(names, dict):
        bad = [k for k in names if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(names)]
        if bad:
            raise AnnotationImportError(
                f"{path}: names: key {bad[0]!r} is not an index 0..{len(names) - 1}: the keys must be "
                f"0..{len(names) - 1}, each once ({len(names)} names)"
            )
        entries = [(f"names: {i}", names[i]) for i in range(len(names))]
    elif isinstance(names, list):
        entries = [(f"names[{i}]", name) for i, name in enumerate(names)]
    else:
        raise AnnotationImportError(f"{path}: names: must be a list or an index: name mapping, got {names!r}")
    for where, name in entries:
        if isinstance(name, bool) or not isinstance(name, str | int) or not str(name).strip():
            raise AnnotationImportError(
                f"{path}: {where} must be a class name, got {name!r} (YAML reads yes/no/on/off/null as "
                "true/false/none: quote the name)"
            )
    nc = data.get("nc")
    if nc is not None and nc != len(entries):
        raise AnnotationImportError(f"{path}: nc: {nc!r} but names: lists {len(entries)} classes")
    return [(where, str(name).strip()) for where, name in entries]


def _load_yaml(path: str | Path, text: str) -> Any:
    """Parse YAML refusing a key given twice (:func:`detfold.core.io.parse_yaml`)."""
    data, problems = parse_yaml(text, str(path))
    if problems:
        raise AnnotationImportError(problems[0])
    return data


def _check_distinct(source: str | Path, named: list[tuple[str, str]], hint: str = LIST_ONCE) -> None:
    """Refuse a name listed twice, or two names that differ only in case (one class or two?);
    ``named`` is (where, name) pairs."""
    first: dict[str, tuple[str, str]] = {}  # lower-case name -> (where, name)
    for where, name in named:
        if name.lower() not in first:
            first[name.lower()] = (where, name)
            continue
        where_first, name_first = first[name.lower()]
        if name == name_first:
            raise AnnotationImportError(f"{source}: duplicate class names [{name!r}] ({where_first} and {where})")
        pair = sorted([name, name_first])
        raise AnnotationImportError(
            f"{source}: class names that differ only in case {pair} ({where_first} {name_first!r}, {where} "
            f"{name!r}): {hint}"
        )


# --- shared ------------------------------------------------------------------------------------


def _files_in(folder: str | Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """The files of ``folder`` (not its subfolders) whose suffix is one of ``suffixes`` in any case,
    hidden files (a leading '.', e.g. macOS's ``._*``) left out; raise if the folder is missing.
    Files in subfolders are not read: a warning says how many."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found")

    def wanted(p: Path) -> bool:
        parts = p.relative_to(root).parts
        return p.suffix.lower() in suffixes and not any(s.startswith(".") or s == "__MACOSX" for s in parts)

    found = [p for p in root.rglob("*") if wanted(p) and p.is_file()]
    hidden = [p for p in root.iterdir() if p.name.startswith(".") and p.suffix.lower() in suffixes]
    if hidden:
        log.info("%s: %d hidden files skipped (e.g. %s)", folder, len(hidden), hidden[0].name)
    top = sorted(p for p in found if p.parent == root)
    nested = sorted(p for p in found if p.parent != root)
    if nested and not top:
        raise AnnotationImportError(
            f"{folder}: no {'/'.join(suffixes)} files in the {what} folder, but {len(nested)} in its subfolders "
            f"(e.g. {nested[0]}): give the folder that holds them"
        )
    if nested:
        log.warning("%s: %d files in subfolders are not read (e.g. %s)", folder, len(nested), nested[0])
    return top


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            return handle.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise AnnotationImportError(f"{path}: image file unreadable ({err})") from None


#: one box: category id, [x, y, w, h] px, iscrowd
Box = tuple[int, list[float], int]
#: one image: file name, width, height and its boxes
Record = tuple[str, int, int, list[Box]]


def _coco(records: list[Record], names: list[str]) -> dict:
    """A COCO dict: images ids 1..N in ``records`` order, annotation ids 1..M in (image, box) order."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (file_name, width, height, boxes) in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for category_id, (x, y, w, h), iscrowd in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": iscrowd,
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


# --- Pascal VOC --------------------------------------------------------------------------------


@dataclass
class VocObject:
    name: str
    coords: list[float]  # xmin, ymin, xmax, ymax
    difficult: bool
    where: str  # "file: object n"


@dataclass
class VocFile:
    path: Path
    file_name: str
    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)


def voc_to_coco(
    xml_dir: str | Path,
    images_dir: str | Path | None = None,
    class_names: list[str] | None = None,
    difficult: str = "ignore",
) -> dict:
    """Read every ``*.xml`` in ``xml_dir`` (Pascal VOC) into a COCO dict.

    A ``<size>`` that is missing or 0 is read from the image (in ``images_dir``), and a warning
    says so; any other size must be a positive whole number. Objects of a class not in
    ``class_names`` (when given; a different case of a listed name is that class) are an error.
    ``difficult`` boxes: ``ignore`` keeps them with ``iscrowd: 1``, ``keep`` as ordinary boxes,
    ``drop`` leaves them out; the log says how many.
    """
    if difficult not in DIFFICULT_CHOICES:
        raise ValueError(f"difficult must be one of {list(DIFFICULT_CHOICES)}, got {difficult!r}")
    files = _files_in(xml_dir, (".xml",), "annotations")
    if not files:
        raise AnnotationImportError(f"{xml_dir}: no .xml files (expected Pascal VOC annotations)")
    parsed = sorted((_read_voc(path, images_dir) for path in files), key=lambda f: f.file_name)
    for before, after in itertools.pairwise(parsed):
        if before.file_name == after.file_name:
            raise AnnotationImportError(
                f"{after.path}: <filename> {after.file_name!r} is also the image of {before.path}: one XML per image"
            )
    names, category_of = _voc_categories(parsed, class_names)
    records: list[Record] = []
    n_difficult = 0
    for voc in parsed:
        boxes: list[Box] = []
        for obj in voc.objects:
            n_difficult += obj.difficult
            if obj.difficult and difficult == "drop":
                continue
            x1, y1, x2, y2 = obj.coords
            iscrowd = int(obj.difficult and difficult == "ignore")
            boxes.append((category_of[obj.name], [x1, y1, x2 - x1, y2 - y1], iscrowd))
        records.append((voc.file_name, voc.width, voc.height, boxes))
    if n_difficult:
        done = {"ignore": "kept with iscrowd: 1 (ignored in training and evaluation)", "keep": "kept as ordinary boxes"}
        log.warning(
            "%s: %d boxes marked <difficult>1</difficult> %s (--difficult, data.difficult: ignore, keep or drop)",
            xml_dir,
            n_difficult,
            done.get(difficult, "dropped"),
        )
    return _coco(records, names)


def _read_voc(path: Path, images_dir: str | Path | None) -> VocFile:
    """One Pascal VOC XML file: its image's file name and size, and its objects."""
    root = _voc_root(path)
    file_name = (root.findtext("filename") or "").strip() or _guess_file_name(path, images_dir)
    if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
        raise AnnotationImportError(f"{path}: <filename> {file_name!r} must be relative to the images folder")
    width, height = _voc_size(path, root, file_name, images_dir)
    voc = VocFile(path, file_name, width, height)
    for n, obj in enumerate(root.iter("object")):
        where = f"{path}: object {n}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise AnnotationImportError(f"{where}: missing <name>")
        box = obj.find("bndbox")
        if box is None:
            raise AnnotationImportError(f"{where} ({name}): missing <bndbox>")
        coords = _voc_box(box, f"{where} ({name})")
        flag = (obj.findtext("difficult") or "0").strip()
        if flag.lower() not in ("0", "1", "false", "true"):
            raise AnnotationImportError(f"{where} ({name}): <difficult> must be 0 or 1, got {flag!r}")
        voc.objects.append(VocObject(name, coords, flag.lower() in ("1", "true"), where))
    return voc


def _voc_box(box: ET.Element, where: str) -> list[float]:
    """xmin, ymin, xmax, ymax of a ``<bndbox>``: finite, within the COCO checks' limit, max >= min."""
    keys = ("xmin", "ymin", "xmax", "ymax")
    coords = [_number(box.findtext(k), where, f"bndbox/{k}") for k in keys]
    for key, value in zip(keys, coords, strict=True):
        if abs(value) > MAX_COORDINATE:
            raise AnnotationImportError(f"{where}: bndbox/{key} = {value:g} is beyond +-{MAX_COORDINATE:.0e} px")
    for low, high in ((0, 2), (1, 3)):
        if coords[high] < coords[low]:
            raise AnnotationImportError(
                f"{where}: bndbox/{keys[high]} = {coords[high]:g} is less than {keys[low]} = {coords[low]:g}"
            )
    return coords


def _voc_root(path: Path) -> ET.Element:
    """The ``<annotation>`` element of a VOC file; a file that is not XML, not in its declared
    encoding, or of another XML format is an error."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raw = path.read_bytes()
        declared = b"encoding=" in raw.split(b"\n", 1)[0]
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            if not declared:
                raise AnnotationImportError(
                    f"{path}: not UTF-8 (byte 0x{raw[bad.start]:02x} at offset {bad.start}) and no encoding "
                    "declared in an <?xml ... encoding=...?> line: save it as UTF-8 or declare its encoding"
                ) from None
        raise AnnotationImportError(f"{path}: not valid XML ({err})") from None
    if root.tag != "annotation":
        raise AnnotationImportError(
            f"{path}: root element <{root.tag}>, expected <annotation>: a Pascal VOC file describes one image "
            "(a whole-dataset XML, e.g. CVAT's, must be exported as Pascal VOC first)"
        )
    return root


def _guess_file_name(path: Path, images_dir: str | Path | None) -> str:
    """The image of a VOC file without ``<filename>``: the image with its stem in ``images_dir``,
    else ``stem.jpg``; a warning says which."""
    if images_dir is not None and Path(images_dir).is_dir():
        same = sorted(p.name for p in Path(images_dir).glob(f"{path.stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(same) > 1:
            raise AnnotationImportError(f"{path}: no <filename>, and several images named {path.stem}: {same}")
        if not same:
            raise AnnotationImportError(f"{path}: no <filename>, and no image named {path.stem}.* in {images_dir}")
        guess = same[0]
    else:
        guess = f"{path.stem}.jpg"
    log.warning("%s: no <filename>; took %s", path, guess)
    return guess


def _voc_size(path: Path, root: ET.Element, file_name: str, images_dir: str | Path | None) -> tuple[int, int]:
    """``<size>`` width and height: positive whole numbers; missing or 0: read from the image."""
    size = root.find("size")
    given: dict[str, int | None] = {}
    for key in ("width", "height"):
        text = (size.findtext(key) or "").strip() if size is not None else ""
        try:
            value = float(text) if text else 0.0
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0 and value == int(value)):
            raise AnnotationImportError(
                f"{path}: <size><{key}> must be a positive whole number of pixels, got {text!r}"
            )
        given[key] = int(value) or None
    if given["width"] and given["height"]:
        return given["width"], given["height"]
    missing = "no <size>" if size is None else f"<size> {given['width'] or 0}x{given['height'] or 0}"
    if images_dir is None:
        raise AnnotationImportError(
            f"{path}: {missing}; give the images folder (--images) to read the size from the image"
        )
    width, height = _image_size(Path(images_dir) / file_name)
    for key, value in (("width", width), ("height", height)):
        if given[key] not in (None, value):
            raise AnnotationImportError(
                f"{path}: <size><{key}> is {given[key]}, but the image {file_name} is {width}x{height}"
            )
    log.warning("%s: %s; read %dx%d from the image %s", path, missing, width, height, file_name)
    return width, height


def _voc_categories(parsed: list[VocFile], class_names: list[str] | None) -> tuple[list[str], dict[str, int]]:
    """The class names and each object name's category id. Without ``class_names``: the sorted
    names, refusing two that differ only in case (naming where each is); with them: every name
    must be listed, in any case (a different case is logged)."""
    if class_names is None:
        first: dict[str, tuple[str, str]] = {}  # name -> (where, name), first seen
        for voc in parsed:
            for obj in voc.objects:
                first.setdefault(obj.name, (obj.where, obj.name))
        named = sorted(first.values(), key=lambda pair: pair[1])
        if not named:
            raise AnnotationImportError(
                f"{parsed[0].path.parent}: no <object> in any of the {len(parsed)} XML files, and no class names "
                "file (--classes, data.class_names): no class to import"
            )
        _check_distinct(parsed[0].path.parent, named, hint=VOC_CASE_HINT)
        class_names = [name for _, name in named]
    cat_id = {name: i for i, name in enumerate(class_names, start=1)}
    folded = {name.lower(): name for name in class_names}
    category_of: dict[str, int] = {}
    for voc in parsed:
        for obj in voc.objects:
            listed = obj.name if obj.name in cat_id else folded.get(obj.name.lower())
            if listed is None:
                raise AnnotationImportError(f"{obj.where}: class {obj.name!r} is not in the class names {class_names}")
            if listed != obj.name and obj.name not in category_of:
                log.warning("%s: class %r taken as the listed class %r", obj.where, obj.name, listed)
            category_of[obj.name] = cat_id[listed]
    return class_names, category_of


# --- YOLO --------------------------------------------------------------------------------------


def yolo_to_coco(labels_dir: str | Path, images_dir: str | Path, class_names: list[str]) -> dict:
    """Read YOLO txt labels (one file per image, same stem) into a COCO dict.

    Every image in ``images_dir`` becomes an image (one without a label file has no boxes, as
    in YOLO); a label file without an image is an error.
    """
    labels: dict[str, Path] = {}
    for label in _files_in(labels_dir, (".txt",), "labels"):
        if label.stem in labels:
            raise AnnotationImportError(
                f"{labels_dir}: {labels[label.stem].name} and {label.name} label the same image"
            )
        labels[label.stem] = label
    if not labels:
        raise AnnotationImportError(f"{labels_dir}: no .txt label files in the labels folder")
    image_files = _files_in(images_dir, IMAGE_SUFFIXES, "images")
    if not image_files:
        raise AnnotationImportError(f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    by_stem: dict[str, Path] = {}
    for image in image_files:
        if image.stem in by_stem and image.stem in labels:
            raise AnnotationImportError(
                f"{images_dir}: {by_stem[image.stem].name} and {image.name} share the name {image.stem!r}: "
                f"which one does {labels[image.stem].name} label? keep one"
            )
        by_stem[image.stem] = image
    orphans = sorted(p.name for stem, p in labels.items() if stem not in by_stem)
    if orphans:
        hint = " (classes.txt is a class list? move it out of the labels folder)" if "classes.txt" in orphans else ""
        raise AnnotationImportError(f"{labels_dir}: label files without an image in {images_dir}: {orphans[:5]}{hint}")
    records: list[Record] = []
    for image_path in image_files:
        width, height = _image_size(image_path)
        label_path = labels.get(image_path.stem)
        boxes = _yolo_boxes(label_path, width, height, len(class_names)) if label_path else []
        records.append((image_path.name, width, height, boxes))
    unlabelled = sum(p.stem not in labels for p in image_files)
    if unlabelled:
        log.info("%s: %d images have no label file: imported without boxes", images_dir, unlabelled)
    return _coco(records, class_names)


def _yolo_boxes(label_path: Path, width: int, height: int, n_classes: int) -> list[Box]:
    """The boxes of one YOLO label file, in pixels."""
    boxes: list[Box] = []
    for line_no, line in enumerate(read_text(label_path, "label file").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label_path}: line {line_no}"
        fields = line.split()
        if len(fields) != 5:
            hint = ""
            if len(fields) == 6:
                hint = ": a prediction file (with a confidence)?"
            elif len(fields) > 6:
                hint = ": a segmentation or oriented-box label? only boxes import"
            raise AnnotationImportError(
                f"{where}: expected 'class cx cy w h' (5 fields), got {len(fields)}: {line.strip()!r}{hint}"
            )
        try:
            cls = int(fields[0])
        except ValueError:
            raise AnnotationImportError(f"{where}: class must be an integer index, got {fields[0]!r}") from None
        if not 0 <= cls < n_classes:
            raise AnnotationImportError(f"{where}: class index {cls} outside 0..{n_classes - 1} ({n_classes} names)")
        cx, cy, w, h = (_number(v, where, k) for v, k in zip(fields[1:], ("cx", "cy", "w", "h"), strict=True))
        for key, value in (("cx", cx), ("cy", cy), ("w", w), ("h", h)):
            if not 0 <= value <= 1:
                raise AnnotationImportError(
                    f"{where}: {key} = {value:g} is outside [0, 1]: YOLO coordinates are fractions of the "
                    "image size (pixel coordinates?)"
                )
        bw, bh = w * width, h * height
        boxes.append((cls + 1, [cx * width - bw / 2, cy * height - bh / 2, bw, bh], 0))
    return boxes
