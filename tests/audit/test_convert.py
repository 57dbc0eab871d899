"""VOC and YOLO import: round trips through real BCCD files."""

import json
import logging
import shutil

import pytest
from conftest import BCCD
from detfold.audit.convert import read_class_names, voc_to_coco, yolo_to_coco
from detfold.cli import main
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


# --- the `detfold import` command on a new user's folders --------------------------------------

BLOOD = "BloodImage_00000.jpg"  # 320x240


def voc_xml(objects="", width="10", height="10", file_name="a.jpg"):
    return (
        f"<annotation><filename>{file_name}</filename><size><width>{width}</width><height>{height}</height>"
        f"</size>{objects}</annotation>"
    )


def obj(name, extra=""):
    box = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox>"
    return f"<object><name>{name}</name>{extra}{box}</object>"


def voc(files, classes=None, images=False, extra=()):
    """A folder of VOC files (name -> text or bytes), optionally class names and an images
    folder holding BloodImage_00000.jpg as a.jpg; the `detfold import voc` arguments."""

    def make(tmp):
        (tmp / "xml").mkdir()
        for name, text in files.items():
            (tmp / "xml" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "xml" / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        args = ["import", "voc", str(tmp / "xml"), "--out", str(tmp / "out.json"), *extra]
        if classes is not None:
            (tmp / "names.txt").write_text(classes)
            args += ["--classes", str(tmp / "names.txt")]
        if images:
            (tmp / "images").mkdir()
            shutil.copy(BCCD / "images" / BLOOD, tmp / "images" / "a.jpg")
            args += ["--images", str(tmp / "images")]
        return args

    return make


def yolo(labels, names="RBC\nWBC\n", names_file="names.txt", images=(BLOOD,), extra=()):
    """A YOLO labels folder (name -> text or bytes), an images folder of copies of BLOOD under
    ``images``' names and a class names file; the `detfold import yolo` arguments."""

    def make(tmp):
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for name in images:
            (tmp / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(BCCD / "images" / BLOOD, tmp / "images" / name)
        for name, text in labels.items():
            (tmp / "labels" / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        (tmp / names_file).write_bytes(names if isinstance(names, bytes) else names.encode())
        return [
            *("import", "yolo", str(tmp / "labels"), "--images", str(tmp / "images")),
            *("--classes", str(tmp / names_file), "--out", str(tmp / "out.json"), *extra),
        ]

    return make


ONE_BOX = {"BloodImage_00000.txt": "0 0.5 0.5 0.1 0.1\n"}

REFUSED = {
    "voc-size-zero-without-images": (voc({"a.xml": voc_xml(obj("RBC"), 0, 0)}), "a.xml: <size> 0x0; give the images"),
    "voc-size-fraction": (
        voc({"a.xml": voc_xml(obj("RBC"), "10.5")}),
        "a.xml: <size><width> must be a positive whole number of pixels, got '10.5'",
    ),
    "voc-size-negative": (
        voc({"a.xml": voc_xml(obj("RBC"), 10, "-3")}, images=True),
        "a.xml: <size><height> must be a positive whole number of pixels, got '-3'",
    ),
    "voc-size-half-disagrees": (
        voc({"a.xml": voc_xml(obj("RBC"), 300, 0)}, images=True),
        "a.xml: <size><width> is 300, but the image a.jpg is 320x240",
    ),
    "voc-names-differ-in-case": (
        voc({"a.xml": voc_xml(obj("RBC")), "b.xml": voc_xml(obj(" rbc "), file_name="b.jpg")}),
        "class names that differ only in case ['RBC', 'rbc'] (",
    ),
    "voc-difficult-not-a-flag": (
        voc({"a.xml": voc_xml(obj("RBC", "<difficult>maybe</difficult>"))}),
        "a.xml: object 0 (RBC): <difficult> must be 0 or 1, got 'maybe'",
    ),
    "voc-latin1-undeclared": (
        voc({"a.xml": voc_xml(obj("caf\xe9")).encode("latin-1")}),
        "a.xml: not UTF-8 (byte 0xe9 at offset",
    ),
    "voc-whole-dataset-xml": (
        voc({"annotations.xml": "<annotations><image name='a.jpg'/></annotations>"}),
        "annotations.xml: root element <annotations>, expected <annotation>",
    ),
    "voc-one-image-twice": (
        voc({"a.xml": voc_xml(obj("RBC")), "b.xml": voc_xml(obj("RBC"))}),
        "b.xml: <filename> 'a.jpg' is also the image of",
    ),
    "voc-files-only-in-subfolder": (
        voc({"Annotations/a.xml": voc_xml(obj("RBC"))}),
        "no .xml files in the annotations folder, but 1 in its subfolders (e.g. ",
    ),
    "voc-corners-swapped": (
        voc({"a.xml": voc_xml(obj("RBC").replace("<xmin>1</xmin>", "<xmin>5</xmin>"))}),
        "a.xml: object 0 (RBC): bndbox/xmax = 3 is less than xmin = 5",
    ),
    "voc-absurd-coordinate": (
        voc({"a.xml": voc_xml(obj("RBC").replace("<ymax>3</ymax>", "<ymax>1e200</ymax>"))}),
        "a.xml: object 0 (RBC): bndbox/ymax = 1e+200 is beyond +-1e+07 px",
    ),
    "voc-filename-outside": (
        voc({"a.xml": voc_xml(obj("RBC"), file_name="/data/VOC2007/JPEGImages/a.jpg")}),
        "a.xml: <filename> '/data/VOC2007/JPEGImages/a.jpg' must be relative to the images folder",
    ),
    "voc-no-object-no-classes": (voc({"a.xml": voc_xml()}), "no <object> in any of the 1 XML files"),
    "voc-names-file-case": (
        voc({"a.xml": voc_xml(obj("RBC"))}, classes="RBC\nWBC\nrbc\n"),
        "names.txt: class names that differ only in case ['RBC', 'rbc'] (line 1 'RBC', line 3 'rbc')",
    ),
    "names-index-gap": (
        yolo(ONE_BOX, names="0: RBC\n2: WBC\n"),
        "names.txt: line 2: index 2 is outside 0..1: the indices must be 0..1, each once",
    ),
    "names-index-twice": (
        yolo(ONE_BOX, names="0: RBC\n0: WBC\n"),
        "names.txt: line 2: index 0 already given on line 1",
    ),
    "names-index-mixed": (yolo(ONE_BOX, names="0: RBC\nWBC\n"), "names.txt: line 2 'WBC' is not 'N: name'"),
    "names-index-empty": (yolo(ONE_BOX, names="0: RBC\n1:\n"), "names.txt: line 2: no class name after '1:'"),
    "data-yaml-nc-mismatch": (
        yolo(ONE_BOX, names="nc: 3\nnames: [RBC, WBC]\n", names_file="data.yaml"),
        "data.yaml: nc: 3 but names: lists 2 classes",
    ),
    "data-yaml-key-twice": (
        yolo(ONE_BOX, names="names:\n  0: RBC\n  0: WBC\n", names_file="data.yaml"),
        "data.yaml: key 'names.0' is given twice (line 2 and line 3)",
    ),
    "data-yaml-index-gap": (
        yolo(ONE_BOX, names="names:\n  0: RBC\n  2: WBC\n", names_file="data.yaml"),
        "data.yaml: names: key 2 is not an index 0..1",
    ),
    "data-yaml-no-names": (
        yolo(ONE_BOX, names="nc: 2\ntrain: images\n", names_file="data.yaml"),
        "data.yaml: no 'names:' key (keys ['nc', 'train'])",
    ),
    "data-yaml-boolean-name": (
        yolo(ONE_BOX, names="names: [RBC, yes]\n", names_file="data.yaml"),
        "data.yaml: names[1] must be a class name, got True (YAML reads yes/no",
    ),
    "data-yaml-case": (
        yolo(ONE_BOX, names="names: [RBC, ' rbc ']\n", names_file="data.yaml"),
        "class names that differ only in case ['RBC', 'rbc'] (names[0] 'RBC', names[1] 'rbc')",
    ),
    "data-yaml-broken": (
        yolo(ONE_BOX, names="names: [RBC, WBC\n", names_file="data.yaml"),
        "data.yaml: not valid YAML: line 2, column 1:",
    ),
    "names-data-yaml-keys-in-txt": (
        yolo(ONE_BOX, names="nc: 2\ntrain: images\n"),
        "names.txt: line 1 'nc: 2' looks like a YOLO data.yaml, but the file has no 'names:' key",
    ),
    "names-yaml-list": (yolo(ONE_BOX, names="- RBC\n- WBC\n"), "names.txt: line 1 '- RBC' looks like a YAML list"),
    "names-json": (
        yolo(ONE_BOX, names='{"categories": []}', names_file="c.json"),
        "c.json: line 1 starts with '{': a JSON file?",
    ),
    "names-not-utf8": (
        yolo(ONE_BOX, names="caf\xe9\n".encode("latin-1")),
        "names.txt: class names file is not UTF-8 text (byte 0xe9 at offset 3)",
    ),
    "yolo-label-not-utf8": (
        yolo({"BloodImage_00000.txt": b"0 0.5 0.5 0.1 0.1 \xff\n"}),
        "BloodImage_00000.txt: label file is not UTF-8 text (byte 0xff",
    ),
    "yolo-segmentation-label": (
        yolo({"BloodImage_00000.txt": "0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n"}),
        "got 9: '0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2': a segmentation or oriented-box label?",
    ),
    "yolo-prediction-file": (
        yolo({"BloodImage_00000.txt": "0 0.5 0.5 0.1 0.1 0.93\n"}),
        "BloodImage_00000.txt: line 1: expected 'class cx cy w h' (5 fields), got 6: '0 0.5 0.5 0.1 0.1 0.93': a "
        "prediction file",
    ),
    "yolo-two-images-one-stem": (
        yolo(ONE_BOX, images=(BLOOD, "BloodImage_00000.png")),
        "BloodImage_00000.jpg and BloodImage_00000.png share the name 'BloodImage_00000'",
    ),
    "yolo-class-list-among-labels": (
        yolo({**ONE_BOX, "classes.txt": "RBC\nWBC\n"}),
        "['classes.txt'] (classes.txt is a class list? move it out of the labels folder)",
    ),
    "yolo-difficult-option": (
        yolo(ONE_BOX, extra=("--difficult", "keep")),
        "--difficult keep: YOLO labels have no difficult flag",
    ),
    "yolo-images-only-in-subfolders": (
        yolo(ONE_BOX, images=(f"train/{BLOOD}",)),
        "images: no .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp files in the images folder, but 1 in its subfolders",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_import_refuses_with_one_line(case, tmp_path, capsys):
    make, message = REFUSED[case]
    assert main(make(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("detfold: error: ") and "\n" not in err and "Traceback" not in err
    assert message in err
    assert not (tmp_path / "out.json").exists()


def imported(make, tmp_path, capsys=None):
    assert main(make(tmp_path)) == 0, capsys.readouterr().err if capsys else ""
    data = json.loads((tmp_path / "out.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    return data, [names[a["category_id"]] for a in data["annotations"]]


@pytest.mark.parametrize(
    ("names_file", "names"),
    [
        ("names.txt", " RBC \r\nWBC\r\n"),
        ("names.txt", "\ufeff1: WBC\n# a comment\n0: 'RBC'\n"),
        ("data.yaml", "path: ../blood\ntrain: images/train\nnc: 2\nnames: [RBC, WBC]\n"),
        ("data.yml", "names:\n  1: WBC\n  0: RBC\n"),
        ("data.txt", "train: images\nnames:\n  - RBC\n  - WBC\n"),
        ("classes.yaml", "0: RBC\n1: WBC\n"),
    ],
)
def test_yolo_class_names_in_every_form(names_file, names, tmp_path, capsys):
    labels = {"BloodImage_00000.txt": "0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.2 0.2\n"}
    data, classes = imported(yolo(labels, names=names, names_file=names_file), tmp_path, capsys)
    assert [c["name"] for c in data["categories"]] == ["RBC", "WBC"]
    assert classes == ["RBC", "WBC"]


@pytest.mark.parametrize(("choice", "iscrowd"), [(None, [1, 0]), ("ignore", [1, 0]), ("keep", [0, 0]), ("drop", [0])])
def test_voc_difficult_choice(choice, iscrowd, tmp_path, caplog, capsys):
    xml = voc_xml(obj("RBC", "<difficult>1</difficult><truncated>1</truncated>") + obj("RBC", "<occluded>1</occluded>"))
    extra = ("--difficult", choice) if choice else ()
    data, _ = imported(voc({"a.xml": xml}, extra=extra), tmp_path, capsys)
    assert [a["iscrowd"] for a in data["annotations"]] == iscrowd
    done = {"ignore": "kept with iscrowd: 1", "keep": "kept as ordinary boxes", "drop": "dropped"}[choice or "ignore"]
    assert f"1 boxes marked <difficult>1</difficult> {done}" in caplog.text


def test_difficult_choices_agree_with_the_schema_and_the_cli(capsys):
    from detfold.audit.convert import DIFFICULT_CHOICES
    from detfold.core.config import load_schema, schema_problems

    schema = load_schema()
    data = schema["properties"]["data"]["properties"]["difficult"]
    assert tuple(data["enum"]) == DIFFICULT_CHOICES and data["default"] == "ignore"
    assert main(["import", "voc", "xml", "--difficult", "skip", "--out", "out.json"]) == 2
    assert "--difficult: invalid choice: 'skip' (choose from " + ", ".join(map(repr, DIFFICULT_CHOICES)) in (
        capsys.readouterr().err
    )
    config = {"data": {"train_annotations": "a", "train_images": "b", "difficult": "skip"}, "models": {}}
    assert any("data.difficult = 'skip' is not allowed" in p for p in schema_problems(config, schema))


def test_voc_size_zero_read_from_the_image(tmp_path, caplog, capsys):
    data, _ = imported(voc({"a.xml": voc_xml(obj("RBC"), 0, 0)}, images=True), tmp_path, capsys)
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (320, 240)
    assert "a.xml: <size> 0x0; read 320x240 from the image a.jpg" in caplog.text


def test_voc_whole_number_size_written_as_float(tmp_path, capsys):
    data, _ = imported(voc({"a.xml": voc_xml(obj("RBC"), "320.0", "240")}), tmp_path, capsys)
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (320, 240)


def test_voc_class_names_file_settles_case_and_spaces(tmp_path, caplog, capsys):
    files = {"a.xml": voc_xml(obj("RBC") + obj(" Rbc ")), "b.xml": voc_xml(obj("rbc\n"), file_name="b.jpg")}
    data, classes = imported(voc(files, classes=" RBC \nWBC\n"), tmp_path, capsys)
    assert [c["name"] for c in data["categories"]] == ["RBC", "WBC"]
    assert classes == ["RBC", "RBC", "RBC"]
    assert "a.xml: object 1: class 'Rbc' taken as the listed class 'RBC'" in caplog.text
    assert "b.xml: object 0: class 'rbc' taken as the listed class 'RBC'" in caplog.text


def test_voc_odd_folder(tmp_path, caplog, capsys):
    """Uppercase .XML, CRLF, a byte-order mark, a declared latin-1 file, macOS's ._ copy, a file
    in a subfolder (warned about, not read)."""
    files = {
        "a.XML": ("\ufeff" + voc_xml(obj("RBC"))).replace("><", ">\r\n<"),
        "b.xml": ('<?xml version="1.0" encoding="ISO-8859-1"?>' + voc_xml(obj("caf\xe9"), file_name="b.jpg")).encode(
            "latin-1"
        ),
        "._a.xml": b"\x00\x05\x16\x07 macOS resource fork",
        "old/c.xml": voc_xml(obj("RBC"), file_name="c.jpg"),
    }
    data, classes = imported(voc(files), tmp_path, capsys)
    assert sorted(im["file_name"] for im in data["images"]) == ["a.jpg", "b.jpg"]
    assert sorted(classes) == ["RBC", "caf\xe9"]
    assert "1 files in subfolders are not read (e.g. " in caplog.text and "c.xml" in caplog.text


def test_voc_without_filename_finds_the_image(tmp_path, caplog, capsys):
    xml = "<annotation><size><width>320</width><height>240</height></size>" + obj("RBC") + "</annotation>"
    data, _ = imported(voc({"a.xml": xml}, images=True), tmp_path, capsys)
    assert data["images"][0]["file_name"] == "a.jpg"
    assert "a.xml: no <filename>; took a.jpg" in caplog.text


def test_yolo_odd_folder(tmp_path, caplog, capsys):
    """A byte-order mark, CRLF, uppercase .TXT and .JPG, an empty label file, an image without a
    label file, macOS's ._ copies: all imported as they mean."""
    labels = {"A.TXT": b"\xef\xbb\xbf0 0.5 0.5 0.1 0.1\r\n1 0.5 0.5 0.2 0.2\r\n", "B.txt": "", "._A.TXT": b"\x00\x05"}
    make = yolo(labels, images=("A.JPG", "B.jpg", "C.png", "._A.JPG"))
    caplog.set_level(logging.INFO)
    data, classes = imported(make, tmp_path, capsys)
    assert [im["file_name"] for im in data["images"]] == ["A.JPG", "B.jpg", "C.png"]
    assert classes == ["RBC", "WBC"]
    assert data["annotations"][0]["bbox"] == pytest.approx([144, 108, 32, 24])
    assert "1 images have no label file: imported without boxes" in caplog.text


def test_voc_case_clash_names_both_files_and_objects(tmp_path, capsys):
    files = {"a.xml": voc_xml(obj("WBC") + obj("RBC")), "b.xml": voc_xml(obj(" rbc "), file_name="b.jpg")}
    assert main(voc(files)(tmp_path)) == 2
    err = capsys.readouterr().err
    xml = tmp_path / "xml"
    assert f"({xml / 'a.xml'}: object 1 'RBC', {xml / 'b.xml'}: object 0 'rbc'): one class or two?" in err
    assert "list one spelling in a class names file (--classes, data.class_names)" in err


def test_rule_import_honours_difficult_and_writes_nothing_on_error(tmp_path):
    """What the import_annotations rule calls, with the config's data.difficult."""
    from detfold.audit.stage import run_import

    xml = voc_xml(obj("RBC", "<difficult>1</difficult>") + obj("WBC"))
    voc({"a.xml": xml}, images=True)(tmp_path)
    out = tmp_path / "import" / "train.json"
    out.parent.mkdir()
    run_import("voc", str(tmp_path / "xml"), str(tmp_path / "images"), None, str(out), difficult="drop")
    assert [a["category_id"] for a in json.loads(out.read_text())["annotations"]] == [2]
    out.unlink()
    (tmp_path / "names.yaml").write_text("names: [RBC, WBC, wbc]\n")
    with pytest.raises(ValueError, match=r"names.yaml: class names that differ only in case \['WBC', 'wbc'\]"):
        run_import("voc", str(tmp_path / "xml"), str(tmp_path / "images"), str(tmp_path / "names.yaml"), str(out))
    assert list(out.parent.iterdir()) == []
