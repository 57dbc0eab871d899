"""Ground-truth audit: find bad boxes and missing images, apply the policy, report findings.

Boxes are COCO ``xywh_abs``. Each check yields one :class:`Finding` per offending box; the
action decides what happens to it (``flag`` keeps it, ``drop_box`` removes it).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detfold.coco import Coco
from detfold.io import atomic_open, write_json

log = logging.getLogger(__name__)

FINDING_FIELDS = ("split", "image_id", "ann_id", "file_name", "category", "check", "value", "threshold", "action")


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


@dataclass(frozen=True)
class AuditPolicy:
    """Thresholds and actions. Defaults drop what no detector can learn from and flag the rest."""

    degenerate_action: str = "drop_box"
    outside_tolerance_px: float = 0.0
    outside_action: str = "drop_box"
    duplicate_iou: float = 0.8
    duplicate_action: str = "flag"


class ImageFileError(ValueError):
    """An image listed in a COCO file is missing, unreadable or of another size."""


def check_image_files(coco: Coco, images_dir: str | Path) -> None:
    """Raise one error listing every image that is missing, unreadable or mis-sized on disk."""
    from PIL import Image, UnidentifiedImageError

    problems = []
    for im in coco.images:
        path = Path(images_dir) / im["file_name"]
        try:
            with Image.open(path) as handle:
                size = handle.size
        except FileNotFoundError:
            problems.append(f"{path}: image file missing (image id {im['id']} in {coco.path})")
            continue
        except (UnidentifiedImageError, OSError) as err:
            problems.append(f"{path}: image file unreadable ({err})")
            continue
        if "width" in im and "height" in im and (im["width"], im["height"]) != size:
            problems.append(
                f"{path}: size on disk {size[0]}x{size[1]} differs from {coco.path} "
                f"width/height {im['width']}x{im['height']}"
            )
        im.setdefault("width", size[0])
        im.setdefault("height", size[1])
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ImageFileError("\n".join(shown))


def iou_matrix_xywh(boxes_xywh: np.ndarray) -> np.ndarray:
    """(n, 4) xywh boxes -> (n, n) pairwise IoU."""
    x1, y1 = boxes_xywh[:, 0], boxes_xywh[:, 1]
    x2, y2 = x1 + boxes_xywh[:, 2], y1 + boxes_xywh[:, 3]
    iw = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
    inter = iw * ih
    area = np.clip(boxes_xywh[:, 2], 0, None) * np.clip(boxes_xywh[:, 3], 0, None)
    union = area[:, None] + area[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def audit_coco(coco: Coco, policy: AuditPolicy, split: str = "train") -> tuple[Coco, list[Finding]]:
    """Run the checks on ``coco``; return the cleaned copy and the findings (original ids kept)."""
    names = {cat["id"]: cat["name"] for cat in coco.categories}
    findings: list[Finding] = []
    dropped: set[int] = set()

    def add(im: dict[str, Any], ann: dict[str, Any], check: str, value: float, thr: float, action: str) -> None:
        findings.append(
            Finding(split, im["id"], ann["id"], im["file_name"], names[ann["category_id"]], check, value, thr, action)
        )
        if action == "drop_box":
            dropped.add(ann["id"])

    for im in coco.images:
        anns = coco.anns_of(im["id"])
        for ann in anns:
            x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                add(im, ann, "degenerate", float(min(w, h)), 0.0, policy.degenerate_action)
                continue
            outside = max(-x, -y, x + w - im["width"], y + h - im["height"])
            if outside > policy.outside_tolerance_px:
                add(im, ann, "outside_image", float(outside), policy.outside_tolerance_px, policy.outside_action)
        valid = [a for a in anns if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        if len(valid) > 1:
            iou = iou_matrix_xywh(np.array([a["bbox"] for a in valid], dtype=float))
            same = np.array([a["category_id"] for a in valid])
            pairs = np.argwhere(np.triu(iou >= policy.duplicate_iou, k=1) & (same[:, None] == same[None]))
            for i, j in pairs:
                add(
                    im, valid[j], "duplicate", round(float(iou[i, j]), 4), policy.duplicate_iou, policy.duplicate_action
                )

    clean = coco.subset(coco.image_ids)
    clean.data["annotations"] = [a for a in clean.annotations if a["id"] not in dropped]
    for ann in clean.annotations:
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
    log.info(
        "%s: %d images, %d boxes, %d findings, %d boxes dropped",
        split,
        len(coco.images),
        len(coco.annotations),
        len(findings),
        len(dropped),
    )
    return Coco(clean.data, path=coco.path), findings


def write_findings(findings: list[Finding], path: str | Path) -> None:
    """One CSV row per finding (header always written, so 'no findings' is explicit)."""
    with atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=FINDING_FIELDS, lineterminator="\n")
        writer.writeheader()
        for finding in findings:
            writer.writerow(asdict(finding))


def summarise(before: dict[str, Coco], after: dict[str, Coco], findings: list[Finding]) -> dict[str, Any]:
    """Counts per check and per split, boxes and images before/after."""
    per_check: dict[str, dict[str, int]] = {}
    for f in findings:
        per_check.setdefault(f.check, {}).setdefault(f.action, 0)
        per_check[f.check][f.action] += 1
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
        "findings_per_check": per_check,
    }


def write_summary(summary: dict[str, Any], path: str | Path) -> None:
    write_json(path, summary)
