"""The detfold command, as a user runs it."""

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
        (["split", "{bccd}/train.json", "--k", "1", "--out", "{tmp}/f.csv"], "folds.k must be an integer >= 2"),
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
