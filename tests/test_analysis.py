"""TIDE's error breakdown (detfold.analysis.tide) against tidecv itself, and the label review."""

from __future__ import annotations

import numpy as np
import pytest
from detfold import analysis

tidecv = pytest.importorskip("tidecv")


def random_case(seed: int, n_img: int = 30, n_cat: int = 3, crowd: bool = False, ties: bool = False):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in range(n_img)]
    cats = [{"id": c + 1, "name": f"c{c}"} for c in range(n_cat)]
    anns, preds = [], []
    for im in images:
        for _ in range(rng.integers(0, 8)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 60, 2)
            c = int(rng.integers(1, n_cat + 1))
            is_crowd = int(crowd and rng.random() < 0.1)
            anns.append(
                {"id": len(anns) + 1, "image_id": im["id"], "category_id": c, "bbox": [x, y, w, h], "iscrowd": is_crowd}
            )
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 8, 4)
                cc = c if rng.random() < 0.8 else int(rng.integers(1, n_cat + 1))
                box = [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])]
                preds.append({"image_id": im["id"], "category_id": cc, "bbox": box, "score": float(rng.random())})
        for _ in range(rng.integers(0, 120 if ties else 4)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 60, 2)
            c = int(rng.integers(1, n_cat + 1))
            preds.append({"image_id": im["id"], "category_id": c, "bbox": [x, y, w, h], "score": float(rng.random())})
    if ties:
        for p in preds:
            p["score"] = round(p["score"], 1)
    return {"images": images, "annotations": anns, "categories": cats}, preds


def run_tidecv(gt, preds):
    g, p = tidecv.Data("gt"), tidecv.Data("pred")
    for im in gt["images"]:
        g.add_image(im["id"], im["file_name"])
    for c in gt["categories"]:
        g.add_class(c["id"], c["name"])
    for a in gt["annotations"]:
        if a["iscrowd"]:
            g.add_ignore_region(a["image_id"], a["category_id"], a["bbox"])
        else:
            g.add_ground_truth(a["image_id"], a["category_id"], a["bbox"])
    for d in preds:
        p.add_detection(d["image_id"], d["category_id"], d["score"], d["bbox"])
    t = tidecv.TIDE()
    run = t.evaluate(g, p, mode=tidecv.TIDE.BOX)
    counts = {e.short_name: n for e, n in run.count_errors().items()}
    return run.ap, t.get_main_errors()["pred"], t.get_special_errors()["pred"], counts


@pytest.mark.parametrize(
    ("seed", "crowd", "ties"),
    [(0, False, False), (1, True, False), (2, False, False), (3, True, True), (4, False, True)],
)
def test_tide_equals_tidecv(seed, crowd, ties):
    """Every number tidecv prints (percent) equals ours (fractions) to float rounding (tidecv
    sums in another order), and the error counts are equal; ties and > 100 detections included."""
    gt, preds = random_case(seed, n_img=8 if ties else 30, crowd=crowd, ties=ties)
    ap, main, special, counts = run_tidecv(gt, preds)
    ours = analysis.tide(gt, preds)
    assert ours["mAP"] * 100 == pytest.approx(ap, abs=1e-9)
    for kind in analysis.ERROR_TYPES:
        assert ours["main"][kind] * 100 == pytest.approx(main[kind], abs=1e-9), kind
    for kind in analysis.SPECIAL_TYPES:
        assert ours["special"][kind] * 100 == pytest.approx(special[kind], abs=1e-9), kind
    assert ours["counts"] == counts


def test_review_finds_a_box_labelled_twice_and_a_swapped_class():
    gt, _ = random_case(7, n_img=10, n_cat=2)
    first = gt["annotations"][0]
    twin = {**first, "id": 999, "bbox": [first["bbox"][0] + 1, first["bbox"][1] + 1, *first["bbox"][2:]]}
    preds = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    swapped = gt["annotations"][5]
    noisy = {**gt, "annotations": [*gt["annotations"], twin]}
    noisy["annotations"][5] = {**swapped, "category_id": 3 - swapped["category_id"]}
    rows = analysis.review_candidates(noisy, preds)
    kinds = {(r["check"], r["ann_id"]) for r in rows}
    assert ("possibly_wrong_class", swapped["id"]) in kinds
    assert ("possibly_duplicate", 999) in kinds or ("possibly_duplicate", first["id"]) in kinds


def test_detfold_analyze_writes_every_file(tmp_path, capsys):
    """The CLI on the bundled BCCD test set, with its own boxes (shifted 2 px) as predictions."""
    import csv
    import json
    from pathlib import Path

    from detfold.cli import main

    gt_path = Path(__file__).parent / "data" / "bccd" / "test.json"
    gt = json.loads(gt_path.read_text())
    preds = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + 2, *a["bbox"][1:]],
            "score": 0.9,
        }
        for a in gt["annotations"]
        if a["bbox"][2] > 0 and a["bbox"][3] > 0
    ]
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    assert (
        main(["analyze", "--gt", str(gt_path), "--pred", str(tmp_path / "pred.json"), "--out", str(tmp_path / "a")])
        == 0
    )
    assert "TIDE mAP50" in capsys.readouterr().out
    tide = json.loads((tmp_path / "a" / "tide.json").read_text())
    assert tide["mAP"] > 0.99 and set(tide["main"]) == set(analysis.ERROR_TYPES)
    thresholds = json.loads((tmp_path / "a" / "thresholds.json").read_text())
    assert {"RBC", "WBC", "Platelets"} <= set(thresholds)
    rows = list(csv.reader((tmp_path / "a" / "confusion.csv").open()))
    assert rows[0][-1] == "background" and len(rows) == len(gt["categories"]) + 2
    with (tmp_path / "a" / "review.csv").open() as handle:
        review = list(csv.DictReader(handle))
    # the test set's duplicated RBC pair (ann 244 ~ 252, IoU 0.83) is a review candidate
    assert {r["ann_id"] for r in review if r["check"] == "possibly_duplicate"} & {"244", "252"}
    assert (
        main(["analyze", "--gt", str(gt_path), "--pred", str(tmp_path / "missing.json"), "--out", str(tmp_path / "b")])
        == 2
    )
