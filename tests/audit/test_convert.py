"""VOC and YOLO import: round trips through real BCCD files."""

import shutil

import pytest
from detfold.audit.convert import read_class_names, voc_to_coco, yolo_to_coco
from helpers.coco_export import coco_to_voc, coco_to_yolo


def boxes_by_file(data):
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    out = {}
    for a in data["annotations"]:
        out.setdefault(files[a["image_id"]], []).append((names[a["category_id"]], *a["bbox"]))
    return {k: sorted(v) for k, v in out.items()}


def test_voc_round_trip(bccd_test, tmp_path):
    coco_to_voc(bccd_test.data, tmp_path / "xml")
    assert len(list((tmp_path / "xml").glob("*.xml"))) == len(bccd_test.images)
    back = voc_to_coco(tmp_path / "xml", class_names=bccd_test.class_names)
    assert [c["name"] for c in back["categories"]] == ["RBC", "WBC", "Platelets"]
    assert sorted((i["file_name"], i["width"], i["height"]) for i in back["images"]) == sorted(
        (i["file_name"], i["width"], i["height"]) for i in bccd_test.images
    )
    assert boxes_by_file(back) == boxes_by_file(bccd_test.data)


def test_voc_without_size_reads_the_image(bccd_test, bccd_dir, tmp_path):
    one = bccd_test.subset(bccd_test.image_ids[:1])
    coco_to_voc(one.data, tmp_path)
    xml = next(tmp_path.glob("*.xml"))
    text = xml.read_text()
    xml.write_text(text[: text.index("<size>")] + text[text.index("</size>") + len("</size>") :])
    back = voc_to_coco(tmp_path, images_dir=bccd_dir / "images")
    assert (back["images"][0]["width"], back["images"][0]["height"]) == (320, 240)


def test_yolo_round_trip(bccd_test, bccd_dir, tmp_path):
    few = bccd_test.subset(bccd_test.image_ids[:10])
    (tmp_path / "images").mkdir()
    for im in few.images:
        shutil.copy(bccd_dir / "images" / im["file_name"], tmp_path / "images")
    names = coco_to_yolo(few.data, tmp_path / "labels")
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    back = yolo_to_coco(tmp_path / "labels", tmp_path / "images", read_class_names(tmp_path / "names.txt"))
    original, converted = boxes_by_file(few.data), boxes_by_file(back)
    assert original.keys() == converted.keys()
    for key in original:
        for a, b in zip(original[key], converted[key], strict=True):
            assert a[0] == b[0]
            assert a[1:] == pytest.approx(b[1:], abs=1e-4)
