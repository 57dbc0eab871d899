"""Shared fixtures: the bundled BCCD demo data (real images, real annotations)."""

from __future__ import annotations

from pathlib import Path

import pytest
from detfold.coco import Coco, load_coco

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
