"""Fixtures of the training tests."""

from __future__ import annotations

import pytest
from detfold.core.coco import load_coco, write_coco


@pytest.fixture()
def tiny_data(tmp_path, bccd_dir):
    coco = load_coco(bccd_dir / "train.json")
    write_coco(coco.subset(coco.image_ids[:12]), tmp_path / "train.json")
    return tmp_path
