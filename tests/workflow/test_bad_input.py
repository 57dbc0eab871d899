"""Broken inputs of every supported format: one clear line naming the problem, no traceback,
and no output file left behind."""

import json
from pathlib import Path

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


def image_case(damage, mutate=lambda d: None):
    """GOOD's one image, copied and ``damage``d (a function of the copy's path), audited
    against GOOD ``mutate``d."""

    def make(tmp):
        import shutil

        from conftest import BCCD

        (tmp / "images").mkdir()
        shutil.copy(BCCD / "images" / "BloodImage_00000.jpg", tmp / "images")
        damage(tmp / "images" / "BloodImage_00000.jpg")
        data = json.loads(json.dumps(GOOD))
        mutate(data)
        (tmp / "in.json").write_text(json.dumps(data))
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


def with_options(make, *extra):
    """``make``'s command line with the options ``extra`` after it ({tmp}: the test's folder)."""
    return lambda tmp: [*make(tmp), *(a.replace("{tmp}", str(tmp)) for a in extra)]


def with_bytes(name, content, make):
    """``make``'s case, then the file ``name`` in the test's folder written with ``content``."""

    def wrapped(tmp):
        args = make(tmp)
        (tmp / name).write_bytes(content)
        return args

    return wrapped


def split_case2(*extra, mutate=lambda d: None, n_images=3):
    """``detfold split --k 2`` of GOOD grown to ``n_images`` images of one box each, ``mutate``d,
    with the options ``extra`` ({tmp}: the test's folder)."""

    def make(tmp):
        data = json.loads(json.dumps(GOOD))
        for i in range(2, n_images + 1):
            data["images"].append({**data["images"][0], "id": i, "file_name": f"BloodImage_{i:05d}.jpg"})
            data["annotations"].append({**data["annotations"][0], "id": i, "image_id": i})
        mutate(data)
        (tmp / "in.json").write_text(json.dumps(data))
        return ["split", str(tmp / "in.json"), "--k", "2", "--out", str(tmp / "out")]

    return with_options(make, *extra)


def fuse_case(*extra, members=2, gt=lambda d: None):
    """``detfold fuse`` of ``members`` copies of the good results file against GOOD ``gt``-mutated,
    with the options ``extra``."""

    def make(tmp):
        data = json.loads(json.dumps(GOOD))
        gt(data)
        (tmp / "gt.json").write_text(json.dumps(data))
        (tmp / "pred.json").write_text(json.dumps(PRED))
        preds = [str(tmp / "pred.json")] * members
        return ["fuse", "--gt", str(tmp / "gt.json"), "--pred", *preds, "--out", str(tmp / "out.json")]

    return with_options(make, *extra)


def analyze_case(*extra, gt=lambda d: None):
    """``detfold analyze`` of the good results file against GOOD ``gt``-mutated."""

    def make(tmp):
        data = json.loads(json.dumps(GOOD))
        gt(data)
        (tmp / "gt.json").write_text(json.dumps(data))
        (tmp / "pred.json").write_text(json.dumps(PRED))
        return ["analyze", "--gt", str(tmp / "gt.json"), "--pred", str(tmp / "pred.json"), "--out", str(tmp / "out")]

    return with_options(make, *extra)


def audit_case(*extra, mutate=lambda d: None):
    """``detfold audit`` of GOOD ``mutate``d with the options ``extra``."""
    return with_options(coco_case(mutate), *extra)


def no_boxes(data):
    data["annotations"] = []


def no_images(data):
    data.update(images=[], annotations=[])


OVERRIDES_LATIN1 = b"ann_id,image_id,decision,note\n1,,keep,caf\xe9\n"  # \xe9 at byte 41
GROUPS_LATIN1 = b"file_name,group\nBloodImage_00000.jpg,caf\xe9\n"  # \xe9 at byte 40
COCO_LATIN1 = json.dumps(GOOD).replace("RBC", "caf\xe9").encode("latin-1")


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
    "coco-size-mismatch": (
        coco_case(lambda d: d["images"][0].update(width=640)),
        "BloodImage_00000.jpg: the image file is 320x240 px (width x height) but ",
    ),
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
    "image-exif-mirrored": (
        image_case(exif_rotate(2)),
        "EXIF orientation 2 (mirrored): pixels stored 320x240 px, shown upright 320x240; ",
    ),
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
    # options that would do nothing are refused, naming the option, its value and why
    "fuse-conf-type-with-nms": (
        fuse_case("--method", "nms", "--conf-type", "max"),
        "--conf-type max does nothing with --method nms: conf_type is how WBF scores a fused box",
    ),
    "fuse-iou-thr-with-soft-nms": (
        fuse_case("--method", "soft_nms", "--iou-thr", "0.3"),
        "--iou-thr 0.3 does nothing with --method soft_nms: Gaussian soft-NMS decays",
    ),
    "fuse-option-with-one-file": (
        fuse_case("--method", "nms", members=1),
        "--method does nothing with one --pred file (",
    ),
    "fuse-class-agnostic-with-one-file": (
        fuse_case("--class-agnostic", members=1),
        "--class-agnostic does nothing with one --pred file (",
    ),
    "audit-check-without-value": (audit_case("--check", "tiny"), "--check 'tiny' changes nothing: give NAME=THRESHOLD"),
    "audit-check-empty-value": (audit_case("--check", "tiny=:"), "--check 'tiny=:' changes nothing"),
    "audit-check-empty-image-threshold": (
        audit_case("--check", "empty_image=3"),
        "--check 'empty_image=3': threshold 3.0 does nothing: empty_image (image has no box left) takes no threshold",
    ),
    "audit-check-twice": (
        audit_case("--check", "tiny=4", "--check", "tiny=5"),
        "--check 'tiny=5': check 'tiny' is given twice",
    ),
    "audit-check-threshold-nan": (
        audit_case("--check", "tiny=nan"),
        "--check 'tiny=nan': threshold nan is not a finite number: must be a number >= 0 (shorter side < threshold px)",
    ),
    "audit-check-iou-above-1": (
        audit_case("--check", "duplicate=2"),
        "--check 'duplicate=2': threshold 2.0 is out of range: must be a number > 0 and <= 1 (same-class IoU",
    ),
    "audit-check-clip-on-tiny": (
        audit_case("--check", "tiny=4:clip"),
        "--check 'tiny=4:clip': action 'clip' is not one of ['flag', 'drop_box', 'drop_image'] (check tiny)",
    ),
    "split-images-without-auto": (
        split_case2("--images", "{tmp}"),
        "does nothing without --group-by auto (it hashes the images)",
    ),
    # an empty dataset is an error naming the file, never "0 findings" or an empty result
    "audit-no-images": (audit_case(mutate=no_images), "in.json: 'images' is empty: no image to audit or train on"),
    "audit-no-boxes": (audit_case(mutate=no_boxes), "in.json: 'annotations' is empty: no box to audit or train on"),
    "split-no-boxes": (split_case2(mutate=no_boxes), "in.json: 'annotations' is empty: no box to split into folds"),
    "split-no-images": (split_case2(mutate=no_images), "in.json: 'images' is empty: no image to split into folds"),
    "evaluate-gt-no-boxes": (gt_case(no_boxes), "gt.json: 'annotations' is empty: no box to score the predictions"),
    "fuse-gt-no-images": (fuse_case(gt=no_images), "gt.json: 'images' is empty: no image to fuse the predictions on"),
    "analyze-gt-no-boxes": (analyze_case(gt=no_boxes), "gt.json: 'annotations' is empty: no box to analyse"),
    # messages say which value is whose, and what to do
    "coco-size-swapped": (
        coco_case(set_image(width=240, height=320)),
        (
            "BloodImage_00000.jpg: the image file is 320x240 px (width x height) but ",
            "in.json images[0] (id 1) says width 240, height 320 (width and height swapped); correct the JSON or",
        ),
    ),
    "image-exif-rotated-upright-size": (
        image_case(exif_rotate(6), set_image(width=240, height=320)),
        (
            "BloodImage_00000.jpg: EXIF orientation 6 (rotated 90): pixels stored 320x240 px, shown upright 240x320; ",
            "in.json images[0] (id 1) gives 240x320; mmcv would load it turned",
        ),
    ),
    "split-regex-matches-nothing": (
        split_case2("--group-by", "regex:^patient(\\d+)"),
        "--group-by 'regex:^patient(\\d+)' matches no file name (e.g. 'BloodImage_00000.jpg')",
    ),
    "split-regex-one-group": (
        split_case2("--group-by", "regex:Blood"),
        "--group-by 'regex:Blood' puts all 3 images of ",
    ),
    "split-field-one-group": (
        split_case2("--group-by", "field:width"),
        "--group-by 'field:width' puts all 3 images of ",
    ),
    "split-csv-names-no-file": (
        with_bytes("groups.csv", b"file_name,group\nother.jpg,a\n", split_case2("--group-by", "csv:{tmp}/groups.csv")),
        "groups.csv': the CSV names none of the 3 file names of ",
    ),
    "split-sgkf-too-many-folds": (
        split_case2("--method", "sgkf", "--k", "3", mutate=lambda d: d.update(annotations=d["annotations"][:1])),
        "--method sgkf (stratified by box class) needs --k 3 or more boxes of some class and 3 or more images",
    ),
    "split-seed-negative": (
        split_case2("--seed", "-1"),
        "argument --seed: must be an integer in [0, 4294967295], got '-1'",
    ),
    "split-seed-text": (
        split_case2("--seed", "abc"),
        "argument --seed: must be an integer in [0, 4294967295], got 'abc'",
    ),
    "split-k-fraction": (split_case2("--k", "1.5"), "argument --k: must be an integer >= 2, got '1.5'"),
    "fuse-max-per-img-text": (fuse_case("--max-per-img", "ten"), "argument --max-per-img: invalid int value: 'ten'"),
    "coco-not-utf8": (
        with_bytes("in.json", COCO_LATIN1, coco_case(lambda d: None)),
        f"in.json: not UTF-8 text (invalid continuation byte at byte {json.dumps(GOOD).index('RBC') + 3}: b'\\xe9')",
    ),
    "audit-overrides-not-utf8": (
        with_bytes("o.csv", OVERRIDES_LATIN1, audit_case("--overrides", "{tmp}/o.csv")),
        "o.csv: not UTF-8 text (invalid continuation byte at byte 41: b'\\xe9'); save it as UTF-8",
    ),
    "split-group-csv-not-utf8": (
        with_bytes("groups.csv", GROUPS_LATIN1, split_case2("--group-by", "csv:{tmp}/groups.csv")),
        "groups.csv: not UTF-8 text (invalid continuation byte at byte 40",
    ),
    # a new user's paths: a folder for a file, a file for a folder, an output onto an input
    "split-out-is-input": (split_case2("--out", "{tmp}/in.json"), "in.json, given as ANNOTATIONS: give another path"),
    "split-out-is-a-folder": (split_case2("--out", "{tmp}"), ": is a folder; give the CSV file to write"),
    "split-out-under-a-file": (split_case2("--out", "{tmp}/in.json/folds.csv"), "in.json is a file, not a folder"),
    "evaluate-json-is-gt": (
        with_options(pred_case(lambda p: None), "--json", "{tmp}/gt.json"),
        "gt.json, given as --gt: give another path",
    ),
    "fuse-out-is-pred": (fuse_case("--out", "{tmp}/pred.json"), "pred.json, given as --pred: give another path"),
    "fuse-out-is-a-folder": (fuse_case("--out", "{tmp}"), "is a folder; give the path of the file to write"),
    "audit-out-is-a-file": (audit_case("--out", "{tmp}/in.json"), "in.json: is a file; give the folder to write"),
    "audit-annotations-is-a-folder": (
        lambda tmp: ["audit", str(tmp), "--images", "{images}", "--out", str(tmp / "out")],
        ": is a folder, expected a file",
    ),
    "audit-images-not-a-folder": (audit_case("--images", "{tmp}/in.json"), "in.json: not a folder"),
    "audit-images-missing": (audit_case("--images", "{tmp}/imgs"), "imgs: no such folder"),
    "analyze-images-not-a-folder": (analyze_case("--images", "{tmp}/gt.json"), "gt.json: not a folder"),
    "evaluate-pred-is-a-folder": (
        with_options(pred_case(lambda p: None), "--pred", "{tmp}"),
        ": is a folder, expected a file",
    ),
    "evaluate-pred-utf16": (
        with_bytes("pred.json", json.dumps(PRED).encode("utf-16"), pred_case(lambda p: None)),
        "pred.json: not UTF-8 text (it is UTF-16) (invalid start byte at byte 0",
    ),
}


def files_under(folder):
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {p: None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_clear_line(case, tmp_path, bccd_dir, capsys):
    """Each case's message (or each part of it) is in the one error line; no file or folder
    is written or changed (an output named as an input included)."""
    make, message = CASES[case]
    args = [a.replace("{images}", str(bccd_dir / "images")) for a in make(tmp_path)]
    before = files_under(tmp_path)
    assert main(args) == 2
    assert files_under(tmp_path) == before
    err = capsys.readouterr().err.strip()
    assert err.startswith("detfold: error: ")
    for part in message if isinstance(message, tuple) else [message]:
        assert part in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("name", ["m.json", "."])
def test_a_write_onto_a_folder_names_the_output_not_a_temporary_file(name, tmp_path, monkeypatch):
    """The library's writers (not only the command's checks): the reason is the user's path."""
    from detfold.core.io import write_json

    monkeypatch.chdir(tmp_path)
    Path(name).mkdir(exist_ok=True)
    with pytest.raises(OSError) as err:
        write_json(name, {"mAP": 0.5})
    assert err.value.strerror == f"cannot write {name}: it is a folder; nothing written under that name"
    assert ".tmp" not in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ([] if name == "." else [name])


def test_a_user_file_that_is_not_readable_is_named(tmp_path):
    from detfold.core.io import read_json

    with pytest.raises(IsADirectoryError) as err:
        read_json(tmp_path)
    assert str(err.value) == f"{tmp_path}: is a folder, expected a file"
