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
    jobs_per_gpu: int = 1,
) -> None:
    """Predict with one fold model (``tta``: the ``predict.tta`` settings, None for plain), on
    a share of one GPU of the slot pool."""
    from detfold.predict.mmdet_predict import TTA, predict_images
    from detfold.train.gpu_slots import RECORD, Pool, available_slots, gpu_slots

    coco = load_coco(annotations, require_annotations=False)
    augment = TTA.from_config(tta)
    with gpu_slots(Pool(available_slots(), jobs_per_gpu), out, record=RECORD):
        write_json(out, predict_images(config, checkpoint, coco, images, score_thr, max_per_img, threads, augment))
