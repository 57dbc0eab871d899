import shutil

import numpy as np
import pytest
from detfold.audit import AuditPolicy, ImageFileError, audit_coco, check_image_files, iou_matrix_xywh
from detfold.coco import load_coco


def test_finds_the_known_oddities_of_the_bundled_data(bccd, bccd_test):
    clean, findings = audit_coco(bccd, AuditPolicy(), "train")
    degenerate = sorted(f.ann_id for f in findings if f.check == "degenerate")
    assert degenerate == [3951, 4005]
    assert all(f.action == "drop_box" for f in findings if f.check == "degenerate")
    dropped = {a["id"] for a in bccd.annotations} - {a["id"] for a in clean.annotations}
    assert dropped == {3951, 4005}
    _, test_findings = audit_coco(bccd_test, AuditPolicy(), "test")
    duplicates = sorted(f.ann_id for f in findings + test_findings if f.check == "duplicate")
    # the source README's 8 near-duplicate RBC pairs (second box of each pair)
    assert duplicates == [252, 372, 1505, 1567, 3026, 3369, 3851, 4770]
    assert all(f.action == "flag" for f in findings if f.check == "duplicate")
    assert len(clean.images) == len(bccd.images)


def test_outside_boxes_are_dropped_and_measured(bccd):
    ann = bccd.annotations[0]
    im = bccd.image(ann["image_id"])
    ann["bbox"] = [im["width"] - 5, 10, 20, 20]
    clean, findings = audit_coco(bccd, AuditPolicy(), "train")
    outside = [f for f in findings if f.check == "outside_image"]
    assert [(f.ann_id, f.value) for f in outside] == [(ann["id"], 15)]
    assert ann["id"] not in {a["id"] for a in clean.annotations}


def test_image_files_checked(bccd_dir, tmp_path):
    coco = load_coco(bccd_dir / "test.json")
    check_image_files(coco, bccd_dir / "images")  # all present, sizes match
    few = coco.subset(coco.image_ids[:3])
    for im in few.images[:2]:
        shutil.copy(bccd_dir / "images" / im["file_name"], tmp_path / im["file_name"])
    (tmp_path / few.images[1]["file_name"]).write_bytes(b"not a jpeg")
    with pytest.raises(ImageFileError) as err:
        check_image_files(few, tmp_path)
    text = str(err.value)
    assert "unreadable" in text and few.images[1]["file_name"] in text
    assert "missing" in text and few.images[2]["file_name"] in text


def test_iou_matrix():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [0, 0, 0, 5]], dtype=float)
    iou = iou_matrix_xywh(boxes)
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[0, 2] == 0 and iou[2, 2] == 0
