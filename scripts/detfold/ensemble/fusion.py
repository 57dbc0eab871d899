"""Fusing the detections of several models: WBF, NMS, soft-NMS and non-maximum weighted.

Contract of the array functions: boxes are ``xyxy_norm`` (x1, y1, x2, y2 divided by the
image width/height, so within [0, 1]), one array per model; scores are floats; labels are
integers. Boxes outside [0, 1] or with x2 < x1 raise (nothing is silently clamped); boxes of
zero area are skipped, as in ensemble-boxes. The caller's arrays are never modified.
:func:`fuse_members` takes and returns COCO results (``xywh_abs``) and normalises per
image itself. Every method runs as one compiled (numba) pass over all (image, label) groups.

The semantics follow ensemble-boxes (the tests compare within 1e-6 on random inputs), except:
ties in score keep the input order (a stable sort); soft-NMS returns the decayed scores
(``rescore=True``; ensemble-boxes returns the original ones: ``rescore=False``); and the
caller's score lists are not rescaled in place by ``nms(weights=...)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from detfold.core.coco import Detections, take_rows
from detfold.ensemble import _fusion_kernels as kernels
from detfold.evaluate.cocoeval import SCORE_DECIMALS

log = logging.getLogger(__name__)

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
METHODS = ("wbf", "nms", "soft_nms", "nmw")
_CONF_CODE = {name: i for i, name in enumerate(CONF_TYPES)}
BOX_DECIMALS = 3  # fused boxes are rounded to 0.001 px (scores to SCORE_DECIMALS), as written: byte-reproducible
#: The keyword arguments of a fusion that a settings dict can hold (:func:`fusion_params`).
FUSION_KEYS = ("method", "iou_thr", "skip_box_thr", "conf_type", "weights", "sigma", "thresh", "class_agnostic")


def check_fusion(method: str, conf_type: str = "avg", source: str = "fusion") -> None:
    """Raise ValueError naming an unknown fusion ``method`` or WBF ``conf_type``; ``source``
    says where the value came from (a config key, a command)."""
    if method not in METHODS:
        raise ValueError(f"{source}: method {method!r} is not one of {list(METHODS)}")
    if conf_type not in CONF_TYPES:
        raise ValueError(f"{source}: conf_type {conf_type!r} is not one of {list(CONF_TYPES)}")


def fusion_params(settings: dict[str, Any]) -> dict[str, Any]:
    """The fusion keyword arguments of a settings dict (other keys, and None values, ignored)."""
    return {k: settings[k] for k in FUSION_KEYS if k in settings and settings[k] is not None}


class _Prepared:
    """All boxes of all models and images, filtered and weighted, with their group order."""

    def __init__(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        models: np.ndarray,
        images: np.ndarray,
        weights: np.ndarray,
        skip_box_thr: float,
        class_agnostic: bool,
    ) -> None:
        # the kernels' one signature: int64 indices, float64 values
        boxes, scores = np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
        labels, models, images = (np.asarray(x, dtype=np.int64) for x in (labels, models, images))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = (scores >= skip_box_thr) & (area > 0)
        if not keep.all():
            boxes, scores, labels, models, images = (
                take_rows(x, keep) for x in (boxes, scores, labels, models, images)
            )
        self.boxes, self.labels, self.models, self.images = boxes, labels, models, images
        self.scores = scores * weights[models]
        if class_agnostic or not len(labels):
            group = images
        else:  # (image, label) as one integer key
            low = int(labels.min())
            group = images * (int(labels.max()) - low + 1) + (labels - low)
        self.order, self.starts = kernels.sort_groups(group, -self.scores)
        # the latest WBF clustering ((iou_thr, allows_overflow), kernel output): conf_type only rescores it
        self.wbf: tuple[tuple[float, bool], tuple[np.ndarray, ...]] | None = None


def _check(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate per-model arrays; return concatenated boxes, scores, labels, model index, weights."""
    if not (len(boxes_list) == len(scores_list) == len(labels_list)):
        raise ValueError(
            f"boxes/scores/labels lists differ in length: {len(boxes_list)}, {len(scores_list)}, {len(labels_list)}"
        )
    if len(boxes_list) == 0:
        raise ValueError("no models given")
    w = np.ones(len(boxes_list)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(boxes_list),):
        raise ValueError(f"{w.size} weights given for {len(boxes_list)} models")
    if (w <= 0).any() or not np.isfinite(w).all():
        raise ValueError(f"model weights must be positive, got {w.tolist()}")
    all_boxes, all_scores, all_labels, all_models = [], [], [], []
    for m, (b, s, lab) in enumerate(zip(boxes_list, scores_list, labels_list, strict=True)):
        b = np.asarray(b, dtype=float).reshape(-1, 4) if len(b) else np.zeros((0, 4))
        s, lab = np.asarray(s, dtype=float).reshape(-1), np.asarray(lab).reshape(-1)
        if len(b) != len(s) or len(b) != len(lab):
            raise ValueError(f"model {m}: {len(b)} boxes, {len(s)} scores, {len(lab)} labels")
        if len(b):
            if not np.isfinite(b).all() or b.min() < -1e-6 or b.max() > 1 + 1e-6:
                raise ValueError(
                    f"model {m}: boxes must be xyxy normalised to [0, 1], got values in [{b.min():g}, {b.max():g}]"
                )
            bad = np.flatnonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))
            if len(bad):
                raise ValueError(f"model {m}: box {bad[0]} has x2 < x1 or y2 < y1: {b[bad[0]].tolist()}")
        all_boxes.append(np.clip(b, 0.0, 1.0))
        all_scores.append(s)
        all_labels.append(lab.astype(np.int64))
        all_models.append(np.full(len(b), m, dtype=np.int64))
    return (
        np.concatenate(all_boxes),
        np.concatenate(all_scores),
        np.concatenate(all_labels),
        np.concatenate(all_models),
        w,
    )


def _method_weights(method: str, weights: Sequence[float] | None, n_models: int) -> np.ndarray:
    """The models' weights as ``method`` applies them: NMW divides by the largest, NMS and
    soft-NMS by the sum (when weights are given), WBF takes them as they are."""
    w = np.ones(n_models) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n_models,):
        raise ValueError(f"{w.size} weights given for {n_models} models")
    if method == "nmw":
        w = w / w.max()
    if method in ("nms", "soft_nms"):
        w = w / w.sum() if weights is not None else w
    return w


def fuse_arrays(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    models: np.ndarray,
    images: np.ndarray,
    n_models: int,
    method: str = "wbf",
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    allows_overflow: bool = False,
    sigma: float = 0.5,
    thresh: float = 0.001,
    soft_method: str = "gaussian",
    rescore: bool = True,
    class_agnostic: bool = False,
    max_per_img: int | None = None,
    prepared: dict[tuple[Any, ...], _Prepared] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fuse boxes of many images in one pass. Inputs are flat arrays (one row per box, with its
    model and image index); returns (boxes xyxy_norm, scores, labels, image index), sorted by
    image, then score descending (stable), the first ``max_per_img`` of each image (all when None).
    ``prepared``: a cache (one entry, owned by the caller, for the same input arrays) of the
    filtered, weighted and group-sorted boxes, which depend on ``skip_box_thr``, the weights and
    ``class_agnostic`` only: a search over the other parameters sorts once."""
    check_fusion(method, conf_type)
    if soft_method not in ("linear", "gaussian"):
        raise ValueError(f"soft-NMS method must be 'linear' or 'gaussian', got {soft_method!r}")
    if not 0 <= iou_thr <= 1:
        raise ValueError(f"iou_thr must be in [0, 1], got {iou_thr!r}")
    w = _method_weights(method, weights, n_models)
    key = (float(skip_box_thr), w.tobytes(), bool(class_agnostic))
    if prepared is not None and key in prepared:
        prep = prepared[key]
    else:
        prep = _Prepared(boxes, scores, labels, models, images, w, skip_box_thr, class_agnostic)
        if prepared is not None:  # one entry: the memory of one sorted copy
            prepared.clear()
            prepared[key] = prep
    if method == "wbf":
        clustering = (float(iou_thr), bool(allows_overflow))
        if prep.wbf is None or prep.wbf[0] != clustering:
            result = kernels.wbf_groups(
                prep.order, prep.starts, prep.boxes, prep.scores, prep.models, w, int(n_models), *clustering
            )
            prep.wbf = (clustering, result) if prepared is not None else None
        else:
            result = prep.wbf[1]
        out_box, out_scores, _, first = result
        out_score = out_scores[:, _CONF_CODE[conf_type]]
    elif method == "nmw":
        out_box, out_score, _, first = kernels.nmw_groups(
            prep.order, prep.starts, prep.boxes, prep.scores, float(iou_thr)
        )
    elif method == "nms":  # hard NMS keeps every unsuppressed box, with its score
        first = kernels.nms_groups(prep.order, prep.starts, prep.boxes, float(iou_thr))
        out_box, out_score = None, prep.scores[first]
    else:
        code = 1 if soft_method == "linear" else 2
        first, decayed = kernels.soft_nms_groups(
            prep.order, prep.starts, prep.boxes, prep.scores, float(iou_thr), float(sigma), float(thresh), code
        )
        out_box, out_score = None, decayed if rescore else prep.scores[first]
    if method != "wbf":  # a search tries each method's combinations in a row: WBF's clustering is done with
        prep.wbf = None
    out_image = prep.images[first]
    # groups come image by image; the first max_per_img of each image kept before gathering the rest
    order = kernels.order_within_images(out_image, -out_score, -1 if max_per_img is None else int(max_per_img))
    kept = first[order]  # rows of the kept boxes (NMS: the boxes themselves) in the prepared arrays
    out_box = take_rows(prep.boxes if out_box is None else out_box, kept if out_box is None else order)
    return out_box, out_score[order], prep.labels[kept], out_image[order]


def effective_params(params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`fuse_arrays` in ``params`` that can change its output:
    ``conf_type`` and ``allows_overflow`` are WBF's only; ``sigma``, ``thresh``, ``soft_method``
    and ``rescore`` soft-NMS's only; gaussian soft-NMS ignores ``iou_thr`` too. Parameter sets
    with equal effective parameters fuse to the same boxes (a search fuses them once)."""
    method = params.get("method", "wbf")
    unused = {"conf_type", "allows_overflow", "sigma", "thresh", "soft_method", "rescore"}
    if method == "wbf":
        unused -= {"conf_type", "allows_overflow"}
    elif method == "soft_nms":
        unused -= {"sigma", "thresh", "soft_method", "rescore"}
        if params.get("soft_method", "gaussian") == "gaussian":
            unused.add("iou_thr")
    return {k: v for k, v in params.items() if k not in unused}


#: ensemble-boxes' per-image interface: one array-like per model (boxes (n, 4) xyxy_norm, scores
#: (n,), labels (n,)), and what it returns: boxes (k, 4) xyxy_norm, scores (k,), labels (k,).
PerModel = Sequence[Any]
ImageFusion = tuple[np.ndarray, np.ndarray, np.ndarray]


def _single(
    method: str,
    boxes_list: PerModel,
    scores_list: PerModel,
    labels_list: PerModel,
    weights: Sequence[float] | None,
    **kwargs: Any,
) -> ImageFusion:
    b, s, lab, m, _ = _check(boxes_list, scores_list, labels_list, weights)
    out_box, out_score, out_label, _ = fuse_arrays(
        b, s, lab, m, np.zeros(len(b), np.int64), len(boxes_list), method, weights, **kwargs
    )
    return out_box, out_score, out_label


def weighted_boxes_fusion(
    boxes_list: PerModel,
    scores_list: PerModel,
    labels_list: PerModel,
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    allows_overflow: bool = False,
) -> ImageFusion:
    """Weighted boxes fusion (Solovyev et al.) of one image's boxes from several models.

    Boxes of one label, by descending weighted score, join the fused box they overlap with
    IoU > ``iou_thr`` (the best one) or start a new one; a fused box is the score-weighted mean
    of its members. Scores: ``avg`` mean x min(T, members) / sum(weights); ``max``;
    ``box_and_model_avg``; ``absent_model_aware_avg`` (as in ensemble-boxes).
    Returns (boxes (n, 4) xyxy_norm, scores (n,), labels (n,)) by score descending."""
    return _single(
        "wbf",
        boxes_list,
        scores_list,
        labels_list,
        weights,
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
        conf_type=conf_type,
        allows_overflow=allows_overflow,
    )


def nms(
    boxes_list: PerModel,
    scores_list: PerModel,
    labels_list: PerModel,
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.5,
) -> ImageFusion:
    """Class-aware greedy NMS over all models' boxes (scores x weight / sum(weights) when
    weights are given). Returns kept (boxes, scores, labels) by score descending."""
    return _single("nms", boxes_list, scores_list, labels_list, weights, iou_thr=iou_thr)


def soft_nms(
    boxes_list: PerModel,
    scores_list: PerModel,
    labels_list: PerModel,
    weights: Sequence[float] | None = None,
    method: str = "gaussian",
    iou_thr: float = 0.5,
    sigma: float = 0.5,
    thresh: float = 0.001,
    rescore: bool = True,
) -> ImageFusion:
    """Soft-NMS (Bodla et al.): overlapping boxes decay instead of vanishing (linear: by 1 - IoU
    above ``iou_thr``; gaussian: by exp(-IoU^2 / sigma)); boxes whose decayed score is at most
    ``thresh`` are dropped. ``rescore=False`` returns the original scores, as ensemble-boxes."""
    return _single(
        "soft_nms",
        boxes_list,
        scores_list,
        labels_list,
        weights,
        iou_thr=iou_thr,
        sigma=sigma,
        thresh=thresh,
        soft_method=method,
        rescore=rescore,
    )


def non_maximum_weighted(
    boxes_list: PerModel,
    scores_list: PerModel,
    labels_list: PerModel,
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
) -> ImageFusion:
    """Non-maximum weighted (Zhou et al.): each cluster keeps its best box's score; its coords
    are the mean of its members weighted by score x IoU with the best box."""
    return _single("nmw", boxes_list, scores_list, labels_list, weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr)


def _image_sizes(images: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The sorted image ids and their (width, height) in px, [N, 2]."""
    ids = np.array(sorted(im["id"] for im in images), dtype=np.int64)
    size = {im["id"]: (float(im["width"]), float(im["height"])) for im in images}
    return ids, np.array([size[int(i)] for i in ids], dtype=np.float64).reshape(-1, 2)


class ResultArrays:
    """COCO result lists of several models on one image set, as the flat arrays fusion works on.

    ``images`` are COCO image records (id, width, height). Boxes are clipped to their image
    (predictions, not ground truth) and normalised to ``xyxy_norm``; an image id outside
    ``images`` raises. Image positions index the sorted image ids (``self.ids``).
    """

    def __init__(
        self, prediction_sets: Sequence[list[dict[str, Any]] | Detections], images: Sequence[dict[str, Any]]
    ) -> None:
        ids, wh = _image_sizes(images)
        sets = []
        for m, preds in enumerate(prediction_sets):
            d = preds if isinstance(preds, Detections) else Detections.from_results(preds)
            img = np.searchsorted(ids, d.image_id)
            unknown = (img >= len(ids)) | (ids[np.minimum(img, len(ids) - 1)] != d.image_id)
            if unknown.any():
                i = int(np.argmax(unknown))
                raise ValueError(f"prediction set {m}, item {i}: image_id {int(d.image_id[i])!r} is not a known image")
            sets.append((img, d.category_id, d.bbox_xywh, d.score))
        self._set_columns(ids, wh, sets)

    @classmethod
    def from_columns(
        cls, ids: np.ndarray, wh: np.ndarray, sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    ) -> ResultArrays:
        """Prediction sets already as columns (image position in ``ids``, category id,
        xywh_abs, score), e.g. the output of :meth:`fuse`, on the images ``ids`` / ``wh``."""
        self = cls.__new__(cls)
        self._set_columns(ids, wh, sets)
        return self

    def _set_columns(
        self, ids: np.ndarray, wh: np.ndarray, sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    ) -> None:
        self.ids, self.wh, self.n_models = ids, wh, len(sets)
        self._prepared: dict[tuple[Any, ...], _Prepared] = {}  # fuse_arrays' sort, reused by a search
        parts: dict[str, list[np.ndarray]] = {"box": [], "score": [], "label": [], "model": [], "image": []}
        for m, (img, labels, xywh, scores) in enumerate(sets):
            xywh = np.asarray(xywh, dtype=float).reshape(-1, 4)
            size = take_rows(wh, img)
            xyxy_norm = np.hstack([xywh[:, :2] / size, (xywh[:, :2] + xywh[:, 2:]) / size])
            parts["box"].append(np.clip(xyxy_norm, 0.0, 1.0))
            parts["score"].append(np.asarray(scores, dtype=float))
            parts["label"].append(np.asarray(labels, dtype=np.int64))
            parts["model"].append(np.full(len(img), m, dtype=np.int64))
            parts["image"].append(np.asarray(img, dtype=np.int64))
        empty = {"box": np.zeros((0, 4)), "score": np.zeros(0)}
        self.arrays = {
            k: np.concatenate(v) if v else empty.get(k, np.zeros(0, dtype=np.int64)) for k, v in parts.items()
        }

    def drop_cache(self) -> None:
        """Forget the sorted boxes (and clustering) kept from the previous :meth:`fuse`."""
        self._prepared.clear()

    def fuse(self, max_per_img: int | None, **params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Fused with ``params`` (:func:`fuse_arrays`' keyword arguments): (image position,
        category id, xywh_abs, score), by image then score, at most ``max_per_img`` per image."""
        a = self.arrays
        boxes, scores, labels, images = fuse_arrays(
            a["box"],
            a["score"],
            a["label"],
            a["model"],
            a["image"],
            self.n_models,
            max_per_img=max_per_img,
            prepared=self._prepared,
            **params,
        )
        # rounded here, as the written files hold them, so the search scores what is written
        xywh, scores = kernels.to_xywh_abs(boxes, images, self.wh, scores, BOX_DECIMALS, SCORE_DECIMALS)
        return images, labels, xywh, scores


Member = Detections | list[dict[str, Any]]


def as_detections(member: Member) -> Detections:
    """``member`` as columns (a COCO result list is converted)."""
    return member if isinstance(member, Detections) else Detections.from_results(member)


def fuse_members(
    members: Sequence[Member], images: Sequence[dict[str, Any]], params: dict[str, Any], max_per_img: int
) -> Detections:
    """Several models' COCO results on the COCO images ``images`` (id, width, height) fused with
    ``params`` (:data:`FUSION_KEYS`: method, iou_thr, weights, ...): by image id, then score
    descending, at most ``max_per_img`` per image, boxes rounded to 0.001 px and scores to 1e-6
    (files byte-reproducible). An image id outside ``images`` raises. One member is returned as
    it is: a one-member fusion is the identity (re-fusing a model with itself only changes its
    boxes and scores for the worse)."""
    if len(members) == 1:
        return as_detections(members[0])
    arrays = ResultArrays(members, images)
    img, labels, xywh, scores = arrays.fuse(max_per_img, **params)
    return Detections(arrays.ids[img], np.asarray(labels, dtype=np.int64), xywh, scores)
