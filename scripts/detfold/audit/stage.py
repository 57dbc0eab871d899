"""Stage audit (workflow/audit.smk): what its rule scripts call (read inputs, call the library, write outputs)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from detfold.audit import checks
from detfold.core.coco import Coco, check_coco, is_labelled, load_coco, require_content, write_coco
from detfold.core.gallery import write_findings_gallery
from detfold.core.io import write_json

log = logging.getLogger(__name__)


def run_audit(
    train_annotations: str,
    train_images: str,
    test_annotations: str | None,
    test_images: str | None,
    settings: dict[str, Any],
    overrides: str | None,
    out_train: str,
    out_test: str,
    out_findings: str,
    out_summary: str,
    out_gallery: str,
) -> None:
    """Validate both splits (structure and image files), run the checks, apply the policy and a
    person's overrides, and write the cleaned files, findings, summary and gallery.

    An unlabelled test set (a COCO file without annotations, or a text file of image file
    names) only has its image files checked; without a test set the test file lists no image.
    """
    policy = checks.AuditPolicy.from_config(settings["checks"])
    decisions = checks.read_overrides(overrides)
    train = load_coco(train_annotations)
    if test_annotations is None:
        test = Coco({"images": [], "annotations": [], "categories": train.categories}, path="no test set")
    elif str(test_annotations).endswith(".txt"):
        test = checks.coco_from_image_list(test_annotations, test_images, train.categories)
    else:
        test = load_coco(test_annotations, require_annotations=False)
    before = {"train": train, "test": test}
    images = {"train": train_images, "test": test_images}
    after, findings = audit_splits(before, images, policy, decisions)
    write_audit(before, after, findings, images, out_findings, out_summary, out_gallery)
    write_coco(after["test"], out_test)
    write_coco(after["train"], out_train)


def audit_splits(
    before: dict[str, Coco],
    images: dict[str, str | None],
    policy: checks.AuditPolicy,
    decisions: list[checks.Override],
) -> tuple[dict[str, Coco], list[checks.Finding]]:
    """Check each split's image files (in ``images[split]``), then audit each labelled split
    (an unlabelled one is copied as it is): the cleaned splits and every finding. A labelled
    test split must have the train split's classes, and the train split images and boxes."""
    train, test = before["train"], before.get("test")
    require_content(train, "to audit or train on")
    for split, coco in before.items():
        folder = images[split]
        if folder is not None:
            checks.check_image_files(coco, folder)
        elif coco.images:
            raise ValueError(f"{coco.path}: {len(coco.images)} images but no image folder for the {split} split")
    if test is not None and train.class_names != test.class_names and is_labelled(test):
        raise ValueError(f"{test.path}: categories {test.class_names} differ from {train.path}: {train.class_names}")
    after: dict[str, Coco] = {}
    findings: list[checks.Finding] = []
    for split, coco in before.items():
        if split == "test" and not is_labelled(coco):
            after[split] = coco.subset(coco.image_ids)
            continue
        after[split], found = checks.audit_coco(coco, policy, split, decisions)
        findings += found
    return after, findings


def write_audit(
    before: dict[str, Coco],
    after: dict[str, Coco],
    findings: list[checks.Finding],
    images: dict[str, str | None],
    out_findings: str | Path,
    out_summary: str | Path,
    out_gallery: str | Path,
) -> None:
    """The findings CSV, the summary (counts per check, images and boxes before and after per
    split) and the gallery of findings."""
    write_findings_gallery(findings, before, images, out_gallery)
    checks.write_findings(findings, out_findings)
    write_json(out_summary, checks.summarise(before, after, findings))


def run_import(
    fmt: str, source: str, images: str, class_names: str | None, out: str, difficult: str = "ignore"
) -> None:
    """Convert VOC or YOLO annotations into a checked COCO file (``fmt`` is voc or yolo;
    ``difficult``: what VOC's difficult boxes become, see :func:`convert.voc_to_coco`)."""
    from detfold.audit import convert

    names = convert.read_class_names(class_names, by_line=fmt == "yolo") if class_names else None
    if fmt == "voc":
        data = convert.voc_to_coco(source, images, names, difficult)
    elif fmt == "yolo":
        if names is None:
            raise ValueError("data.class_names is needed for YOLO labels (one class name per line)")
        data = convert.yolo_to_coco(source, images, names)
    else:
        raise ValueError(f"data.format must be coco, voc or yolo, got {fmt!r}")
    write_coco(check_coco(data, out), out)
    log.info("imported %s: %d images, %d boxes", source, len(data["images"]), len(data["annotations"]))
