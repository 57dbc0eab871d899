"""Ground-truth audit: find bad boxes and images, apply the configured policy, report findings.

Boxes are COCO ``xywh_abs``. Each check has a threshold and an action:
``flag`` (keep, report), ``drop_box``, ``drop_image`` (the whole image leaves the dataset) or
``clip`` (``outside_image`` only: the box is cut to the image and the finding says by how
much). A person's decisions in an overrides CSV (``keep`` / ``drop``) win over the policy.
Every finding is one row of ``findings.csv``; nothing is changed without a row saying so.
"""

from __future__ import annotations

import csv
import logging
import math
import operator
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from detfold.audit.convert import listed_lines
from detfold.core.coco import Coco
from detfold.core.io import atomic_open, read_text

log = logging.getLogger(__name__)

ACTIONS = ("flag", "drop_box", "drop_image", "clip")
_NO_CLIP = ACTIONS[:3]

#: check -> (what the threshold means, default threshold, default action, allowed actions)
CHECKS: dict[str, tuple[str, float, str, tuple[str, ...]]] = {
    "degenerate": ("w or h <= threshold px", 0.0, "drop_box", _NO_CLIP),
    "outside_image": ("px past the border > threshold", 0.0, "clip", ACTIONS),
    "tiny": ("shorter side < threshold px", 2.0, "flag", _NO_CLIP),
    "whole_image": ("box area / image area >= threshold", 0.9, "flag", _NO_CLIP),
    "extreme_aspect": ("max(w/h, h/w) >= threshold", 8.0, "flag", _NO_CLIP),
    "duplicate": ("same-class IoU >= threshold", 0.8, "flag", _NO_CLIP),
    "cross_class_overlap": ("other-class IoU >= threshold", 0.8, "flag", _NO_CLIP),
    "empty_image": ("image has no box left", 0.0, "flag", ("flag", "drop_image")),
    "size_outlier": ("|robust z| of log area in its class >= threshold", 6.0, "flag", _NO_CLIP),
}
#: check -> the thresholds it takes: (lowest, highest, whether the lowest itself is allowed);
#: ``empty_image`` takes none (an image with no box left)
THRESHOLDS: dict[str, tuple[float, float, bool]] = {
    "degenerate": (0.0, math.inf, True),
    "outside_image": (0.0, math.inf, True),
    "tiny": (0.0, math.inf, True),
    "whole_image": (0.0, 1.0, False),
    "extreme_aspect": (1.0, math.inf, True),
    "duplicate": (0.0, 1.0, False),
    "cross_class_overlap": (0.0, 1.0, False),
    "size_outlier": (0.0, math.inf, False),
}
#: classes with fewer boxes than this get no size-outlier check (no distribution to compare to)
MIN_BOXES_FOR_SIZE_STATS = 10


@dataclass(frozen=True)
class Finding:
    split: str
    image_id: int
    ann_id: int | None
    file_name: str
    category: str
    check: str
    value: float
    threshold: float
    action: str
    related_ann_id: int | None = None


#: the columns of findings.csv, in order
FINDING_FIELDS = tuple(f.name for f in fields(Finding))


@dataclass(frozen=True)
class CheckRule:
    threshold: float
    action: str


def _default_rules() -> dict[str, CheckRule]:
    return {name: CheckRule(threshold, action) for name, (_, threshold, action, _) in CHECKS.items()}


@dataclass
class AuditPolicy:
    """Threshold and action per check (defaults in :data:`CHECKS`)."""

    rules: dict[str, CheckRule] = field(default_factory=_default_rules)

    @classmethod
    def from_config(cls, checks: dict[str, dict[str, Any]] | None) -> AuditPolicy:
        """Build from ``{check: {threshold, action}}`` (a check left out keeps its default;
        :func:`check_rule` refuses a bad one, naming ``audit.checks.NAME``)."""
        rules = _default_rules()
        for name, spec in (checks or {}).items():
            rules[name] = check_rule(name, spec)
        return cls(rules)


def check_rule(name: str, spec: dict[str, Any], option: str | None = None) -> CheckRule:
    """The rule ``spec`` (``threshold``, ``action``; one left out keeps its default) makes of
    check ``name``; ``ValueError`` naming the config key (``audit.checks.NAME.KEY``), or
    ``option`` when given (a command-line option), and the value: an unknown check, key or
    action, a threshold that is not a number in the check's range (:data:`THRESHOLDS`), or one
    given to a check that takes none."""

    def where(key: str) -> str:
        return f"audit.checks.{name}.{key} =" if option is None else f"{option}: {key}"

    if name not in CHECKS:
        raise ValueError(f"{option or 'audit.checks'}: unknown check {name!r}; known: {list(CHECKS)}")
    unknown = set(spec) - {"threshold", "action"}
    if unknown:
        raise ValueError(f"audit.checks.{name}: unknown key(s) {sorted(unknown)}; allowed: threshold, action")
    meaning, threshold, action, actions = CHECKS[name]
    action = spec.get("action", action)
    if action not in actions:
        clip = "; clip is for outside_image only" if action == "clip" else ""
        raise ValueError(f"{where('action')} {action!r} is not one of {list(actions)} (check {name}){clip}")
    if "threshold" not in spec:
        return CheckRule(threshold, action)
    if name not in THRESHOLDS:
        raise ValueError(
            f"{where('threshold')} {spec['threshold']!r} does nothing: {name} ({meaning}) takes no threshold, "
            "only an action"
        )
    low, high, low_allowed = THRESHOLDS[name]
    value = spec["threshold"]
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not low <= value <= high or (value == low and not low_allowed):
        allowed = f"{'>=' if low_allowed else '>'} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        what = "is out of range" if number else "is not a finite number"
        raise ValueError(f"{where('threshold')} {value!r} {what}: must be a number {allowed} ({meaning})")
    return CheckRule(float(value), action)


@dataclass(frozen=True)
class Override:
    """A person's decision: ``keep`` a box whatever the checks say, or ``drop`` a box or image."""

    decision: str
    ann_id: int | None
    image_id: int | None
    note: str = ""


#: float noise allowed past the border before a box counts as outside_image (normalised
#: coordinates exported with 6 decimals land up to ~0.0005 px past the edge of a 1000 px image)
OUTSIDE_TOLERANCE_PX = 0.01


class ImageFileError(ValueError):
    """An image listed in a COCO file is missing, unreadable or of another size."""


#: EXIF orientations under which mmcv (OpenCV) loads an image rotated or mirrored
EXIF_TURNED = {2: "mirrored", 3: "rotated 180", 4: "flipped", 5: "transposed", 6: "rotated 90", 7: "transversed"}
EXIF_TURNED[8] = "rotated 270"


def check_image_files(coco: Coco, images_dir: str | Path) -> list[str]:
    """Check every image file, decoded in full (a truncated or corrupt file fails here, not in
    training); raise one error listing those missing, unreadable, mis-sized or carrying an EXIF
    orientation. mmcv applies EXIF orientation when it loads an image (OpenCV does), so such an
    image would be trained rotated against boxes drawn on its stored pixels: it is refused,
    with the fix in the message, rather than normalised behind the user's back.

    Images without ``width``/``height`` get them from the file; the returned notes say so.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise ImageFileError(f"{folder}: {what} (the images of {coco.path} are looked for there)")
    problems, notes = [], []
    for i, im in enumerate(coco.images):
        problem, size = _image_problem(coco, i, folder / im["file_name"])
        if problem is not None:
            problems.append(problem)
        elif "width" not in im or "height" not in im:
            im["width"], im["height"] = size
            notes.append(
                f"{coco.path}: image id {im['id']} had no width/height; read {size[0]}x{size[1]} from its file"
            )
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ImageFileError("\n".join(shown))
    for note in notes:
        log.warning(note)
    return notes


def _image_problem(coco: Coco, i: int, path: Path) -> tuple[str | None, tuple[int, int]]:
    """What is wrong with the file of ``coco.images[i]`` (None: nothing) and its stored size
    (width, height). The JSON's size and the file's are both named, and with an EXIF
    orientation, in which frame the JSON's size is."""
    from PIL import Image, UnidentifiedImageError

    im = coco.images[i]
    try:
        with Image.open(path) as handle:
            size = handle.size
            orientation = handle.getexif().get(0x0112, 1)
            handle.load()  # decode every pixel: truncated files raise here
    except FileNotFoundError:
        return f"{path}: image file missing (image id {im['id']} in {coco.path})", (0, 0)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return f"{path}: image file unreadable ({err})", (0, 0)
    stored = f"{size[0]}x{size[1]}"
    record = f"{coco.path} images[{i}] (id {im['id']})"
    given = f"; {record} gives {im['width']}x{im['height']}" if "width" in im and "height" in im else ""
    if orientation in EXIF_TURNED:
        upright = f"{size[1]}x{size[0]}" if orientation >= 5 else stored  # orientations 5-8 swap width and height
        return (
            f"{path}: EXIF orientation {orientation} ({EXIF_TURNED[orientation]}): pixels stored {stored} px, "
            f"shown upright {upright}{given}; mmcv would load it turned, against boxes on the stored pixels: save "
            "it upright (PIL.ImageOps.exif_transpose) with its boxes and width/height in that frame, or remove the tag"
        ), size
    if given and (im["width"], im["height"]) != size:
        swapped = " (width and height swapped)" if (im["height"], im["width"]) == size else ""
        return (
            f"{path}: the image file is {stored} px (width x height) but {record} says width {im['width']}, "
            f"height {im['height']}{swapped}; correct the JSON or the file"
        ), size
    return None, size


def coco_from_image_list(path: str | Path, images_dir: str | Path | None, categories: list[dict[str, Any]]) -> Coco:
    """An unlabelled test set given as a text file of image file names (one per line, relative to
    ``images_dir``; blank lines and ``#`` comments skipped): images get ids 1..n in file order;
    their sizes are read from the files by :func:`check_image_files`."""
    first_line: dict[str, int] = {}  # file name -> line, in file order
    for n, name in listed_lines(path):
        if name in first_line:
            raise ValueError(f"{path}: line {n}: {name!r} is listed twice (first on line {first_line[name]})")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{path}: line {n}: {name!r} must be relative to data.test_images, without '..'")
        first_line[name] = n
    if not first_line:
        raise ValueError(f"{path}: lists no image file name (one per line)")
    if images_dir is None:
        raise ValueError("data.test_images is needed with a test image list")
    images = [{"id": i, "file_name": name} for i, name in enumerate(first_line, start=1)]
    return Coco({"images": images, "annotations": [], "categories": categories}, path=str(path))


def iou_matrix_xywh(boxes_xywh: np.ndarray) -> np.ndarray:
    """(n, 4) xywh boxes -> (n, n) pairwise IoU (0 where the union is empty)."""
    x1, y1 = boxes_xywh[:, 0], boxes_xywh[:, 1]
    x2, y2 = x1 + boxes_xywh[:, 2], y1 + boxes_xywh[:, 3]
    iw = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
    inter = iw * ih
    area = np.clip(boxes_xywh[:, 2], 0, None) * np.clip(boxes_xywh[:, 3], 0, None)
    union = area[:, None] + area[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def robust_z(values: np.ndarray) -> np.ndarray:
    """Robust z-score: 0.6745 (x - median) / MAD; zeros when the MAD is 0."""
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    if mad == 0:
        return np.zeros_like(values)
    return 0.6745 * (values - median) / mad


@dataclass
class _Ledger:
    """One split's findings as the checks add them, and the boxes and images they drop."""

    split: str
    policy: AuditPolicy
    names: dict[int, str]  # category id -> class name
    keep_anns: set[int]  # a person's "keep": reported, never dropped
    findings: list[Finding] = field(default_factory=list)
    dropped_anns: set[int] = field(default_factory=set)
    dropped_images: set[int] = field(default_factory=set)

    def add(
        self, ann: dict[str, Any] | None, image: dict[str, Any], check: str, value: float, related: int | None = None
    ) -> str:
        """Record a finding of ``check`` with the policy's action (a kept box: "keep (override)");
        apply a drop. Returns the action."""
        rule = self.policy.rules[check]
        action = "keep (override)" if ann is not None and ann["id"] in self.keep_anns else rule.action
        self._record(Finding(*self._where(image, ann), check, round(float(value), 4), rule.threshold, action, related))
        return action

    def manual(self, image: dict[str, Any], ann: dict[str, Any] | None) -> None:
        """A person's "drop" of a box (``ann``) or of the whole image (``ann`` None)."""
        action = "drop_image" if ann is None else "drop_box"
        self._record(Finding(*self._where(image, ann), "manual", 0.0, 0.0, action))

    def _where(self, image: dict[str, Any], ann: dict[str, Any] | None) -> tuple[str, int, int | None, str, str]:
        """A finding's split, image id, box id, file name and class."""
        category, ann_id = ("", None) if ann is None else (self.names[ann["category_id"]], ann["id"])
        return self.split, image["id"], ann_id, image["file_name"], category

    def _record(self, finding: Finding) -> None:
        self.findings.append(finding)
        if finding.action == "drop_box" and finding.ann_id is not None:
            self.dropped_anns.add(finding.ann_id)
        elif finding.action == "drop_image":
            self.dropped_images.add(finding.image_id)

    def clipped_away(self, ann: dict[str, Any]) -> None:
        """The last finding's clip left nothing of the box inside the image: the box is dropped."""
        self.findings[-1] = replace(self.findings[-1], action="drop_box (clip left nothing)")
        self.dropped_anns.add(ann["id"])


def _outside(box: list[float], image: dict[str, Any]) -> float:
    """How far (px) the box reaches past the image border (negative: inside)."""
    x, y, w, h = box
    return max(-x, -y, x + w - image["width"], y + h - image["height"])


#: the checks of one box (xywh_abs) in its image, in the order they run: what each measures,
#: and when that value fails the threshold
BOX_CHECKS: dict[str, tuple[Callable[[list[float], dict[str, Any]], float], Callable[[float, float], bool]]] = {
    "degenerate": (lambda box, image: min(box[2], box[3]), operator.le),
    "outside_image": (_outside, lambda value, threshold: value > threshold + OUTSIDE_TOLERANCE_PX),
    "tiny": (lambda box, image: min(box[2], box[3]), operator.lt),
    "whole_image": (lambda box, image: box[2] * box[3] / (image["width"] * image["height"]), operator.ge),
    "extreme_aspect": (lambda box, image: max(box[2] / box[3], box[3] / box[2]), operator.ge),
}
#: the checks of two boxes of one image: same class or not
PAIR_CHECKS = {"duplicate": True, "cross_class_overlap": False}


def _clip(ann: dict[str, Any], image: dict[str, Any]) -> bool:
    """Cut the box to the image (bbox and area updated); False when nothing of it is inside."""
    x, y, w, h = ann["bbox"]
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, image["width"]), min(y + h, image["height"])
    if x2 <= x1 or y2 <= y1:
        return False
    ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    ann["area"] = (x2 - x1) * (y2 - y1)
    return True


def _check_box(ledger: _Ledger, ann: dict[str, Any], image: dict[str, Any]) -> bool:
    """Run :data:`BOX_CHECKS` on one box; True when it stays for the checks between boxes (a
    degenerate box, or one that clipping leaves nothing of, does not; a clipped box is checked
    as clipped)."""
    for check, (measure, fails) in BOX_CHECKS.items():
        value = measure(ann["bbox"], image)
        if not fails(value, ledger.policy.rules[check].threshold):
            continue
        action = ledger.add(ann, image, check, value)
        if check == "degenerate":
            return False
        if action == "clip" and not _clip(ann, image):
            ledger.clipped_away(ann)
            return False
    return True


def _check_pairs(ledger: _Ledger, boxes: list[dict[str, Any]], images: dict[int, dict[str, Any]]) -> None:
    """:data:`PAIR_CHECKS`, image by image: the later box of each overlapping pair is reported,
    the earlier one is its related box."""
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in boxes:
        by_image[ann["image_id"]].append(ann)
    for image_id, anns in by_image.items():
        if len(anns) < 2:
            continue
        iou = np.triu(iou_matrix_xywh(np.array([a["bbox"] for a in anns], dtype=float)), k=1)
        cats = np.array([a["category_id"] for a in anns])
        same = cats[:, None] == cats[None]
        for check, same_class in PAIR_CHECKS.items():
            for i, j in np.argwhere((iou >= ledger.policy.rules[check].threshold) & (same == same_class)):
                ledger.add(anns[j], images[image_id], check, iou[i, j], anns[i]["id"])


def _check_sizes(ledger: _Ledger, boxes: list[dict[str, Any]], images: dict[int, dict[str, Any]]) -> None:
    """``size_outlier``: the robust z-score of log(area) within the box's class (classes of at
    least :data:`MIN_BOXES_FOR_SIZE_STATS` boxes)."""
    by_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in boxes:
        by_class[ann["category_id"]].append(ann)
    for anns in by_class.values():
        if len(anns) < MIN_BOXES_FOR_SIZE_STATS:
            continue
        z = robust_z(np.log([a["bbox"][2] * a["bbox"][3] for a in anns]))
        for ann, score in zip(anns, z, strict=True):
            if abs(score) >= ledger.policy.rules["size_outlier"].threshold:
                ledger.add(ann, images[ann["image_id"]], "size_outlier", score)


def audit_coco(
    coco: Coco, policy: AuditPolicy | None = None, split: str = "train", overrides: list[Override] | None = None
) -> tuple[Coco, list[Finding]]:
    """Run every check on ``coco``; return the cleaned copy and the findings (original ids kept).

    The box checks run first (:data:`BOX_CHECKS`), then those between the boxes left
    (:data:`PAIR_CHECKS`, ``size_outlier``), then ``empty_image``; a person's drops are applied
    first and a person's keeps win over every check.
    """
    overrides = overrides or []
    known_anns = {a["id"] for a in coco.annotations}
    for o in overrides:
        if o.ann_id is not None and o.ann_id not in known_anns and split == "train":
            log.warning("override for ann_id %s: no such annotation in %s", o.ann_id, coco.path)
    names = {cat["id"]: cat["name"] for cat in coco.categories}
    keep_anns = {o.ann_id for o in overrides if o.decision == "keep" and o.ann_id is not None}
    ledger = _Ledger(split, policy or AuditPolicy(), names, keep_anns)
    drop_anns = {o.ann_id for o in overrides if o.decision == "drop" and o.ann_id is not None}
    drop_images = {o.image_id for o in overrides if o.decision == "drop" and o.ann_id is None}
    clean = coco.subset(coco.image_ids)
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in clean.annotations:
        by_image[ann["image_id"]].append(ann)
    boxes = []  # those left for the checks between boxes
    for im in clean.images:
        for ann in by_image[im["id"]]:
            if ann["id"] in drop_anns:
                ledger.manual(im, ann)
            elif _check_box(ledger, ann, im):
                boxes.append(ann)
    images = {im["id"]: im for im in clean.images}
    _check_pairs(ledger, boxes, images)
    _check_sizes(ledger, boxes, images)
    for im in clean.images:
        if im["id"] in drop_images:
            ledger.manual(im, None)
        elif all(a["id"] in ledger.dropped_anns for a in by_image[im["id"]]):
            ledger.add(None, im, "empty_image", 0)
    return _cleaned(coco, clean, ledger), ledger.findings


def _cleaned(coco: Coco, clean: Coco, ledger: _Ledger) -> Coco:
    """``clean`` without the dropped boxes and images, every box with an area and iscrowd."""
    clean.data["images"] = [im for im in clean.images if im["id"] not in ledger.dropped_images]
    clean.data["annotations"] = [
        a
        for a in clean.annotations
        if a["id"] not in ledger.dropped_anns and a["image_id"] not in ledger.dropped_images
    ]
    for ann in clean.annotations:
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
    log.info(
        "%s: %d images, %d boxes -> %d images, %d boxes; %d findings",
        ledger.split,
        len(coco.images),
        len(coco.annotations),
        len(clean.images),
        len(clean.annotations),
        len(ledger.findings),
    )
    return Coco(clean.data, path=coco.path)


def read_overrides(path: str | Path | None) -> list[Override]:
    """Read a person's decisions: CSV with columns ann_id, image_id, decision (keep|drop), note.

    ``keep`` needs an ann_id; ``drop`` takes an ann_id (that box) or only an image_id (the image).
    """
    if not path:
        return []
    if not Path(path).is_file():
        what = "is a folder, expected a CSV file" if Path(path).is_dir() else "not found"
        raise FileNotFoundError(f"overrides file {str(path)!r} {what}")
    overrides = []
    lines = read_text(path).splitlines(keepends=True)  # a spreadsheet's byte-order mark is fine
    rows = list(csv.DictReader(line for line in lines if not line.lstrip().startswith("#")))
    for n, row in enumerate(rows, start=2):
        where = f"{path}: row {n}"
        decision = (row.get("decision") or "").strip()
        if decision not in ("keep", "drop"):
            raise ValueError(f"{where}: decision must be 'keep' or 'drop', got {decision!r}")
        ann_id, image_id = _csv_int(row, "ann_id", where), _csv_int(row, "image_id", where)
        if ann_id is None and (decision == "keep" or image_id is None):
            raise ValueError(
                f"{where}: '{decision}' needs an ann_id" + ("" if decision == "keep" else " or an image_id")
            )
        overrides.append(Override(decision, ann_id, image_id, (row.get("note") or "").strip()))
    return overrides


def _csv_int(row: dict[str, str], key: str, where: str) -> int | None:
    text = (row.get(key) or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: {key} must be an integer, got {text!r}") from None


def write_findings(findings: list[Finding], path: str | Path) -> None:
    """One CSV row per finding (the header is always written, so 'no findings' is explicit)."""
    with atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=FINDING_FIELDS, lineterminator="\n")
        writer.writeheader()
        for finding in findings:
            writer.writerow(asdict(finding))


def summarise(before: dict[str, Coco], after: dict[str, Coco], findings: list[Finding]) -> dict[str, Any]:
    """Counts per check (by action and by class), and images/boxes before and after, per split."""
    per_check: dict[str, dict[str, Any]] = {}
    for f in findings:
        entry = per_check.setdefault(f.check, {"total": 0, "by_action": {}, "by_class": {}, "by_split": {}})
        entry["total"] += 1
        for key, value in (("by_action", f.action), ("by_class", f.category or "(image)"), ("by_split", f.split)):
            entry[key][value] = entry[key].get(value, 0) + 1
    return {
        "splits": {
            split: {
                "images_before": len(before[split].images),
                "images_after": len(after[split].images),
                "boxes_before": len(before[split].annotations),
                "boxes_after": len(after[split].annotations),
            }
            for split in before
        },
        "findings_per_check": dict(sorted(per_check.items())),
        "checks": {name: meaning for name, (meaning, *_rest) in CHECKS.items()},
    }
