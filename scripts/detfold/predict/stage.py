"""Stage predict (workflow/predict.smk): what its rule scripts call (read inputs, call the library, write outputs)."""

from __future__ import annotations

from typing import Any

from detfold.core.coco import load_coco
from detfold.core.io import write_json


def run_predict(
    config: str,
    checkpoint: str,
    annotations: str,
    images: str,
    score_thr: float,
    max_per_img: int,
    out: str,
    threads: int,
    tta: dict[str, Any] | None = None,
) -> None:
    """Predict with one fold model (``tta``: the ``predict.tta`` settings, None for plain)."""
    from detfold.predict.mmdet_predict import TTA, predict_images
    from detfold.train.gpu_slots import RECORD, available_slots, gpu_slot

    coco = load_coco(annotations, require_annotations=False)
    augment = TTA.from_config(tta)
    with gpu_slot(available_slots(), job=out, record=RECORD):
        write_json(out, predict_images(config, checkpoint, coco, images, score_thr, max_per_img, threads, augment))
