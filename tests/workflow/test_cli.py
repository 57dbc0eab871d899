"""The detfold command, as a user runs it."""

import csv
import json
import subprocess
import sys

import pytest
from detfold.cli import main


def detfold(*args):
    return subprocess.run(
        [sys.executable, "-m", "detfold.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_audit_split_evaluate_ensemble(bccd_dir, tmp_path):
    result = detfold("audit", bccd_dir / "train.json", "--images", bccd_dir / "images", "--out", tmp_path / "audit")
    assert result.returncode == 0, result.stderr
    assert "2 boxes dropped" in result.stdout
    clean = tmp_path / "audit" / "annotations.json"
    findings = (tmp_path / "audit" / "findings.csv").read_text().splitlines()
    assert (
        findings[0].startswith("split,image_id,ann_id") and len(findings) == 1 + 2 + 7 + 3
    )  # header, degenerate, duplicates, size outliers

    result = detfold("split", clean, "--k", 4, "--seed", 42, "--out", tmp_path / "folds.csv")
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "folds.csv").read_text().splitlines()
    assert rows[0] == "image_id,file_name,fold" and len(rows) == 292

    gt = json.loads(clean.read_text())
    preds = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    result = detfold("evaluate", "--gt", clean, "--pred", tmp_path / "p.json", "--json", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "m.json").read_text())["mAP"] == pytest.approx(1.0)
    assert "AP[Platelets]" in result.stdout

    result = detfold(
        "ensemble",
        "--images",
        clean,
        "--pred",
        tmp_path / "p.json",
        tmp_path / "p.json",
        "--weights",
        2,
        1,
        "--out",
        tmp_path / "fused.json",
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "fused.json").read_text())) > 0.9 * len(preds)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "--gt", "{bccd}/train.json", "--pred", "{tmp}/missing.json"], "missing.json: file not found"),
        (["split", "{bccd}/train.json", "--k", "1", "--out", "{tmp}/f.csv"], "argument --k: must be an integer >= 2"),
        (["audit", "{bccd}/train.json", "--images", "{tmp}", "--out", "{tmp}/a"], "image file missing"),
    ],
)
def test_errors_are_one_clear_line(bccd_dir, tmp_path, capsys, args, message):
    args = [a.format(bccd=bccd_dir, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("detfold: error:") and message in err
    assert "Traceback" not in err


def test_evaluate_of_the_demo_predictions_equals_the_library(bccd_dir, tmp_path):
    """The demo's real OOF predictions (3.5 MB) scored by the command: the metrics of the
    library called on them."""
    import gzip
    from pathlib import Path

    from detfold.core.coco import load_coco, load_detections
    from detfold.core.io import write_json
    from detfold.evaluate.metrics import evaluate_coco

    with gzip.open(Path(__file__).parents[1] / "data" / "bccd_oof" / "predictions.json.gz", "rt") as handle:
        write_json(tmp_path / "oof.json", json.load(handle)["oof"])
    gt = bccd_dir / "train.json"
    result = detfold("evaluate", "--gt", gt, "--pred", tmp_path / "oof.json", "--json", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    expected = evaluate_coco(load_coco(gt), load_detections(tmp_path / "oof.json"), str(tmp_path / "oof.json"))
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(expected))


def test_an_argparse_error_is_one_line_naming_the_option(bccd_dir, tmp_path):
    result = detfold("split", bccd_dir / "train.json", "--seed", "-1", "--out", tmp_path / "f.csv")
    assert result.returncode == 2
    assert result.stderr == (
        "detfold: error: argument --seed: must be an integer in [0, 4294967295], got '-1' (see detfold split --help)\n"
    )
    assert not (tmp_path / "f.csv").exists()


def test_fuse_fills_in_the_defaults_of_the_options_not_given(bccd_dir, tmp_path):
    """Options are None until checked (so that one given to a method that ignores it is
    refused); the defaults then are the config's: the same boxes as when given explicitly."""
    from detfold.core.coco import load_coco

    gt = load_coco(bccd_dir / "test.json")
    preds = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5 + 0.1 * (i % 5)}
        for i, a in enumerate(gt.annotations)
    ]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    base = ["fuse", "--gt", str(bccd_dir / "test.json"), "--pred", str(tmp_path / "p.json"), str(tmp_path / "p.json")]
    assert main([*base, "--method", "soft_nms", "--out", str(tmp_path / "a.json")]) == 0
    explicit = ["--skip-box-thr", "0.0", "--max-per-img", "100"]
    assert main([*base, "--method", "soft_nms", *explicit, "--out", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert main([*base, "--out", str(tmp_path / "c.json")]) == 0
    assert main([*base, "--method", "wbf", "--conf-type", "avg", "--out", str(tmp_path / "d.json")]) == 0
    assert (tmp_path / "c.json").read_bytes() == (tmp_path / "d.json").read_bytes()


def test_fuse_of_one_file_writes_it_as_it_is_with_a_warning(bccd_dir, tmp_path, caplog):
    pred = [{"image_id": 4, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.9}]
    (tmp_path / "p.json").write_text(json.dumps(pred))
    args = ["fuse", "--gt", str(bccd_dir / "test.json"), "--pred", str(tmp_path / "p.json")]
    assert main([*args, "--out", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text()) == pred
    assert f"one --pred file ({tmp_path / 'p.json'}): nothing to fuse, written as it is" in caplog.text


def test_audit_check_options_change_the_policy(bccd_dir, tmp_path):
    images = str(bccd_dir / "images")
    checks = ["--check", "tiny=40:drop_box", "--check", "empty_image=:drop_image", "--check", "duplicate=:drop_box"]
    assert main(["audit", str(bccd_dir / "test.json"), "--images", images, "--out", str(tmp_path), *checks]) == 0
    with open(tmp_path / "findings.csv") as handle:
        rows = list(csv.DictReader(handle))
    tiny = {(r["threshold"], r["action"]) for r in rows if r["check"] == "tiny"}
    assert tiny == {("40.0", "drop_box")}
    assert {r["action"] for r in rows if r["check"] == "duplicate"} == {"drop_box"}


def test_outputs_go_into_folders_that_do_not_exist_yet(bccd_dir, tmp_path):
    out = tmp_path / "new" / "folder" / "folds.csv"
    assert main(["split", str(bccd_dir / "test.json"), "--k", "2", "--out", str(out)]) == 0
    assert out.is_file() and (out.parent / "folds.balance.csv").is_file()
