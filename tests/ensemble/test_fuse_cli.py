"""`detfold fuse` (alias `detfold ensemble`): the library's fusion of COCO results files, checked first."""

import json
import logging

from detfold.cli import main
from detfold.ensemble.fusion import fuse_members
from helpers.predictions import clean, noisy_member


def write_inputs(gt, tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(gt.data))
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"m{seed}.json")
        paths[-1].write_text(json.dumps(noisy_member(gt, seed)))
    return [str(p) for p in paths]


def test_fuse_writes_what_the_library_fuses(bccd_test, tmp_path):
    gt = clean(bccd_test)
    paths = write_inputs(gt, tmp_path)
    args = ["fuse", "--gt", str(tmp_path / "gt.json"), "--pred", *paths, "--weights", "2", "1"]
    assert main([*args, "--iou-thr", "0.6", "--out", str(tmp_path / "fused.json")]) == 0
    members = [noisy_member(gt, seed) for seed in (0, 1)]
    params = {"method": "wbf", "iou_thr": 0.6, "skip_box_thr": 0.0, "conf_type": "avg", "weights": [2.0, 1.0]}
    expected = fuse_members(members, gt.images, {**params, "class_agnostic": False}, 100).to_results()
    assert json.loads((tmp_path / "fused.json").read_text()) == expected


def test_images_is_refused_by_fuse_and_warned_about_by_the_alias(bccd_test, tmp_path, capsys, caplog):
    gt = clean(bccd_test)
    paths = write_inputs(gt, tmp_path)
    gt_json = str(tmp_path / "gt.json")
    assert main(["fuse", "--images", gt_json, "--pred", *paths, "--out", str(tmp_path / "a.json")]) == 2
    assert "--gt" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()
    with caplog.at_level(logging.WARNING, logger="detfold"):
        assert main(["ensemble", "--images", gt_json, "--pred", *paths, "--out", str(tmp_path / "b.json")]) == 0
    assert any("use --gt" in r.getMessage() for r in caplog.records)
    assert main(["fuse", "--gt", gt_json, "--pred", *paths, "--out", str(tmp_path / "c.json")]) == 0
    assert (tmp_path / "b.json").read_text() == (tmp_path / "c.json").read_text()


def test_an_unknown_method_or_conf_type_is_named(bccd_test, tmp_path, capsys):
    gt = clean(bccd_test)
    paths = write_inputs(gt, tmp_path)
    base = ["fuse", "--gt", str(tmp_path / "gt.json"), "--pred", *paths, "--out", str(tmp_path / "f.json")]
    assert main([*base, "--method", "vote"]) == 2
    assert "method 'vote' is not one of" in capsys.readouterr().err
    assert main([*base, "--conf-type", "median"]) == 2
    assert "conf_type 'median' is not one of" in capsys.readouterr().err
