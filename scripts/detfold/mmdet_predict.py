"""Inference of one trained fold model on a set of images, as COCO results (heavy imports lazy).

The score threshold and the per-image cap are set at the model's real ``test_cfg`` key
(``test_cfg.score_thr`` for one-stage detectors, ``test_cfg.rcnn.score_thr`` for two-stage
ones), so they filter what the model returns instead of only what is drawn.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from detfold.coco import Coco

log = logging.getLogger(__name__)


def set_test_thresholds(test_cfg: dict[str, Any], score_thr: float, max_per_img: int) -> str:
    """Set score threshold and detections cap where the model reads them; return that key."""
    if not 0 <= score_thr <= 1:
        raise ValueError(f"predict.score_thr must be in [0, 1], got {score_thr!r}")
    if max_per_img < 1:
        raise ValueError(f"predict.max_per_img must be >= 1, got {max_per_img!r}")
    target, key = test_cfg, "test_cfg"
    if isinstance(test_cfg.get("rcnn"), dict):
        target, key = test_cfg["rcnn"], "test_cfg.rcnn"
    target["score_thr"] = float(score_thr)
    target["max_per_img"] = int(max_per_img)
    return key


def to_coco_results(
    bboxes_xyxy: np.ndarray, scores: np.ndarray, labels: np.ndarray, image: dict[str, Any], label_to_cat: list[int]
) -> list[dict[str, Any]]:
    """Model output for one image -> COCO results, sorted by score descending. Boxes are
    clipped to the image (boxes left with no area are dropped) and rounded to 0.001 px."""
    width, height = image["width"], image["height"]
    boxes = np.asarray(bboxes_xyxy, dtype=float).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    order = np.argsort(-np.asarray(scores), kind="stable")
    results = []
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        if x2 <= x1 or y2 <= y1:
            continue
        results.append(
            {
                "image_id": int(image["id"]),
                "category_id": int(label_to_cat[int(labels[i])]),
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(scores[i]), 6),
            }
        )
    return results


def predict_images(
    config_path: str,
    checkpoint: str,
    coco: Coco,
    images_dir: str,
    score_thr: float = 0.05,
    max_per_img: int = 100,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Run the model on every image of ``coco``; return COCO results (category ids of ``coco``)."""
    import torch
    from mmdet.apis import inference_detector, init_detector
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules(init_default_scope=True)
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    cfg = Config.fromfile(config_path)
    key = set_test_thresholds(cfg.model.test_cfg, score_thr, max_per_img)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = init_detector(cfg, checkpoint, device=device)
    classes = list(model.dataset_meta["classes"])
    by_name = {cat["name"]: cat["id"] for cat in coco.categories}
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise ValueError(f"model classes {missing} are not categories of {coco.path} ({sorted(by_name)})")
    label_to_cat = [by_name[c] for c in classes]
    log.info(
        "predicting %d images on %s (%s score_thr=%s, max_per_img=%d)",
        len(coco.images),
        device,
        key,
        score_thr,
        max_per_img,
    )
    results: list[dict[str, Any]] = []
    for n, image in enumerate(coco.images, start=1):
        with torch.no_grad():
            sample = inference_detector(model, str(Path(images_dir) / image["file_name"]))
        pred = sample.pred_instances
        results += to_coco_results(
            pred.bboxes.cpu().numpy(), pred.scores.cpu().numpy(), pred.labels.cpu().numpy(), image, label_to_cat
        )
        if n % 50 == 0 or n == len(coco.images):
            log.info("predicted %d/%d images", n, len(coco.images))
    return results
