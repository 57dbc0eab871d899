"""Fusing the detections of several models: WBF, NMS, soft-NMS and non-maximum weighted, each
one compiled (numba) pass over all (image, label) groups. The semantics follow ensemble-boxes
(the tests compare within 1e-6), except: ties in score keep the input order (a stable sort), and
soft-NMS returns the decayed scores (``rescore=True``; ensemble-boxes: ``rescore=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detfold.core.coco import Detections, take_rows
from detfold.ensemble import _fusion_kernels as kernels
from detfold.evaluate.cocoeval import SCORE_DECIMALS

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
METHODS = ("wbf", "nms", "soft_nms", "nmw")
BOX_DECIMALS = 3  # fused boxes are rounded to 0.001 px (scores to SCORE_DECIMALS), as written: byte-reproducible
#: The keyword arguments of a fusion that a settings dict can hold (:func:`fusion_params`).
FUSION_KEYS = ("method", "iou_thr", "skip_box_thr", "conf_type", "weights", "sigma", "thresh", "class_agnostic")
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # image position, category id, xywh_abs, score


def check_fusion(method: str, conf_type: str = "avg", source: str = "fusion") -> None:
    """Raise ValueError naming an unknown fusion ``method`` or WBF ``conf_type``; ``source``
    says where the value came from (a config key, a command)."""
    if method not in METHODS:
        raise ValueError(f"{source}: method {method!r} is not one of {list(METHODS)}")
    if conf_type not in CONF_TYPES:
        raise ValueError(f"{source}: conf_type {conf_type!r} is not one of {list(CONF_TYPES)}")


def fusion_params(settings: dict[str, Any]) -> dict[str, Any]:
    """The fusion keyword arguments of a settings dict (other keys, and None values, ignored)."""
    return {k: settings[k] for k in FUSION_KEYS if settings.get(k) is not None}


class _Prepared:
    """All boxes of all models and images, filtered and weighted, with their group order."""

    def __init__(self, columns: Sequence[np.ndarray], weights: np.ndarray, skip_box_thr: float, agnostic: bool) -> None:
        boxes, scores, labels, models, images = columns
        # the kernels' one signature: int64 indices, float64 values
        boxes, scores = np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
        labels, models, images = (np.asarray(x, dtype=np.int64) for x in (labels, models, images))
        keep = (scores >= skip_box_thr) & ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0)
        if not keep.all():
            boxes, scores, labels, models, images = (
                take_rows(x, keep) for x in (boxes, scores, labels, models, images)
            )
        self.boxes, self.labels, self.models, self.images = boxes, labels, models, images
        self.scores = scores * weights[models]
        if agnostic or not len(labels):
            group = images
        else:  # (image, label) as one integer key
            low = int(labels.min())
            group = images * (int(labels.max()) - low + 1) + (labels - low)
        self.order, self.starts = kernels.sort_groups(group, -self.scores)
        # the latest WBF clustering ((iou_thr, allows_overflow), kernel output): conf_type only rescores it
        self.wbf: tuple[tuple[float, bool], tuple[np.ndarray, ...]] | None = None


def _method_weights(method: str, weights: Sequence[float] | None, n_models: int) -> np.ndarray:
    """The models' weights as ``method`` applies them: NMW divides by the largest, NMS and
    soft-NMS by the sum (when weights are given), WBF takes them as they are."""
    w = np.ones(n_models) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n_models,):
        raise ValueError(f"{w.size} weights given for {n_models} models")
    if method == "nmw":
        return w / w.max()
    return w / w.sum() if method in ("nms", "soft_nms") and weights is not None else w


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
    prepared: dict[Any, _Prepared] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fuse boxes of many images in one pass. One row per box: ``boxes`` [N, 4] ``xyxy_norm``
    (divided by the image width/height, within [0, 1]), its score, label, model and image index;
    boxes of zero area are skipped (as in ensemble-boxes), the inputs never modified. Returns
    (boxes xyxy_norm, scores, labels, image index), by image, then score descending (stable), the
    first ``max_per_img`` of each image (all when None). ``prepared``: the caller's one-entry
    cache, for the same input arrays, of the filtered, weighted and sorted boxes (they depend on
    ``skip_box_thr``, the weights and ``class_agnostic`` only)."""
    check_fusion(method, conf_type)
    w = _method_weights(method, weights, n_models)
    key = (float(skip_box_thr), w.tobytes(), bool(class_agnostic))
    prep = (prepared or {}).get(key)
    if prep is None:
        prep = _Prepared((boxes, scores, labels, models, images), w, skip_box_thr, class_agnostic)
        if prepared is not None:  # one entry: the memory of one sorted copy
            prepared.clear()
            prepared[key] = prep
    if method == "wbf":
        clustering = (float(iou_thr), bool(allows_overflow))
        if prep.wbf is None or prep.wbf[0] != clustering:
            kernel_args = (prep.order, prep.starts, prep.boxes, prep.scores, prep.models, w, int(n_models))
            prep.wbf = clustering, kernels.wbf_groups(*kernel_args, *clustering)
        out_box, out_scores, _, first = prep.wbf[1]
        out_score = out_scores[:, CONF_TYPES.index(conf_type)]
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
    out_box = take_rows(prep.boxes, kept) if out_box is None else take_rows(out_box, order)
    return out_box, out_score[order], prep.labels[kept], out_image[order]


def effective_params(params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`fuse_arrays` in ``params`` that can change its output
    (parameter sets with equal effective parameters fuse to the same boxes)."""
    method = params.get("method", "wbf")
    unused = {"conf_type", "allows_overflow", "sigma", "thresh", "soft_method", "rescore"}
    if method == "wbf":
        unused -= {"conf_type", "allows_overflow"}
    elif method == "soft_nms":
        unused -= {"sigma", "thresh", "soft_method", "rescore"}
        if params.get("soft_method", "gaussian") == "gaussian":
            unused.add("iou_thr")
    return {k: v for k, v in params.items() if k not in unused}


#: why a method ignores a parameter that :func:`effective_params` leaves out
IGNORED_BECAUSE = {
    "conf_type": "conf_type is how WBF scores a fused box; the other methods keep their boxes' own scores",
    "iou_thr": "Gaussian soft-NMS decays every overlapping box's score by its IoU, with no IoU threshold",
}


def ignored_params(method: str, given: Sequence[str]) -> list[str]:
    """The parameters among ``given`` (:func:`fuse_arrays` keyword names) that ``method``
    ignores: set explicitly, they would do nothing (:func:`effective_params`)."""
    kept = effective_params({**dict.fromkeys(given), "method": method})
    return [name for name in given if name not in kept]


class ResultArrays:
    """Several models' predictions (per model :data:`Columns`) on the images ``ids`` (sorted)
    with sizes ``wh`` ([N, 2] width, height in px), as the flat arrays fusion works on: boxes
    clipped to their image (predictions, not ground truth) and normalised to ``xyxy_norm``."""

    def __init__(self, ids: np.ndarray, wh: np.ndarray, sets: Sequence[Columns]) -> None:
        self.ids, self.wh, self.n_models = ids, wh, len(sets)
        image = np.concatenate([np.zeros(0, np.int64), *(np.asarray(s[0], dtype=np.int64) for s in sets)])
        label = np.concatenate([np.zeros(0, np.int64), *(np.asarray(s[1], dtype=np.int64) for s in sets)])
        xywh = np.concatenate([np.zeros((0, 4)), *(np.asarray(s[2], dtype=float).reshape(-1, 4) for s in sets)])
        score = np.concatenate([np.zeros(0), *(np.asarray(s[3], dtype=float) for s in sets)])
        size = take_rows(wh, image)
        box = np.clip(np.hstack([xywh[:, :2] / size, (xywh[:, :2] + xywh[:, 2:]) / size]), 0.0, 1.0)
        model = np.repeat(np.arange(len(sets), dtype=np.int64), [len(s[0]) for s in sets])
        self.columns = (box, score, label, model, image)  # fuse_arrays' first arguments

    @classmethod
    def of(cls, prediction_sets: Sequence[Detections], images: Sequence[dict[str, Any]]) -> ResultArrays:
        """Detections on the COCO images ``images`` (id, width, height); an image id outside them raises."""
        ids = np.array(sorted(im["id"] for im in images), dtype=np.int64)
        size = {im["id"]: (float(im["width"]), float(im["height"])) for im in images}
        sets = []
        for m, d in enumerate(prediction_sets):
            img = np.searchsorted(ids, d.image_id)
            unknown = (img >= len(ids)) | (ids[np.minimum(img, len(ids) - 1)] != d.image_id)
            if unknown.any():
                i = int(np.argmax(unknown))
                raise ValueError(f"prediction set {m}, item {i}: image_id {int(d.image_id[i])!r} is not a known image")
            sets.append((img, d.category_id, d.bbox_xywh, d.score))
        return cls(ids, np.array([size[int(i)] for i in ids], dtype=np.float64).reshape(-1, 2), sets)

    def member_columns(self) -> list[Columns]:
        """Each member's predictions as :data:`Columns` again, from the clipped boxes."""
        box, score, label, model, image = self.columns
        xyxy = box * np.tile(take_rows(self.wh, image), 2)
        xywh = np.hstack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])
        return [(image[s], label[s], xywh[s], score[s]) for s in (model == m for m in range(self.n_models))]

    def fuse(self, max_per_img: int | None, prepared: dict[Any, _Prepared] | None = None, **params: Any) -> Columns:
        """Fused with ``params`` (:func:`fuse_arrays`' keyword arguments, ``prepared`` its cache),
        by image then score, at most ``max_per_img`` per image."""
        fused = fuse_arrays(*self.columns, self.n_models, max_per_img=max_per_img, prepared=prepared, **params)
        boxes, scores, labels, images = fused
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
    """Several models' detections on the COCO images ``images`` (id, width, height) fused with
    ``params`` (:data:`FUSION_KEYS`), as :meth:`ResultArrays.fuse` does. One member is returned
    as it is (re-fusing a model with itself only changes its boxes and scores for the worse)."""
    if len(members) == 1:
        return as_detections(members[0])
    arrays = ResultArrays.of([as_detections(m) for m in members], images)
    img, labels, xywh, scores = arrays.fuse(max_per_img, **params)
    return Detections(arrays.ids[img], np.asarray(labels, dtype=np.int64), xywh, scores)
