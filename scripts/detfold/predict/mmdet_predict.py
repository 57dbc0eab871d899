"""Inference of one trained fold model on a set of images, as COCO results (heavy imports lazy).

The score threshold and the per-image cap are enforced by detfold on what the model returns,
for every head (DETR-family heads read no ``score_thr``, YOLOX no cap), and after a TTA merge.
Test-time augmentation (``predict.tta``) runs the model on several views of each image (flip,
the test input size times each scale factor), maps their boxes back to the original image and
merges them per class as mmdet's ``DetTTAModel`` does (NMS, then the cap), or by WBF.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detfold.core.coco import Coco

log = logging.getLogger(__name__)

Predictions = tuple[np.ndarray, np.ndarray, np.ndarray]  # bboxes (n, 4) xyxy_abs, scores (n,), labels (n,)


def set_test_thresholds(test_cfg: dict[str, Any], score_thr: float, max_per_img: int) -> str:
    """Set score threshold and detections cap at the model's test_cfg (a speed-up: detfold
    enforces both itself, :func:`enforce_thresholds`); return the score key the model reads,
    or ``none (detfold filters)`` when its config has none (DETR-family heads)."""
    target, key = test_cfg, "test_cfg"
    if isinstance(test_cfg.get("rcnn"), dict):
        target, key = test_cfg["rcnn"], "test_cfg.rcnn"
    had_score = "score_thr" in target
    target["score_thr"] = float(score_thr)
    target["max_per_img"] = int(max_per_img)
    return f"{key}.score_thr" if had_score else "none (detfold filters)"


def enforce_thresholds(
    bboxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, score_thr: float, max_per_img: int
) -> Predictions:
    """Keep the detections with score >= ``score_thr``, best first, at most ``max_per_img``
    (ties keep the model's order); whatever the head did with its test_cfg."""
    bboxes = np.asarray(bboxes, dtype=float).reshape(-1, 4)
    scores, labels = np.asarray(scores, dtype=float).reshape(-1), np.asarray(labels).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= score_thr][:max_per_img]
    return bboxes[order], scores[order], labels[order]


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation views and how their boxes are merged (``predict.tta``)."""

    flip: bool  # also run on the horizontally flipped image
    scales: tuple[float, ...]  # factors on the test pipeline's input size (w, h)
    merge: str  # "nms": per-class NMS over all views (mmdet DetTTAModel), or "wbf"
    iou_thr: float

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> TTA | None:
        """The resolved ``predict.tta`` settings (the config gate checked them and filled in
        their defaults) -> TTA; None when absent or when they ask for the single plain view."""
        if not config:
            return None
        tta = cls(config["flip"], tuple(config["scales"]), config["merge"], config["iou_thr"])
        return None if tta.views() == [(1.0, False)] else tta

    def views(self) -> list[tuple[float, bool]]:
        """(scale factor, flipped) of every view, in a fixed order."""
        return [(scale, flip) for scale in self.scales for flip in ((False, True) if self.flip else (False,))]


def scaled_test_pipeline(pipeline: list[dict[str, Any]], factor: float, stride: int = 32) -> list[dict[str, Any]]:
    """A copy of a test pipeline that reads an in-memory image and sizes it to ``factor`` times
    its input size (every Resize/Pad scale), rounded to a multiple of ``stride`` px (feature
    pyramids need sizes divisible by their largest stride). Raises when it has no Resize."""
    from detfold.train.mmdet_config import ScaleMap, reference_size, scale_pipeline

    steps = copy.deepcopy(list(pipeline))
    if not steps or "LoadImage" not in str(steps[0].get("type", "")):
        raise ValueError(f"test pipeline must start with an image loader, got {steps[:1]!r}")
    steps[0] = dict(type="mmdet.LoadImageFromNDArray")
    resize = [step for step in steps if step.get("type") in ("Resize", "mmdet.Resize") and step.get("scale")]
    if not resize:
        raise ValueError(f"test pipeline has no Resize with a scale to apply TTA scales to: {pipeline!r}")
    width, height = resize[0]["scale"]
    size = tuple(max(stride, round(side * factor / stride) * stride) for side in (width, height))
    scale_pipeline(steps, ScaleMap(reference_size(steps) or (width, height), size), "TTA test pipeline")
    return steps


def tta_pipelines(cfg: Any, tta: TTA) -> dict[float, Any]:
    """One composed test pipeline per TTA scale factor, from the config's test pipeline."""
    from mmcv.transforms import Compose

    base = cfg.test_dataloader.dataset.pipeline
    return {scale: Compose(scaled_test_pipeline(base, scale)) for scale in tta.scales}


def merge_views(views: list[Predictions], width: int, height: int, tta: TTA, max_per_img: int) -> Predictions:
    """Merge the predictions of every view of one image, all already in the original image's
    pixels; return the merged ones, best first, at most ``max_per_img``."""
    from detfold.ensemble.fusion import fuse_arrays

    scale = np.array([width, height, width, height], dtype=float)
    boxes = [np.asarray(b, dtype=float).reshape(-1, 4) for b, _, _ in views]
    flat = np.clip(np.concatenate(boxes) / scale, 0.0, 1.0)
    scores = np.concatenate([np.asarray(s, dtype=float).reshape(-1) for _, s, _ in views])
    labels = np.concatenate([np.asarray(lab, dtype=int).reshape(-1) for _, _, lab in views])
    models = np.repeat(np.arange(len(views)), [len(b) for b in boxes])  # each box's view
    images = np.zeros(len(flat), dtype=int)
    fused, fused_scores, fused_labels, _ = fuse_arrays(
        flat, scores, labels, models, images, len(views), method=tta.merge, iou_thr=tta.iou_thr, max_per_img=max_per_img
    )
    return fused * scale, fused_scores, fused_labels.astype(int)


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
        bbox = [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]
        category = int(label_to_cat[int(labels[i])])
        results.append(
            {"image_id": int(image["id"]), "category_id": category, "bbox": bbox, "score": round(float(scores[i]), 6)}
        )
    return results


def predict_images(
    config_path: str,
    checkpoint: str,
    coco: Coco,
    images_dir: str,
    score_thr: float,
    max_per_img: int,
    threads: int = 1,
    tta: TTA | None = None,
) -> list[dict[str, Any]]:
    """Run the model on every image of ``coco``; return COCO results (category ids of ``coco``).
    ``score_thr`` and ``max_per_img`` are the resolved ``predict`` settings. With ``tta``, every
    image is predicted in each of its views and the views are merged."""
    from mmengine.config import Config

    from detfold.train.mmdet_train import load_resolved_config, prepare_mmdet

    # a model trained with deterministic CPU math predicts with it too (read before torch loads)
    randomness = Config.fromfile(config_path, import_custom_modules=False).get("randomness") or {}
    device = prepare_mmdet(threads, bool(randomness.get("deterministic", False)))
    from mmdet.apis import init_detector

    cfg = load_resolved_config(config_path)
    key = set_test_thresholds(cfg.model.test_cfg, score_thr, max_per_img)
    check_checkpoint(checkpoint)
    model = init_detector(cfg, checkpoint, device=device)
    label_to_cat = category_ids(model, coco)
    thresholds = f"score_thr={score_thr}, max_per_img={max_per_img}, enforced by detfold; model's score key: {key}"
    log.info("predicting %d images on %s (%s)", len(coco.images), device, thresholds)
    pipelines = tta_pipelines(cfg, tta) if tta is not None else {}
    if tta is not None:
        log.info("test-time augmentation: %d views %s, merged by %s", len(tta.views()), tta.views(), tta.merge)
    results: list[dict[str, Any]] = []
    for n, image in enumerate(coco.images, start=1):
        path = str(Path(images_dir) / image["file_name"])
        if tta is None:
            bboxes, scores, labels = _infer(model, path)
        else:
            views = predict_views(model, read_image(path, image), tta, pipelines)
            bboxes, scores, labels = merge_views(views, image["width"], image["height"], tta, max_per_img)
        bboxes, scores, labels = enforce_thresholds(bboxes, scores, labels, score_thr, max_per_img)
        results += to_coco_results(bboxes, scores, labels, image, label_to_cat)
        if n % 50 == 0 or n == len(coco.images):
            log.info("predicted %d/%d images", n, len(coco.images))
    return results


def category_ids(model: Any, coco: Coco) -> list[int]:
    """The category id of ``coco`` for each label of the model (its classes, by name); raises
    naming the model classes that are not categories of ``coco``."""
    classes = list(model.dataset_meta["classes"])
    by_name = {cat["name"]: cat["id"] for cat in coco.categories}
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise ValueError(f"model classes {missing} are not categories of {coco.path} ({sorted(by_name)})")
    return [by_name[c] for c in classes]


def check_checkpoint(checkpoint: str) -> None:
    """Load the fold model's weights once (torch's ``weights_only`` loader: no code runs). A
    corrupt file from an earlier run is not trusted: it is deleted, so the next ``snakemake``
    run retrains that fold, and ``ValueError`` says so."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
            raise ValueError("no state_dict in it")
    except FileNotFoundError:
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found") from None
    except Exception as err:  # cut short, not a torch file, wrong content: any unpickling error
        Path(checkpoint).unlink(missing_ok=True)
        reason = f"{type(err).__name__}: {err}"
        message = f"{checkpoint}: corrupt checkpoint ({reason}); deleted it: run snakemake again to retrain"
        raise ValueError(message) from None


def read_image(path: str, image: dict[str, Any]) -> np.ndarray:
    """The image's pixels (BGR, as mmdet's LoadImageFromFile reads them); raises when the file
    is missing, unreadable, or not the size its COCO entry states."""
    import mmcv

    pixels = mmcv.imread(path)
    if pixels is None:
        raise FileNotFoundError(f"{path}: image not found or unreadable")
    height, width = pixels.shape[:2]
    if (width, height) != (image["width"], image["height"]):
        stated = f"{image['width']}x{image['height']}"
        raise ValueError(f"{path}: image is {width}x{height} px but its COCO entry says {stated}")
    return pixels


def _infer(model: Any, image: str | np.ndarray, pipeline: Any = None) -> Predictions:
    """The model's predictions for an image file or BGR pixels, through ``pipeline`` (default:
    the config's test pipeline)."""
    import torch
    from mmdet.apis import inference_detector

    with torch.no_grad():
        pred = inference_detector(model, image, test_pipeline=pipeline).pred_instances
    return pred.bboxes.cpu().numpy(), pred.scores.cpu().numpy(), pred.labels.cpu().numpy()


def predict_views(model: Any, pixels: np.ndarray, tta: TTA, pipelines: dict[float, Any]) -> list[Predictions]:
    """The predictions of every TTA view of one image, in the order of ``tta.views()``, each
    mapped back to the original image's pixels."""
    width = pixels.shape[1]
    views = []
    for scale, flipped in tta.views():
        view = np.ascontiguousarray(pixels[:, ::-1]) if flipped else pixels
        boxes, scores, labels = _infer(model, view, pipelines[scale])
        boxes = boxes.reshape(-1, 4).astype(float)
        if flipped:  # x -> width - x, so x1 and x2 swap
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
        views.append((boxes, scores, labels))
    return views
