"""A user's own config: mmdet's Albu transform (Albumentations) and a transform from the user's
module beside the config (custom_imports), through training and prediction in their own
processes, as the workflow runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from detfold.core.coco import load_coco, write_coco

pytestmark = pytest.mark.workflow

STEP = """
import sys
sys.path.insert(0, {scripts!r})
from detfold.core.logs import log_to
log_to({log!r})
{call}
"""


def run(repo, tmp_path, log, call):
    code = STEP.format(scripts=str(repo / "scripts"), log=str(tmp_path / log), call=call)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return (tmp_path / log).read_text()


def test_albumentations_and_custom_imports_train_and_predict(repo, bccd_dir, tmp_path):
    import albumentations

    assert albumentations.__version__ == "2.0.8"  # pinned in envs/requirements.txt
    coco = load_coco(bccd_dir / "train.json")
    write_coco(coco.subset(coco.image_ids[:8]), tmp_path / "train.json")
    write_coco(coco.subset(coco.image_ids[8:11]), tmp_path / "val.json")
    settings = {"config": str(repo / "tests/data/configs/albu_custom.py"), "epochs": 1, "batch_size": 4}
    settings["num_workers"] = 0
    out = tmp_path / "fold0"
    images = str(bccd_dir / "images")
    train, val = str(tmp_path / "train.json"), str(tmp_path / "val.json")
    call = (
        "from detfold.train.mmdet_train import train_fold\n"
        f"train_fold({settings!r}, {train!r}, {val!r}, {images!r}, {str(out / 'model.pth')!r}, "
        f"{str(out / 'config.py')!r}, 42, 1)"
    )
    run(repo, tmp_path, "train.log", call)
    resolved = (out / "config.py").read_text()
    assert "type='Albu'" in resolved and "type='GrayWorld'" in resolved and "my_transforms" in resolved
    call = (
        "from detfold.predict.stage import run_predict\n"
        f"run_predict({str(out / 'config.py')!r}, {str(out / 'model.pth')!r}, {val!r}, {images!r}, "
        f"0.0, 100, {str(tmp_path / 'oof.json')!r}, 1)"
    )
    log = run(repo, tmp_path, "predict.log", call)
    assert "predicted 3/3 images" in log
    assert isinstance(json.loads((tmp_path / "oof.json").read_text()), list)
