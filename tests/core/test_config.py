"""The config gate: a bad config.yaml is refused before any job starts, naming the key, the bad
value and what is allowed; impossible combinations (missing files, k > images, ...) too."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from detfold.core.config import ConfigError, check_feasible, check_schema, feasibility_problems, schema_problems

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def edited(**changes):
    """The demo config with dotted keys set (value None deletes the key, "__null__" sets null)."""
    config = copy.deepcopy(DEMO)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = None if value == "__null__" else value
    return config


def test_demo_config_passes_both_gates():
    assert schema_problems(DEMO, SCHEMA) == []
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        filled = copy.deepcopy(DEMO)
        filled.setdefault("folds", {}).setdefault("k", 5)
        assert feasibility_problems(filled) == []
    finally:
        os.chdir(cwd)


SCHEMA_CASES = {
    "unknown top key": (edited(modles={}), "unknown key 'modles'; did you mean 'models'?"),
    "unknown folds key": (edited(folds__kk=3), "unknown key 'folds.kk'; did you mean 'k'?"),
    "unknown model key": (
        edited(models__rtmdet_tiny__epoch=3),
        "unknown key 'models.rtmdet_tiny.epoch'; did you mean 'epochs'?",
    ),
    "unknown key, no near miss": (edited(predict__zzz=1), "unknown key 'predict.zzz' (allowed under predict:"),
    "bad enum": (
        edited(folds__method="balancd"),
        "folds.method = 'balancd' is not allowed; did you mean 'balanced'? (allowed values: balanced, iterstrat, sgkf,",
    ),
    "bad ensemble method": (
        edited(ensemble__method="wfb"),
        "ensemble.method = 'wfb' is not allowed; did you mean 'wbf'? (allowed values: wbf, nms, soft_nms, nmw)",
    ),
    "wrong type": (edited(seed="42"), "seed = '42' has the wrong type: expected integer"),
    "k too small": (edited(folds__k=1), "folds.k = 1 is out of range: must be >= 2"),
    "negative epochs": (
        edited(models__rtmdet_tiny__epochs=0),
        "models.rtmdet_tiny.epochs = 0 is out of range: must be >= 1",
    ),
    "score_thr above 1": (edited(predict__score_thr=1.5), "predict.score_thr = 1.5 is out of range: must be <= 1"),
    "lr zero": (edited(models__rtmdet_tiny__lr=0), "models.rtmdet_tiny.lr = 0 is out of range: must be > 0"),
    "img_scale one number": (
        edited(models__rtmdet_tiny__img_scale=[320]),
        "models.rtmdet_tiny.img_scale = [320] must have at least 2 item(s)",
    ),
    "model without config": (
        edited(models__rtmdet_tiny__config=None),
        "models.rtmdet_tiny: required key 'config' is missing",
    ),
    "no models": (edited(models={}), "models needs at least 1 entry (got none)"),
    "bad model name": (
        edited(**{"models__my model": {"config": "x.py"}}),
        "models: name 'my model' must be letters, digits, _ . - (not dots alone",
    ),
    "model named ..": (
        edited(**{"models__..": {"config": "x.py"}}),
        "models: name '..' must be letters, digits, _ . - (not dots alone: a model's name is a folder",
    ),
    "bad group_by": (edited(folds__group_by="regexp:(.*)"), "folds.group_by = 'regexp:(.*)' does not match"),
    "bad tta merge": (
        edited(predict__tta={"flip": True, "merge": "mean"}),
        "predict.tta.merge = 'mean' is not allowed (allowed values: nms, wbf)",
    ),
    "fold fusion method unknown": (
        edited(ensemble__fold_fusion={"method": "vote"}),
        "ensemble.fold_fusion.method = 'vote' is not allowed (allowed values: wbf, nms, soft_nms, nmw)",
    ),
    "fold fusion word unknown": (
        edited(ensemble__fold_fusion="auto"),
        "ensemble.fold_fusion = 'auto' is not allowed: How each model's K fold models are fused: search",
    ),
    "missing data key": (edited(data__train_images=None), "data: required key 'train_images' is missing"),
    "k as a float": (edited(folds__k=5.0), "folds.k = 5.0 has the wrong type: expected integer"),
    "epochs as a float": (
        edited(models__rtmdet_tiny__epochs=12.0),
        "models.rtmdet_tiny.epochs = 12.0 has the wrong type: expected integer",
    ),
    "external without test file": (
        edited(ensemble__external=[{"name": "yolo", "oof": "a.json"}]),
        "ensemble.external.0: required key 'test' is missing",
    ),
    "backbone_weights true": (
        edited(models__rtmdet_tiny__backbone_weights=True),
        "models.rtmdet_tiny.backbone_weights = True",
    ),
    "seed negative": (edited(seed=-1), "seed = -1 is out of range: must be >= 0"),
    "seed past numpy's range": (edited(seed=2**32), "seed = 4294967296 is out of range: must be <= 4294967295"),
    "seed + k past numpy's range": (
        edited(seed=2**32 - 2),
        "seed = 4294967294 is out of range with folds.k = 3: fold 2 trains with seed + 2 = 4294967296, past "
        "numpy's 4294967295; use a seed <= 4294967293",
    ),
    "integer past 64 bits": (
        edited(models__rtmdet_tiny__batch_size=2**64),
        "models.rtmdet_tiny.batch_size = 18446744073709551616 is out of range: a 64-bit integer is at most",
    ),
    "clip for a check that cannot clip": (
        edited(audit__checks__tiny={"threshold": 2, "action": "clip"}),
        "audit.checks.tiny.action = 'clip' is not one of ['flag', 'drop_box', 'drop_image'] (check tiny); "
        "clip is for outside_image only",
    ),
    "drop_box for empty_image": (
        edited(audit__checks__empty_image={"action": "drop_box"}),
        "audit.checks.empty_image.action = 'drop_box' is not one of ['flag', 'drop_image'] (check empty_image)",
    ),
    "IoU threshold above 1": (
        edited(audit__checks__duplicate={"threshold": 1.5, "action": "flag"}),
        "audit.checks.duplicate.threshold = 1.5 is out of range: must be a number > 0 and <= 1",
    ),
    "aspect threshold below 1": (
        edited(audit__checks__extreme_aspect={"threshold": 0.5}),
        "audit.checks.extreme_aspect.threshold = 0.5 is out of range: must be a number >= 1",
    ),
    "threshold for a check without one": (
        edited(audit__checks__empty_image={"threshold": 3, "action": "flag"}),
        "audit.checks.empty_image.threshold = 3 does nothing: empty_image (image has no box left) takes no threshold",
    ),
    "threshold in quotes": (
        edited(audit__checks__tiny={"threshold": "2.5"}),
        "audit.checks.tiny.threshold = '2.5' has the wrong type: expected number; write it without quotes: 2.5",
    ),
    "number in quotes": (
        edited(ensemble__iou_thr="0.5"),
        "ensemble.iou_thr = '0.5' has the wrong type: expected number; write it without quotes: 0.5",
    ),
    "NaN threshold": (edited(ensemble__iou_thr=float("nan")), "ensemble.iou_thr = nan is not a finite number"),
    "infinite learning rate": (
        edited(models__rtmdet_tiny__lr=float("inf")),
        "models.rtmdet_tiny.lr = inf is not a finite number",
    ),
    "empty search list": (
        edited(ensemble__search__method=[]),
        "ensemble.search.method = [] is empty: list at least one value, or leave the key out",
    ),
    "empty search thresholds": (
        edited(ensemble__search__iou_thr=[]),
        "ensemble.search.iou_thr = [] is empty: list at least one value, or leave the key out",
    ),
    "null where a list is expected": (
        edited(ensemble__search__skip_box_thr="__null__"),
        "ensemble.search.skip_box_thr is empty (null): expected a list; give a value",
    ),
    "null path": (
        edited(data__train_annotations="__null__"),
        "data.train_annotations is empty (null): expected string; give a value; a lone ~ is null in YAML, not the home",
    ),
    "null models": (edited(models="__null__"), "models is empty (null): expected a mapping (key: value)"),
    "model settings without a model name": (
        edited(models={"config": "x.py"}),
        "models.config = 'x.py' has the wrong type: expected a mapping (key: value): a model's settings, e.g. "
        "config: {config: path/to/config.py, epochs: 12} (settings written right under models: need a model name",
    ),
    "conf_type with NMS": (
        edited(ensemble__method="nms", ensemble__conf_type="max"),
        "ensemble.conf_type = 'max' does nothing with ensemble.method = 'nms' (conf_type is WBF's); remove it or "
        "set method: wbf",
    ),
    "fixed fold fusion conf_type with NMS": (
        edited(ensemble__fold_fusion={"method": "soft_nms", "conf_type": "avg"}),
        "ensemble.fold_fusion.conf_type = 'avg' does nothing with ensemble.fold_fusion.method = 'soft_nms'",
    ),
    "external named like a model": (
        edited(ensemble__external=[{"name": "rtmdet_tiny", "oof": "a.json", "test": "b.json"}]),
        "ensemble.external[0].name = 'rtmdet_tiny' is taken by models.rtmdet_tiny: every member of the ensemble "
        "needs its own name",
    ),
    "two externals of one name": (
        edited(ensemble__external=[{"name": "yolo", "oof": "a.json", "test": "b.json"}] * 2),
        "ensemble.external[1].name = 'yolo' is taken by ensemble.external[0]",
    ),
    "balance weights with another fold method": (
        edited(folds__method="iterstrat", folds__weights={"class_boxes": 3}),
        "does nothing with folds.method = 'iterstrat' (the weights are the balanced method's); remove them or set",
    ),
    "TTA merge with one view": (
        edited(predict__tta={"merge": "wbf"}),
        "predict.tta.merge = 'wbf' does nothing: predict.tta has one view (no flip, scales [1.0]), nothing to merge",
    ),
    "number YAML reads as text": (
        edited(seed="1e3"),
        "seed = '1e3' has the wrong type: expected integer; YAML reads 1e3 as text: write 1000",
    ),
    "enum in capitals": (
        edited(data__format="YOLO"),
        "data.format = 'YOLO' is not allowed; did you mean 'yolo'? (allowed values: coco, voc, yolo)",
    ),
    "empty multi-scale list": (
        edited(models__rtmdet_tiny__multi_scale=[]),
        "models.rtmdet_tiny.multi_scale = [] is empty: list at least one value, or leave the key out",
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_schema_problem_names_key_value_and_allowed(case):
    config, expected = SCHEMA_CASES[case]
    problems = schema_problems(config, SCHEMA)
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_all_problems_are_listed_at_once(tmp_path):
    config = edited(folds__kk=3, predict__score_thr=2, models__rtmdet_tiny__checkpoint="bst")
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(yaml.safe_dump(SCHEMA))
    with pytest.raises(ConfigError) as err:
        check_schema(config, schema_file)
    assert len(err.value.problems) == 3
    assert "3 problem(s); nothing was run" in str(err.value)
    assert "models.rtmdet_tiny.checkpoint = 'bst' is not allowed; did you mean 'best'?" in str(err.value)


@pytest.fixture()
def workdir(tmp_path, bccd_dir, monkeypatch):
    """A working folder with a small valid setup: 30 train images, 3 test images."""
    from detfold.core.coco import load_coco, write_coco

    train, test = load_coco(bccd_dir / "train.json"), load_coco(bccd_dir / "test.json")
    write_coco(train.subset(train.image_ids[:30]), tmp_path / "train.json")
    write_coco(test.subset(test.image_ids[:3]), tmp_path / "test.json")
    (tmp_path / "model.py").write_text("_base_ = []\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def feasible_config(bccd_dir, **changes):
    config = {
        "seed": 42,
        "data": {
            "format": "coco",
            "train_annotations": "train.json",
            "train_images": str(bccd_dir / "images"),
            "test_annotations": "test.json",
            "test_images": str(bccd_dir / "images"),
        },
        "folds": {"k": 3, "group_by": None},
        "audit": {},
        "models": {"m": {"config": "model.py"}},
        "ensemble": {"external": []},
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return config


FEASIBILITY_CASES = {
    "k greater than images": (
        {"folds__k": 25},
        "folds.k = 25 is more than the 24 training images of train.json left for the folds besides the blend split (6)",
    ),
    "blend split too small": (
        {"folds__blend_share": 0.05},
        "folds.blend_share = 0.05 sets aside about 1 of 30 training images: nested selection on the blend split "
        "needs at least 5; raise folds.blend_share",
    ),
    "test annotations without their images": (
        {"data__test_images": None},
        "data.test_images: missing; it is needed with data.test_annotations",
    ),
    "train file missing": (
        {"data__train_annotations": "nope.json"},
        "data.train_annotations = 'nope.json': file not found",
    ),
    "train images folder missing": ({"data__train_images": "imgs"}, "data.train_images = 'imgs': folder not found"),
    "test images absent": ({"data__test_images": "."}, "data.test_images = '.': 3 test image(s) absent: BloodImage_"),
    "unknown mmdet config": (
        {"models__m": {"config": "mmdet::rtmdet/rtmdet_nope.py"}},
        "models.m.config = 'mmdet::rtmdet/rtmdet_nope.py': no such config in the installed mmdet",
    ),
    "model config missing": ({"models__m": {"config": "gone.py"}}, "models.m.config = 'gone.py': file not found"),
    "model config not python": ({"models__m": {"config": "train.json"}}, "expected an mmdet config file (.py)"),
    "load_from missing": (
        {"models__m": {"config": "model.py", "load_from": "/ckpt/rtmdet_s.pth"}},
        "models.m.load_from = '/ckpt/rtmdet_s.pth': checkpoint not found (weights are never downloaded)",
    ),
    "path leaves working folder": (
        {"models__m": {"config": "../elsewhere/model.py"}},
        "models.m.config = '../elsewhere/model.py' leaves the working folder",
    ),
    "overrides missing": (
        {"audit": {"overrides": "decisions.csv"}},
        "audit.overrides = 'decisions.csv': file not found",
    ),
    "group csv missing": ({"folds__group_by": "csv:groups.csv"}, "folds.group_by = 'groups.csv': file not found"),
    "external predictions missing": (
        {"ensemble__external": [{"name": "yolo", "oof": "yolo_oof.json"}]},
        "ensemble.external[0].oof = 'yolo_oof.json': file not found",
    ),
    "search weights of the wrong length": (
        {"ensemble": {"external": [], "search": {"weights": [[1.0, 2.0]]}}},
        "ensemble.search.weights[0] = [1.0, 2.0] has 2 weights for 1 members",
    ),
    "external in another format": (
        {"ensemble__external": [{"name": "yolo", "oof": "test.json", "test": "test.json", "format": "csv"}]},
        "ensemble.external[0].oof = 'test.json': format is csv but the file is neither a COCO results list",
    ),
    "group regex invalid": (
        {"folds__group_by": "regex:(frame"},
        "folds.group_by = 'regex:(frame': not a valid regular expression (missing ), unterminated subpattern",
    ),
    "train file not coco": ({}, "data.train_annotations: train.json: not a COCO detection file (no 'images' list)"),
    "train file truncated": ({}, "data.train_annotations: train.json: truncated JSON (the file ends early)"),
}


@pytest.mark.parametrize("case", sorted(FEASIBILITY_CASES))
def test_impossible_config_is_refused_before_any_job(case, workdir, bccd_dir):
    changes, expected = FEASIBILITY_CASES[case]
    if case == "train file not coco":
        (workdir / "train.json").write_text(json.dumps([{"image_id": 1}]))
    if case == "train file truncated":
        (workdir / "train.json").write_text((workdir / "train.json").read_text()[:500])
    before = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(ConfigError) as err:
        check_feasible(feasible_config(bccd_dir, **changes))
    assert any(expected in p for p in err.value.problems), err.value.problems
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written, nothing removed


def test_schema_and_file_problems_are_reported_together(workdir, bccd_dir, tmp_path):
    """One try shows both: a schema problem does not hide a missing file."""
    config = feasible_config(bccd_dir, data__train_annotations="nope.json")
    config["folds"]["k"] = 3.0
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(yaml.safe_dump(SCHEMA))
    with pytest.raises(ConfigError) as err:
        check_schema(config, schema_file)
    text = str(err.value)
    assert "folds.k = 3.0 has the wrong type: expected integer" in text
    assert "data.train_annotations = 'nope.json': file not found" in text


def test_feasible_config_passes(workdir, bccd_dir):
    assert feasibility_problems(feasible_config(bccd_dir)) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"folds": {"kk": 3}}, "unknown key 'folds.kk'; did you mean 'k'?"),
        ({"folds": {"k": 500}}, "folds.k = 500 is more than the 233 training images"),
    ],
)
def test_snakemake_refuses_before_any_job(tmp_path, edit, expected):
    """Through snakemake itself: exit 1, the problem on stderr in one list, no job run, no
    results folder or log created."""
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(edit))
    snakemake = Path(sys.executable).parent / "snakemake"
    cmd = [str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(REPO), "--cores", "1"]
    cmd += ["--configfile", str(REPO / "config" / "config.yaml"), str(tmp_path / "bad.yaml"), "-n"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert expected in output
    assert "problem(s); nothing was run" in output
    assert "Job stats" not in output


def test_demo_settings_merged_into_a_users_configfile_are_named(tmp_path):
    """Snakemake merges --configfile over config/config.yaml: the demo's data keys and model
    left in a user's config are named, with the two ways out; the demo itself gets none."""
    from detfold.core.config import config_warnings, drop_disabled_models

    default = REPO / "config" / "config.yaml"
    assert config_warnings(edited(), default) == []  # the demo as it is
    # a data setting that is not a path (as Snakemake's validate fills data.difficult in) is no user data
    assert config_warnings(edited(data__difficult="ignore", data__format="coco"), default) == []
    mine = edited(data__train_annotations="/data/trash/train.json", **{"models__mine": {"config": "m.py"}})
    warnings = config_warnings(mine, default)
    assert any(w.startswith("data.test_annotations is still the bundled demo's") for w in warnings)
    demo_model = [w for w in warnings if w.startswith("models.rtmdet_tiny is the demo's model")]
    assert demo_model and "--replace-workflow-config" in demo_model[0] and "`rtmdet_tiny: null`" in demo_model[0]
    mine["models"]["rtmdet_tiny"] = None
    assert drop_disabled_models(mine) == ["rtmdet_tiny"] and sorted(mine["models"]) == ["mine"]


def test_defaults_are_filled_as_snakemake_fills_them():
    """with_defaults, where the config gate and the CLI take every default from, fills in what
    Snakemake's validate fills in (nested objects and list items included)."""
    from detfold.core.config import schema_defaults, with_defaults
    from snakemake.utils import validate

    external = [{"name": "yolo", "oof": "a.json", "test": "b.json"}]
    config = edited(folds={"k": 3}, predict=None, audit__checks=None, ensemble={"external": external})
    expected = copy.deepcopy(config)
    validate(expected, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert with_defaults(config) == expected and expected != config
    assert schema_defaults()["folds"]["weights"] == {
        "class_boxes": 1,
        "class_images": 1,
        "fold_images": 1,
        "fold_boxes": 1,
        "size_buckets": 0,
    }


def _bad_overrides(workdir):
    (workdir / "overrides.csv").write_text("ann_id,image_id,decision,note\n12,,remove,wrong box\n")


def _labels_folder(workdir):
    (workdir / "labels").mkdir()
    (workdir / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")


def _tagged_train(workdir):
    coco = json.loads((workdir / "train.json").read_text())
    for image in coco["images"][1:]:
        image["video"] = "v1"
    (workdir / "train.json").write_text(json.dumps(coco))


def _class_names(workdir):
    (workdir / "names.txt").write_text("cat\ndog\ncat\n")


FILE_CASES = {
    "group field no image has": (
        None,
        {"folds__group_by": "field:video"},
        "folds.group_by = 'field:video': no image record has a 'video' key (the image records of train.json have: "
        "file_name, height, id, license, width)",
    ),
    "group field some images lack": (
        _tagged_train,
        {"folds__group_by": "field:video"},
        "folds.group_by = 'field:video': 1 of 30 image records of train.json lack 'video' (ids [",
    ),
    "yolo without class names": (
        _labels_folder,
        {"data__format": "yolo", "data__train_annotations": "labels", "data__test_annotations": None},
        "data.class_names: missing; format yolo needs it (a text file of class names, one per line",
    ),
    "class names duplicated": (
        _class_names,
        {"data": {"format": "coco", "class_names": "names.txt", "train_annotations": "train.json"}},
        "data.class_names: names.txt: duplicate class names ['cat']",
    ),
    "overrides not the documented CSV": (
        _bad_overrides,
        {"audit": {"overrides": "overrides.csv"}},
        "audit.overrides: overrides.csv: row 2: decision must be 'keep' or 'drop', got 'remove'",
    ),
    "path with a tilde": (
        None,
        {"data__train_annotations": "~/data/train.json"},
        "data.train_annotations = '~/data/train.json': ~ is not expanded here (Snakemake takes paths as written); "
        "write the full path, e.g. '",
    ),
    "coco annotations given as a folder": (
        _labels_folder,
        {"data__train_annotations": "labels"},
        "data.train_annotations = 'labels' is a folder; expected a file (format coco: a COCO JSON file)",
    ),
    "voc annotations given as a file": (
        None,
        {"data__format": "voc", "data__test_annotations": None},
        "data.train_annotations = 'train.json' is a file; expected a folder (format voc: a folder of XML files)",
    ),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_input_file_problems_are_refused_at_the_gate(case, workdir, bccd_dir):
    """What the first job would refuse (the folds, the import, the audit) is refused before any
    job, with the reader that job uses, naming the key, the value and the file."""
    setup, changes, expected = FILE_CASES[case]
    if setup:
        setup(workdir)
    config = feasible_config(bccd_dir)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(last)
        elif isinstance(value, dict):
            node[last] = {**node[last], **value}
        else:
            node[last] = value
    before = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(ConfigError) as err:
        check_feasible(config)
    assert any(expected in p for p in err.value.problems), err.value.problems
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_group_field_every_image_has_passes(workdir, bccd_dir):
    _tagged_train(workdir)
    coco = json.loads((workdir / "train.json").read_text())
    coco["images"][0]["video"] = "v0"
    (workdir / "train.json").write_text(json.dumps(coco))
    assert feasibility_problems(feasible_config(bccd_dir, folds__group_by="field:video")) == []


CONFIG_FILE_CASES = {
    "key given twice": (
        "seed: 1\nfolds:\n  k: 3\n  method: random\n  k: 5\nseed: 2\n",
        [
            "my.yaml: key 'folds.k' is given twice (line 3 and line 5): the last one would silently win; keep one",
            "my.yaml: key 'seed' is given twice (line 1 and line 6)",
        ],
    ),
    "key twice in a list item": (
        "ensemble:\n  external:\n    - {name: a, oof: a.json, name: b}\n",
        ["my.yaml: key 'ensemble.external.0.name' is given twice (line 3 and line 3)"],
    ),
    "not YAML": (
        "seed: 42\nfolds:\n  k: 3\n   method: random\n",
        ["my.yaml: not valid YAML: line 4, column 10: mapping values are not allowed here"],
    ),
    "tab indentation": (
        "folds:\n\tk: 3\n",
        ["my.yaml: not valid YAML: line 2, column 1: found character '\\t' that cannot start any token", "never tabs"],
    ),
    "a list": (
        "- seed: 42\n",
        ["my.yaml: a config is a mapping of keys (seed: 42, data: ..., models: ...); this file is a list"],
    ),
    "empty": ("# nothing yet\n", ["my.yaml: a config is a mapping of keys", "this file is empty"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILE_CASES))
def test_config_file_problems_name_file_line_and_key(case, tmp_path):
    from detfold.core.config import check_config_files

    text, expected = CONFIG_FILE_CASES[case]
    (tmp_path / "my.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        check_config_files([tmp_path / "my.yaml"])
    message = str(err.value)
    assert all(part in message for part in expected), message
    assert str(tmp_path / "my.yaml") in message


def test_config_files_snakemake_reads_are_accepted(tmp_path):
    """The demo config, a JSON config (Snakemake reads JSON first) and a missing file (Snakemake
    names it itself) pass; a YAML merge key is not a duplicate."""
    from detfold.core.config import check_config_files, config_file_problems

    (tmp_path / "c.json").write_text(json.dumps({"seed": 1, "folds": {"k": 3}}))
    (tmp_path / "merge.yaml").write_text("base: &b {k: 3}\nfolds:\n  <<: *b\n  method: random\n")
    check_config_files([REPO / "config" / "config.yaml", tmp_path / "c.json", tmp_path / "merge.yaml", tmp_path / "no"])
    assert config_file_problems(tmp_path / "merge.yaml") == []


def test_search_conf_type_without_wbf_is_warned_about(caplog):
    """A search conf_type list with no WBF searched does nothing; it may come from the demo's
    config merged under a user's file, so a warning names it rather than an error."""
    from detfold.core.config import setting_warnings, warn_merged_config

    config = edited(ensemble__search__method=["nms", "soft_nms"])
    assert schema_problems(config, SCHEMA) == []
    expected = (
        "ensemble.search.conf_type = ['avg', 'max'] does nothing: ensemble.search.method = ['nms', 'soft_nms'] "
        "searches no wbf (conf_type is WBF's)"
    )
    assert setting_warnings(config) == [expected]
    with caplog.at_level("WARNING"):
        warn_merged_config(config, merged=False)
    assert expected in caplog.text
    assert setting_warnings(edited()) == []


def _snakemake(workdir, *configfiles):
    snakemake = Path(sys.executable).parent / "snakemake"
    cmd = [str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "1", "-n"]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_snakemake_refuses_a_key_given_twice_in_a_configfile(tmp_path):
    """Snakemake keeps the last of two equal keys; the gate names the file, the key and both lines."""
    (tmp_path / "mine.yaml").write_text("folds:\n  k: 3\n  method: random\n  k: 4\n")
    code, output = _snakemake(REPO, REPO / "config" / "config.yaml", tmp_path / "mine.yaml")
    assert code == 1
    assert f"{tmp_path / 'mine.yaml'}: key 'folds.k' is given twice (line 2 and line 4)" in output
    assert "Job stats" not in output


def test_snakemake_names_file_and_line_of_a_workflow_config_that_is_not_yaml(tmp_path):
    """config/config.yaml is read by the Snakefile, so the gate sees it first: one line with
    the file, the line and what is wrong, instead of Snakemake's message naming neither."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("seed: 42\nfolds:\n  k: 3\n   method: random\n")
    code, output = _snakemake(tmp_path)
    assert code == 1
    assert "config/config.yaml: not valid YAML: line 4, column 10: mapping values are not allowed here" in output
    assert not (tmp_path / "results").exists()
