"""Broken inputs of every supported format: one clear line naming the problem, no traceback,
and no output file left behind."""

import json

import pytest
from detfold.cli import main

GOOD = {
    "images": [{"id": 1, "file_name": "BloodImage_00000.jpg", "width": 320, "height": 240}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}],
    "categories": [{"id": 1, "name": "RBC"}],
}


def coco_case(mutate):
    def make(tmp):
        data = json.loads(json.dumps(GOOD))
        text = mutate(data)
        (tmp / "in.json").write_text(text if isinstance(text, str) else json.dumps(data, allow_nan=True))
        return ["audit", str(tmp / "in.json"), "--images", "{images}", "--out", str(tmp / "out")]

    return make


def voc_case(xml, classes=None):
    def make(tmp):
        (tmp / "xml").mkdir()
        (tmp / "xml" / "a.xml").write_text(xml)
        args = ["import", "voc", str(tmp / "xml"), "--out", str(tmp / "out.json")]
        if classes:
            (tmp / "names.txt").write_text(classes)
            args += ["--classes", str(tmp / "names.txt")]
        return args

    return make


def yolo_case(label, names="RBC\nWBC\n", label_name="BloodImage_00000.txt"):
    def make(tmp):
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        import shutil

        from conftest import BCCD

        shutil.copy(BCCD / "images" / "BloodImage_00000.jpg", tmp / "images")
        (tmp / "labels" / label_name).write_text(label)
        (tmp / "names.txt").write_text(names)
        return [
            "import",
            "yolo",
            str(tmp / "labels"),
            "--images",
            str(tmp / "images"),
            "--classes",
            str(tmp / "names.txt"),
            "--out",
            str(tmp / "out.json"),
        ]

    return make


def image_case(damage):
    """GOOD's one image, copied and ``damage``d (a function of the copy's path), audited."""

    def make(tmp):
        import shutil

        from conftest import BCCD

        (tmp / "images").mkdir()
        shutil.copy(BCCD / "images" / "BloodImage_00000.jpg", tmp / "images")
        damage(tmp / "images" / "BloodImage_00000.jpg")
        (tmp / "in.json").write_text(json.dumps(GOOD))
        return ["audit", str(tmp / "in.json"), "--images", str(tmp / "images"), "--out", str(tmp / "out")]

    return make


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def exif_rotate(orientation):
    def damage(path):
        from PIL import Image

        with Image.open(path) as handle:
            pixels = handle.copy()
        exif = Image.Exif()
        exif[0x0112] = orientation
        pixels.save(path, exif=exif)

    return damage


def split_case(damage):
    """``detfold split --group-by auto`` (dHash of every image) on a damaged copy of GOOD's image."""

    def make(tmp):
        image_case(lambda path: None)(tmp)
        data = json.loads(json.dumps(GOOD))
        data["images"].append({**data["images"][0], "id": 2, "file_name": "broken.jpg"})
        data["annotations"].append({**data["annotations"][0], "id": 2, "image_id": 2})
        (tmp / "in.json").write_text(json.dumps(data))
        broken = tmp / "images" / "broken.jpg"
        broken.write_bytes((tmp / "images" / "BloodImage_00000.jpg").read_bytes())
        damage(broken)
        images = str(tmp / "images")
        return [
            "split",
            str(tmp / "in.json"),
            "--k",
            "2",
            "--group-by",
            "auto",
            "--images",
            images,
            "--out",
            str(tmp / "out"),
        ]

    return make


PRED = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}]


def pred_case(mutate, command="evaluate", extra=()):
    """A results file (one good prediction, then ``mutate``d) scored or fused against GOOD."""

    def make(tmp):
        preds = json.loads(json.dumps(PRED))
        text = mutate(preds)
        (tmp / "gt.json").write_text(json.dumps(GOOD))
        (tmp / "pred.json").write_text(text if isinstance(text, str) else json.dumps(preds, allow_nan=True))
        files = ["--pred", str(tmp / "pred.json")]
        if command == "evaluate":
            return ["evaluate", "--gt", str(tmp / "gt.json"), *files, "--json", str(tmp / "out.json")]
        return ["ensemble", "--images", str(tmp / "gt.json"), *files, "--out", str(tmp / "out.json"), *extra]

    return make


def gt_case(mutate, command="evaluate"):
    """One good prediction scored or fused against GOOD ``mutate``d (the ground truth is bad)."""

    def make(tmp):
        args = pred_case(lambda p: None, command)(tmp)
        data = json.loads(json.dumps(GOOD))
        mutate(data)
        (tmp / "gt.json").write_text(json.dumps(data))
        return args

    return make


def set_ann(**values):
    return lambda d: d["annotations"][0].update(values)


def set_image(**values):
    return lambda d: d["images"][0].update(values)


def set_pred(**values):
    return lambda preds: preds[0].update(values)


VOC_OK = "<annotation><filename>a.jpg</filename><size><width>10</width><height>10</height></size>{}</annotation>"


def voc_object(name, xmin="0"):
    box = f"<xmin>{xmin}</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax>"
    return VOC_OK.format(f"<object><name>{name}</name><bndbox>{box}</bndbox></object>")


CASES = {
    "coco-not-json": (coco_case(lambda d: "images: []"), "not valid JSON"),
    "coco-truncated": (coco_case(lambda d: json.dumps(d)[:40]), "truncated JSON"),
    "coco-no-images": (coco_case(lambda d: d.pop("images")), "missing top-level key 'images'"),
    "coco-dup-image-id": (
        coco_case(lambda d: d["images"].append({**d["images"][0], "file_name": "other.jpg"})),
        "id 1 is a duplicate",
    ),
    "coco-dup-ann-id": (
        coco_case(lambda d: d["annotations"].append(dict(d["annotations"][0]))),
        "annotations[1].id 1 is a duplicate",
    ),
    "coco-unknown-image": (coco_case(lambda d: d["annotations"][0].update(image_id=5)), "image_id 5 is not in"),
    "coco-unknown-category": (coco_case(lambda d: d["annotations"][0].update(category_id=3)), "category_id 3"),
    "coco-bbox-3-numbers": (coco_case(lambda d: d["annotations"][0].update(bbox=[1, 2, 3])), "bbox must be 4"),
    "coco-bbox-nan": (coco_case(lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 3])), "finite"),
    "coco-bbox-string": (coco_case(lambda d: d["annotations"][0].update(bbox="1 2 3 4")), "bbox must be 4"),
    "coco-image-missing": (
        coco_case(lambda d: d["images"][0].update(file_name="nope.jpg")),
        "nope.jpg: image file missing",
    ),
    "coco-size-mismatch": (coco_case(lambda d: d["images"][0].update(width=640)), "size on disk 320x240 differs"),
    "coco-top-level-list": (coco_case(lambda d: "[]"), "top level must be a JSON object"),
    "coco-area-negative": (
        coco_case(set_ann(area=-5)),
        "in.json: annotations[0] (id 1): area must be a finite number >= 0 (square px), got -5",
    ),
    "coco-area-text": (coco_case(set_ann(area="400")), "annotations[0] (id 1): area must be a finite number"),
    "coco-area-zero": (
        coco_case(set_ann(area=0)),
        "annotations[0] (id 1): area is 0 but bbox [10, 10, 20, 20] is not empty: MMDetection would skip this box",
    ),
    "coco-area-huge": (coco_case(set_ann(area=1e300)), "area must be a finite number >= 0 (square px), got 1e+300"),
    "coco-width-zero": (
        coco_case(set_image(width=0)),
        "in.json: images[0] ('BloodImage_00000.jpg').width must be an integer > 0 (pixels), got 0",
    ),
    "coco-width-fraction": (coco_case(set_image(width=320.5)), "width must be an integer > 0 (pixels), got 320.5"),
    "coco-height-text": (coco_case(set_image(height="240")), "height must be an integer > 0 (pixels), got '240'"),
    "coco-no-categories": (
        coco_case(lambda d: d.update(categories=[], annotations=[])),
        "in.json: 'categories' is empty: a detection dataset needs at least one category",
    ),
    "coco-bbox-absurd-x": (
        coco_case(set_ann(bbox=[1e308, 10, 20, 20])),
        "annotations[0] (id 1): bbox must be 4 finite numbers [x, y, w, h] within +-1e+07 px, got [1e+308, 10, 20, 20]",
    ),
    "coco-bbox-absurd-size": (coco_case(set_ann(bbox=[10, 10, 1e200, 20])), "got [10, 10, 1e+200, 20]"),
    "evaluate-gt-area-text": (
        gt_case(set_ann(area="big")),
        "gt.json: annotations[0] (id 1): area must be a finite number >= 0 (square px), got 'big'",
    ),
    "evaluate-gt-no-categories": (gt_case(lambda d: d.update(categories=[], annotations=[])), "'categories' is empty"),
    "fuse-gt-width-zero": (
        gt_case(set_image(width=0), "ensemble"),
        "gt.json: images[0] ('BloodImage_00000.jpg').width must be an integer > 0 (pixels), got 0",
    ),
    "fuse-gt-height-missing": (
        gt_case(lambda d: d["images"][0].pop("height"), "ensemble"),
        "gt.json: images[0] ('BloodImage_00000.jpg').height must be an integer > 0 (pixels), got nothing",
    ),
    "evaluate-pred-absurd-box": (
        pred_case(set_pred(bbox=[10, 10, 1e200, 20])),
        "pred.json[0].bbox must be 4 finite numbers [x, y, w, h] within +-1e+07 px, got [10, 10, 1e+200, 20]",
    ),
    "fuse-pred-absurd-box": (
        pred_case(set_pred(bbox=[-1e300, 10, 20, 20]), "ensemble"),
        "pred.json[0].bbox must be 4 finite numbers [x, y, w, h] within +-1e+07 px, got [-1e+300, 10, 20, 20]",
    ),
    "voc-bad-xml": (voc_case("<annotation><object></annotation>"), "a.xml: not valid XML"),
    "voc-no-name": (voc_case(VOC_OK.format("<object><bndbox/></object>")), "object 0: missing <name>"),
    "voc-no-bndbox": (voc_case(VOC_OK.format("<object><name>RBC</name></object>")), "missing <bndbox>"),
    "voc-bad-coordinate": (
        voc_case(voc_object("RBC", xmin="a")),
        "bndbox/xmin must be a finite number, got 'a'",
    ),
    "voc-unknown-class": (
        voc_case(voc_object("Cat"), "RBC\n"),
        "class 'Cat' is not in the class names",
    ),
    "yolo-4-fields": (yolo_case("0 0.5 0.5 0.1\n"), "line 1: expected 'class cx cy w h' (5 fields), got 4"),
    "yolo-class-out-of-range": (yolo_case("7 0.5 0.5 0.1 0.1\n"), "class index 7 outside 0..1"),
    "yolo-not-a-number": (yolo_case("0 0.5 half 0.1 0.1\n"), "cy must be a finite number, got 'half'"),
    "yolo-orphan-label": (yolo_case("0 0.5 0.5 0.1 0.1\n", label_name="ghost.txt"), "label files without an image"),
    "yolo-empty-names": (yolo_case("0 0.5 0.5 0.1 0.1\n", names="\n# none\n"), "no class names in the file"),
    "yolo-pixel-coordinates": (yolo_case("0 160 120 20 20\n"), "cx = 160 is outside [0, 1]: YOLO coordinates are"),
    "yolo-blank-class-line": (
        yolo_case("0 0.5 0.5 0.1 0.1\n", names="RBC\n\nWBC\n"),
        "line 2 is blank or a comment, but YOLO class indices are line numbers",
    ),
    "yolo-names-differ-in-case": (
        yolo_case("0 0.5 0.5 0.1 0.1\n", names=" rbc \nRBC\n"),
        "class names that differ only in case ['RBC', 'rbc']",
    ),
    "yolo-labels-folder-missing": (
        lambda tmp: [
            a.replace(str(tmp / "labels"), str(tmp / "lables")) for a in yolo_case("0 0.5 0.5 0.1 0.1\n")(tmp)
        ],
        "lables: labels folder not found",
    ),
    "yolo-no-label-files": (
        yolo_case("0 0.5 0.5 0.1 0.1\n", label_name="BloodImage_00000.lbl"),
        "no .txt label files in the labels folder",
    ),
    "yolo-duplicate-names": (yolo_case("0 0.5 0.5 0.1 0.1\n", names="RBC\nRBC\n"), "duplicate class names ['RBC']"),
    "image-truncated": (image_case(truncate), "BloodImage_00000.jpg: image file unreadable (image file is truncated"),
    "image-exif-rotated-90": (image_case(exif_rotate(6)), "BloodImage_00000.jpg: EXIF orientation 6 (rotated 90)"),
    "image-exif-mirrored": (image_case(exif_rotate(2)), "EXIF orientation 2 (mirrored): mmcv would load it turned"),
    "image-not-an-image": (
        image_case(lambda p: p.write_text("not a jpeg")),
        "BloodImage_00000.jpg: image file unreadable",
    ),
    "split-auto-truncated": (split_case(truncate), "broken.jpg: image file unreadable for near-duplicate"),
    "coco-dup-category-name": (
        coco_case(lambda d: d["categories"].append({"id": 2, "name": "RBC"})),
        "categories[1].name 'RBC' is a duplicate of categories[0]",
    ),
    "coco-dup-file-name": (
        coco_case(lambda d: d["images"].append({**d["images"][0], "id": 2})),
        "images[1].file_name 'BloodImage_00000.jpg' is a duplicate of images[0]",
    ),
    "coco-file-name-up": (
        coco_case(lambda d: d["images"][0].update(file_name="../secret.jpg")),
        "images[0].file_name '../secret.jpg' leaves the images folder",
    ),
    "coco-file-name-absolute": (
        coco_case(lambda d: d["images"][0].update(file_name="/etc/passwd")),
        "images[0].file_name '/etc/passwd' leaves the images folder",
    ),
    "audit-overrides-missing": (
        lambda tmp: [*coco_case(lambda d: None)(tmp), "--overrides", str(tmp / "overides.csv")],
        "overrides file",
    ),
    "coco-iscrowd-string": (coco_case(lambda d: d["annotations"][0].update(iscrowd="0")), "iscrowd must be 0 or 1"),
    # predictions scored by `detfold evaluate`: garbage never scores (pycocotools gives NaN boxes AP 1.0)
    "eval-bbox-nan": (pred_case(set_pred(bbox=[float("nan")] * 4)), "pred.json[0].bbox must be 4 finite numbers"),
    "eval-score-nan": (pred_case(set_pred(score=float("nan"))), "pred.json[0].score must be a finite number >= 0"),
    "eval-score-null": (pred_case(set_pred(score=None)), "score must be a finite number >= 0, got None"),
    "eval-score-string": (pred_case(set_pred(score="0.9")), "score must be a finite number >= 0, got '0.9'"),
    "eval-bbox-strings": (pred_case(set_pred(bbox=["1", "2", "3", "4"])), "[0].bbox must be 4 finite numbers"),
    "eval-bbox-3-numbers": (pred_case(set_pred(bbox=[1, 2, 3])), "[0].bbox must be 4 finite numbers"),
    "eval-bbox-infinite": (pred_case(set_pred(bbox=[1, 2, float("inf"), 3])), "[0].bbox must be 4 finite numbers"),
    "eval-negative-size": (pred_case(set_pred(bbox=[10, 10, -5, 20])), "[0].bbox has a negative width or height"),
    "eval-image-id-string": (pred_case(set_pred(image_id="1")), "[0].image_id must be an integer, got '1'"),
    "eval-category-bool": (pred_case(set_pred(category_id=True)), "[0].category_id must be an integer, got True"),
    "eval-not-a-list": (pred_case(lambda p: json.dumps({"annotations": p})), "COCO results must be a JSON list"),
    "eval-entry-not-object": (pred_case(lambda p: p.append([1, 2])), "pred.json[1]: a COCO result must be an object"),
    "eval-missing-score": (pred_case(lambda p: p[0].pop("score")), "missing ['score']"),
    "eval-unknown-image": (pred_case(set_pred(image_id=7)), "image_id 7 is not in the ground truth"),
    # `detfold ensemble`: members and options checked before anything is fused or written
    "fuse-missing-score": (pred_case(lambda p: p[0].pop("score"), "ensemble"), "missing ['score']"),
    "fuse-score-nan": (pred_case(set_pred(score=float("nan")), "ensemble"), "score must be a finite number"),
    "fuse-negative-size": (pred_case(set_pred(bbox=[10, 10, 5, -2]), "ensemble"), "negative width or height"),
    "fuse-unknown-category": (
        pred_case(set_pred(category_id=9), "ensemble"),
        "pred.json[0]: category_id 9 is not a category",
    ),
    "fuse-unknown-image": (
        pred_case(set_pred(image_id=9), "ensemble"),
        "pred.json[0]: image_id 9 is not in the ground truth",
    ),
    "fuse-max-per-img-0": (
        pred_case(lambda p: None, "ensemble", ["--max-per-img", "0"]),
        "--max-per-img must be >= 1, got 0",
    ),
    "fuse-skip-box-thr-5": (
        pred_case(lambda p: None, "ensemble", ["--skip-box-thr", "5"]),
        "--skip-box-thr must be in [0, 1], got 5.0",
    ),
    "fuse-iou-thr-negative": (
        pred_case(lambda p: None, "ensemble", ["--iou-thr", "-0.1"]),
        "--iou-thr must be in [0, 1], got -0.1",
    ),
    "fuse-weight-zero": (
        pred_case(lambda p: None, "ensemble", ["--weights", "0"]),
        "--weights must be finite numbers > 0, got [0.0]",
    ),
    "fuse-weight-negative": (
        pred_case(lambda p: None, "ensemble", ["--weights", "-1"]),
        "--weights must be finite numbers > 0, got [-1.0]",
    ),
    "fuse-weight-count": (
        pred_case(lambda p: None, "ensemble", ["--weights", "1", "2"]),
        "--weights: 2 weights for 1 prediction files",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_clear_line(case, tmp_path, bccd_dir, capsys):
    make, message = CASES[case]
    args = [a.replace("{images}", str(bccd_dir / "images")) for a in make(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("detfold: error: ")
    assert message in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()
