"""Screens and variants (detfold.core.variants): one model per combination with a stable name,
the model's other settings inherited; every problem a gate error naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from detfold.core.config import ConfigError
from detfold.core.variants import MAX_MODEL_NAME, expand_variants, model_folds, variant_name

REPO = Path(__file__).resolve().parents[2]


def config(models, k=3, external=()):
    return {"folds": {"k": k}, "models": models, "ensemble": {"external": list(external)}}


def problems(models, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as err:
        expand_variants(config(models, **kwargs))
    return err.value.problems


def test_each_combination_is_a_model_with_the_others_settings():
    models = {
        "rtm": {
            "config": "m.py",
            "folds": [0],
            "epochs": 3,
            "cfg_options": {"model.test_cfg.nms.iou_threshold": 0.6},
            "variants": {
                "lr": [0.004, 0.016],
                "img_scale": [[256, 256], [320, 320]],
                "cfg_options.x.y.momentum": [0.9],
            },
        },
        "frcnn": {"config": "f.py"},
    }
    cfg = config(models)
    names = expand_variants(cfg)
    assert names == [
        "rtm__img_scale-256x256__lr-0.004__momentum-0.9",
        "rtm__img_scale-256x256__lr-0.016__momentum-0.9",
        "rtm__img_scale-320x320__lr-0.004__momentum-0.9",
        "rtm__img_scale-320x320__lr-0.016__momentum-0.9",
    ]
    assert sorted(cfg["models"]) == ["frcnn", *names]
    assert cfg["models"]["rtm__img_scale-320x320__lr-0.004__momentum-0.9"] == {
        "config": "m.py",
        "folds": [0],
        "epochs": 3,
        "cfg_options": {"model.test_cfg.nms.iou_threshold": 0.6, "x.y.momentum": 0.9},
        "lr": 0.004,
        "img_scale": [320, 320],
    }
    assert cfg["models"]["frcnn"] == {"config": "f.py"}


def test_a_name_depends_on_the_values_only_not_on_key_order():
    assert variant_name("m", [("lr", 0.01), ("epochs", 2)]) == variant_name("m", [("epochs", 2), ("lr", 0.01)])
    assert variant_name("m", [("config", "mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py")]) == (
        "m__config-rtmdet_s_8xb32-300e_coco"
    )
    assert variant_name("m", [("multi_scale", [[320, 320], [416, 416]]), ("amp", True)]) == (
        "m__amp-true__multi_scale-320x320+416x416"
    )


def test_folds_all_or_a_list():
    assert model_folds({"config": "m.py"}, 3) == [0, 1, 2]
    assert model_folds({"config": "m.py", "folds": "all"}, 3) == [0, 1, 2]
    assert model_folds({"config": "m.py", "folds": [2, 0]}, 3) == [0, 2]


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ({"a": {"config": "m.py", "variants": {"lrr": [0.1]}}}, "models.a.variants.lrr: 'lrr' is not a model setting"),
        ({"a": {"config": "m.py", "variants": {"folds": [[0]]}}}, "models.a.variants.folds: 'folds' is not a model"),
        (
            {"a": {"config": "m.py", "variants": {"lr": [0.01, 0.01]}}},
            "models.a.variants.lr: 0.01 and 0.01 give the same variant name 'a__lr-0.01'",
        ),
        (
            {"a": {"config": "m.py", "variants": {"config": ["x/m.py", "y/m.py"]}}},
            "models.a.variants.config: 'x/m.py' and 'y/m.py' give the same variant name 'a__config-m'",
        ),
        (
            {"a": {"config": "m.py", "variants": {"cfg_options.p.w": [1, 2], "cfg_options.q.w": [1]}}},
            "models.a.variants.cfg_options.p.w: named 'w' in a variant's name, as cfg_options.q.w is",
        ),
        ({"a": {"config": "m.py", "lr": 0.1, "variants": {"lr": [0.2]}}}, "models.a.variants.lr: lr is also set in"),
        ({"a": {"config": "m.py", "variants": {"lr": []}}}, "models.a.variants.lr = []: no value to try"),
        (
            {"a": {"config": "m.py", "variants": {"lr": [-1.0]}}},
            "models.a.variants (variant a__lr--1.0): models.a__lr--1.0.lr = -1.0 is out of range",
        ),
        (
            {"a": {"config": "m.py", "variants": {"epochs": [1.5]}}},
            "models.a.variants (variant a__epochs-1.5): models.a__epochs-1.5.epochs = 1.5 has the wrong type",
        ),
        (
            {"a": {"config": "m.py", "variants": {"lr": [0.1]}}, "a__lr-0.1": {"config": "m.py"}},
            "models.a.variants: the variant name 'a__lr-0.1' is taken by models.a__lr-0.1",
        ),
        (
            {"m" * 70: {"config": "m.py", "variants": {"img_scale": [[3200, 3200]]}}},
            f"is 91 characters, more than {MAX_MODEL_NAME}",
        ),
        ({"a": {"config": "m.py", "folds": [3]}}, "models.a.folds = [3]: fold 3 does not exist with folds.k = 3"),
        ({"a": {"config": "m.py", "folds": [0, 0]}, "b": {"config": "m.py"}}, "models.a.folds = [0, 0]: a fold"),
        ({"a": {"config": "m.py", "folds": [0]}}, "models: every model trains only some folds"),
        (
            {"a": {"config": "m.py", "folds": [0]}, "b": {"config": "m.py", "folds": [1]}, "c": {"config": "m.py"}},
            "models: no fold is trained by every model (a [0], b [1], c all)",
        ),
    ],
)
def test_a_bad_variant_or_fold_list_is_one_problem_naming_the_key(models, expected):
    found = problems(models)
    assert len(found) == 1 and expected in found[0], found


def test_a_variant_named_like_an_external_model_is_refused():
    found = problems({"a": {"config": "m.py", "variants": {"lr": [0.1]}}}, external=[{"name": "a__lr-0.1"}])
    assert found == [
        "models.a.variants: the variant name 'a__lr-0.1' is taken by ensemble.external; rename one of them"
    ]


def test_snakemake_refuses_an_unknown_variant_key_before_any_job(tmp_path):
    bad = {"models": {"rtmdet_tiny": {"folds": [0], "variants": {"learning_rate": [0.01]}}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(REPO)]
    cmd += ["--cores", "1", "--configfile", str(REPO / "config" / "config.yaml"), str(tmp_path / "bad.yaml"), "-n"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "1 problem(s); nothing was run" in output
    assert "models.rtmdet_tiny.variants.learning_rate: 'learning_rate' is not a model setting" in output
    assert "Traceback" not in output and "Job stats" not in output


@pytest.mark.parametrize("overlay", ["screen.yaml", "promote.yaml"])
def test_the_bundled_screen_and_promotion_configs_pass_the_gate(overlay):
    from detfold.core.config import schema_problems

    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    models = yaml.safe_load((REPO / "config" / overlay).read_text())["models"]
    cfg = {**demo, "models": {**demo["models"], **models}}
    assert (
        schema_problems(cfg, yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())) == []
    )
    names = expand_variants(cfg)
    assert all(n.startswith("rtmdet_screen__img_scale-") for n in names) and "rtmdet_tiny" in cfg["models"]
