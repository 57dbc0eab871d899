import shutil

import numpy as np
import pytest
from detfold.audit.checks import (
    AuditPolicy,
    ImageFileError,
    Override,
    audit_coco,
    check_image_files,
    iou_matrix_xywh,
    read_overrides,
)
from detfold.core.coco import load_coco
from detfold.core.gallery import write_findings_gallery
from PIL import Image


def by_check(findings):
    out = {}
    for f in findings:
        out.setdefault(f.check, []).append(f)
    return out


def test_finds_the_known_oddities_of_the_bundled_data_and_nothing_else(bccd, bccd_test):
    clean, findings = audit_coco(bccd, AuditPolicy(), "train")
    _, test_findings = audit_coco(bccd_test, AuditPolicy(), "test")
    found = by_check(findings + test_findings)
    assert set(found) == {"degenerate", "duplicate", "size_outlier"}
    # source README: two zero-area RBC boxes, dropped
    assert sorted(f.ann_id for f in found["degenerate"]) == [3951, 4005]
    assert {f.action for f in found["degenerate"]} == {"drop_box"}
    assert {a["id"] for a in bccd.annotations} - {a["id"] for a in clean.annotations} == {3951, 4005}
    # source README: the 8 near-duplicate RBC pairs (first box ~ second box), flagged
    pairs = sorted((f.related_ann_id, f.ann_id) for f in found["duplicate"])
    assert pairs == [
        (244, 252),
        (371, 372),
        (1504, 1505),
        (1566, 1567),
        (3025, 3026),
        (3368, 3369),
        (3850, 3851),
        (4769, 4770),
    ]
    assert {f.action for f in found["duplicate"]} == {"flag"}
    # source README: the three probable class-label errors, by size within their class
    assert sorted(f.ann_id for f in found["size_outlier"]) == [1686, 1823, 1835]
    assert len(clean.images) == len(bccd.images)


def small_coco(boxes, categories=("a", "b"), size=(100, 80)):
    """One image (plus an empty second one) with the given (category_id, [x, y, w, h]) boxes."""
    from detfold.core.coco import Coco

    return Coco(
        {
            "images": [
                {"id": 1, "file_name": "one.jpg", "width": size[0], "height": size[1]},
                {"id": 2, "file_name": "two.jpg", "width": size[0], "height": size[1]},
            ],
            "annotations": [
                {"id": i, "image_id": 1, "category_id": c, "bbox": list(map(float, b))}
                for i, (c, b) in enumerate(boxes, start=1)
            ],
            "categories": [{"id": i, "name": n} for i, n in enumerate(categories, start=1)],
        }
    )


@pytest.mark.parametrize(
    ("box", "check", "value"),
    [
        ([10, 10, 1.5, 20], "tiny", 1.5),
        ([1, 1, 98, 78], "whole_image", 98 * 78 / 8000),
        ([10, 10, 90, 10], "extreme_aspect", 9.0),
        ([10, 10, 0, 5], "degenerate", 0.0),
    ],
)
def test_single_box_checks(box, check, value):
    _, findings = audit_coco(small_coco([(1, box)]))
    hits = [f for f in findings if f.check == check]
    assert [(f.ann_id, f.value) for f in hits] == [(1, pytest.approx(value, abs=1e-4))]


def test_outside_is_clipped_with_the_amount_said():
    clean, findings = audit_coco(small_coco([(1, [90, 10, 20, 20]), (1, [200, 10, 5, 5])]))
    outside = [f for f in findings if f.check == "outside_image"]
    assert [(f.ann_id, f.value, f.action) for f in outside] == [
        (1, 10.0, "clip"),
        (2, 105.0, "drop_box (clip left nothing)"),
    ]
    assert [a["bbox"] for a in clean.annotations] == [[90.0, 10.0, 10.0, 20.0]]


def test_float_noise_past_the_border_is_not_a_finding():
    """Normalised coordinates exported with 6 decimals land a fraction of a pixel past the edge
    (image 100 px wide): below OUTSIDE_TOLERANCE_PX (0.01 px) that is no finding, above it is."""
    from detfold.audit.checks import OUTSIDE_TOLERANCE_PX

    assert OUTSIDE_TOLERANCE_PX == 0.01
    noise, real = [60, 10, 40.0002, 20], [60, 10, 40.02, 20]
    clean, findings = audit_coco(small_coco([(1, noise), (1, real)]))
    assert [(f.ann_id, f.check) for f in findings if f.check == "outside_image"] == [(2, "outside_image")]
    assert clean.annotations[0]["bbox"] == noise  # left as it is: never silently clipped


def test_pairs_and_empty_images():
    boxes = [(1, [10, 10, 20, 20]), (1, [11, 10, 20, 20]), (2, [50, 50, 20, 20]), (1, [50, 51, 20, 20])]
    _, findings = audit_coco(small_coco(boxes))
    found = by_check(findings)
    assert [(f.related_ann_id, f.ann_id) for f in found["duplicate"]] == [(1, 2)]
    assert [(f.related_ann_id, f.ann_id) for f in found["cross_class_overlap"]] == [(3, 4)]
    assert [(f.image_id, f.ann_id) for f in found["empty_image"]] == [(2, None)]


def test_actions_drop_image_and_thresholds_from_config():
    policy = AuditPolicy.from_config(
        {"tiny": {"threshold": 5, "action": "drop_image"}, "empty_image": {"action": "drop_image"}}
    )
    clean, findings = audit_coco(small_coco([(1, [10, 10, 4, 20]), (1, [40, 10, 20, 20])]), policy)
    assert clean.image_ids == []  # image 1 dropped for its tiny box, image 2 for being empty
    assert {f.check for f in findings} == {"tiny", "empty_image"}


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        ({"tiniest": {}}, "unknown check 'tiniest'"),
        ({"tiny": {"action": "clip"}}, "audit.checks.tiny.action = 'clip' is not one of"),
        ({"tiny": {"limit": 3}}, "unknown key(s) ['limit']"),
        (
            {"tiny": {"threshold": -1}},
            "audit.checks.tiny.threshold = -1 is out of range: must be a number >= 0 (shorter side < thresh",
        ),
        (
            {"duplicate": {"threshold": 0}},
            "audit.checks.duplicate.threshold = 0 is out of range: must be a number > 0 and <= 1",
        ),
        (
            {"extreme_aspect": {"threshold": 0.5}},
            "extreme_aspect.threshold = 0.5 is out of range: must be a number >= 1 (max(w/h, h/w)",
        ),
        (
            {"whole_image": {"threshold": "0.9"}},
            "whole_image.threshold = '0.9' is not a finite number: must be a number > 0 and <= 1 (box area",
        ),
        (
            {"size_outlier": {"threshold": float("inf")}},
            "size_outlier.threshold = inf is not a finite number: must be a number > 0 (|robust z|",
        ),
        ({"empty_image": {"threshold": 0}}, "audit.checks.empty_image.threshold = 0 does nothing: empty_image (image"),
    ],
)
def test_bad_policy(checks, message):
    with pytest.raises(ValueError) as err:
        AuditPolicy.from_config(checks)
    assert message in str(err.value)


def test_overrides_keep_and_drop(bccd, tmp_path):
    path = tmp_path / "overrides.csv"
    path.write_text(
        "ann_id,image_id,decision,note\n"
        "# a person looked at the gallery\n"
        "372,,keep,two cells really\n"
        "1686,,drop,platelet labelled WBC\n"
        ",7,drop,blurred\n"
    )
    overrides = read_overrides(path)
    assert overrides[0] == Override("keep", 372, None, "two cells really")
    clean, findings = audit_coco(bccd, AuditPolicy(), "train", overrides)
    actions = {(f.ann_id, f.check): f.action for f in findings}
    assert actions[(372, "duplicate")] == "keep (override)"
    assert actions[(1686, "manual")] == "drop_box"
    assert actions[(None, "manual")] == "drop_image"
    ids = {a["id"] for a in clean.annotations}
    assert 372 in ids and 1686 not in ids
    assert 7 not in clean.image_ids


def test_overrides_saved_by_a_spreadsheet_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "o.csv"
    path.write_text("ann_id,image_id,decision,note\n372,,keep,ok\n", encoding="utf-8-sig")
    assert read_overrides(path) == [Override("keep", 372, None, "ok")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ann_id,image_id,decision\n5,,maybe\n", "row 2: decision must be 'keep' or 'drop', got 'maybe'"),
        ("ann_id,image_id,decision\nx,,keep\n", "row 2: ann_id must be an integer, got 'x'"),
        ("ann_id,image_id,decision\n,3,keep\n", "row 2: 'keep' needs an ann_id"),
    ],
)
def test_bad_overrides(tmp_path, text, message):
    path = tmp_path / "o.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        read_overrides(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_image_files_checked(bccd_dir, tmp_path):
    coco = load_coco(bccd_dir / "test.json")
    check_image_files(coco, bccd_dir / "images")  # all present, sizes match
    few = coco.subset(coco.image_ids[:4])
    for im in few.images[:3]:
        shutil.copy(bccd_dir / "images" / im["file_name"], tmp_path / im["file_name"])
    (tmp_path / few.images[1]["file_name"]).write_bytes(b"not a jpeg")
    few.images[2]["width"] = 640
    del few.images[0]["width"]
    with pytest.raises(ImageFileError) as err:
        check_image_files(few, tmp_path)
    text = str(err.value)
    assert "unreadable" in text and few.images[1]["file_name"] in text
    assert f"{few.images[2]['file_name']}: the image file is 320x240 px (width x height) but " in text
    assert "images[2] (id " in text and "says width 640, height 240; correct the JSON or the file" in text
    assert "missing" in text and few.images[3]["file_name"] in text
    assert few.images[0]["width"] == 320  # read from the file


def test_gallery_draws_the_box(bccd, bccd_dir, tmp_path):
    _, findings = audit_coco(bccd, AuditPolicy(), "train")
    written = write_findings_gallery(findings, {"train": bccd}, {"train": bccd_dir / "images"}, tmp_path)
    assert sorted(p.name for p in written) == ["degenerate.png", "duplicate.png", "size_outlier.png"]
    sheet = np.asarray(Image.open(tmp_path / "size_outlier.png").convert("RGB")).astype(int)
    red = (sheet[..., 0] > 230) & (sheet[..., 1] < 40) & (sheet[..., 2] < 40)
    assert red[:160, :160].sum() > 40  # the first tile has its box outline in red
    ys, xs = np.nonzero(red[:160, :160])
    assert xs.max() - xs.min() > 5 and ys.max() - ys.min() > 5  # an outline, not a speck
    assert not red[:, 3 * 160 :].any()  # only 3 size outliers: tiles 4.. are blank


def test_iou_matrix():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [0, 0, 0, 5]], dtype=float)
    iou = iou_matrix_xywh(boxes)
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[0, 2] == 0 and iou[2, 2] == 0


def test_audit_command_reads_missing_sizes_and_shows_a_box_wholly_outside(bccd_dir, tmp_path):
    """An image record without width/height gets them from its file; a box wholly outside the
    image is clipped to nothing, dropped, and shown in the gallery at the nearest image edge."""
    import json

    from detfold.cli import main

    data = {
        "images": [{"id": 1, "file_name": "BloodImage_00000.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [636, 10, 10, 5]},
        ],
        "categories": [{"id": 1, "name": "RBC"}],
    }
    (tmp_path / "in.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["audit", str(tmp_path / "in.json"), "--images", str(bccd_dir / "images"), "--out", str(out)]) == 0
    clean = json.loads((out / "annotations.json").read_text())
    assert clean["images"][0]["width"] == 320 and clean["images"][0]["height"] == 240
    assert [a["id"] for a in clean["annotations"]] == [1]
    sheet = np.asarray(Image.open(out / "gallery" / "outside_image.png").convert("RGB"))
    assert sheet[:160, :160].std() > 0  # the tile shows the image's right edge, not a blank


def test_image_folder_missing_or_a_file(bccd, tmp_path):
    for folder, what in ((tmp_path / "imgs", "no such folder"), (tmp_path / "f.jpg", "not a folder")):
        (tmp_path / "f.jpg").write_bytes(b"")
        with pytest.raises(ImageFileError) as err:
            check_image_files(bccd, folder)
        assert str(err.value) == f"{folder}: {what} (the images of {bccd.path} are looked for there)"


def test_an_empty_training_set_is_refused_by_the_audit(bccd, tmp_path):
    from detfold.audit.stage import audit_splits

    for key in ("annotations", "images"):
        bccd.data[key] = []
        with pytest.raises(ValueError) as err:
            audit_splits({"train": bccd}, {"train": str(tmp_path)}, AuditPolicy(), [])
        assert str(err.value).startswith(f"{bccd.path}: {key!r} is empty: no ")
