"""The model-zoo matrix (tests/helpers/zoo_matrix.py): mmdet's own configs, fine-tuned from a local
checkpoint with ``load_from``, resumed, predicting and scored through detfold's rule functions.

Every CI run takes one wrapper-dataset family (YOLOX: MultiImageMixDataset), one DETR-family and
one two-stage config; the others are the ``zoo`` group: ``pytest -m zoo tests/train/test_zoo.py``.
"""

from __future__ import annotations

import pytest
from helpers.zoo_matrix import FAMILIES, run_family, slug

pytestmark = pytest.mark.workflow


@pytest.mark.parametrize(
    "fam", [pytest.param(f, id=slug(f.name), marks=() if f.ci else pytest.mark.zoo) for f in FAMILIES]
)
def test_zoo_family_trains_resumes_predicts_and_scores(fam, tmp_path):
    row = run_family(fam, tmp_path)
    assert row["status"] == "ok", row
    assert row["resumed"] == "epoch 1 -> 2"
    assert row["parameters"] > 0 and row["predictions"] >= 0
    assert 0.0 <= row["oof_mAP50"] <= 1.0
