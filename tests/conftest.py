"""Shared fixtures: the bundled BCCD demo data (real images, real annotations)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from detfold.core.coco import Coco, load_coco, write_coco
from helpers.workflow_run import snakemake, tiny_config

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO / "tests" / "data" / "bccd"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    return BCCD


@pytest.fixture()
def bccd() -> Coco:
    """The demo's training split (291 images, 3 classes)."""
    return load_coco(BCCD / "train.json")


@pytest.fixture()
def bccd_test() -> Coco:
    return load_coco(BCCD / "test.json")


@pytest.fixture()
def tiny_data(tmp_path, bccd_dir) -> Path:
    """The first 12 training images in ``tmp_path/train.json``: one fold's training jobs."""
    coco = load_coco(bccd_dir / "train.json")
    write_coco(coco.subset(coco.image_ids[:12]), tmp_path / "train.json")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, repo, bccd_dir) -> Path:
    """The whole workflow, run once per test session (2 models x 3 folds and a screen of 2
    variants on fold 0, 1 epoch, --resources gpu=2 --cores 2, two stand-in GPU slots) on 30
    train + 8 test images; its work dir. Tests that edit its config or inputs restore them."""
    workdir = tmp_path_factory.mktemp("tiny")
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(repo, bccd_dir, workdir, screen=True)))
    # two stand-in GPU slots (CPU): each training/prediction job records the slot it held
    result = snakemake(repo, workdir, "--resources", "gpu=2", env={"DETFOLD_GPU_SLOTS": "2"})
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        pytest.fail(f"snakemake failed:\n{result.stderr[-5000:]}\n{logs}")
    return workdir
