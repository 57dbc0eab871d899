"""The error analysis's galleries (contact sheets of :mod:`detfold.core.gallery`): TIDE's errors
of each type, the worst images at the best-F1 thresholds, and the label-review candidates of
each kind. Ground truth in green, predictions in red, the other box of a pair in cyan; boxes
are COCO ``xywh_abs``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detfold.analyze.review import REVIEW_KINDS
from detfold.analyze.tide import ERROR_TYPES, TideMatch, error_codes
from detfold.core.gallery import (
    ANALYSIS_LOOK,
    GT_COLOUR,
    MAX_TILES,
    PRED_COLOUR,
    RELATED_COLOUR,
    Box,
    Tile,
    contact_sheet,
    union,
)

log = logging.getLogger(__name__)

WORST_IMAGES = 12  #: images in the worst-images gallery


def _tile(
    source: Path,
    gt: Sequence[Box],
    pred: Sequence[Box],
    caption: tuple[str, str],
    focus: Box | None = None,
    related: Sequence[Box] = (),
) -> Tile:
    return Tile(source, [(RELATED_COLOUR, related), (GT_COLOUR, gt), (PRED_COLOUR, pred)], caption, focus)


def review_tiles(match: TideMatch, review: Sequence[Mapping[str, Any]], images_dir: str) -> dict[str, list[Tile]]:
    """The review galleries' items, by file stem ``review_<kind>``: the top candidates of each
    kind (``review``: :func:`detfold.analyze.review.review_candidates` of ``match``)."""
    a = match.arrays
    ann_box = {int(i): a.g_box[n].tolist() for n, i in enumerate(a.g_ann_id)}
    out: dict[str, list[Tile]] = {}
    for kind in REVIEW_KINDS:
        tiles = []
        for r in [r for r in review if r["check"] == kind][:MAX_TILES]:
            gt_boxes = [r["bbox"]] if r["bbox"] is not None else []
            pred = [r["pred_bbox"]] if r["pred_bbox"] is not None else []
            related = [ann_box[r["related_ann_id"]]] if r.get("related_ann_id") is not None else []
            label = f"{r['ann_id'] if r['ann_id'] is not None else 'img ' + str(r['image_id'])} {r['category']}"
            if r["predicted_category"] and r["predicted_category"] != r["category"]:
                label += f">{r['predicted_category']}"
            values = [
                f"{short}{r[key]:.2f}" for key, short in (("score", "s"), ("iou", "iou")) if r.get(key) is not None
            ]
            detail = " ".join(values) or f"v{r['value']:.2f}"
            source = Path(images_dir) / r["file_name"]
            caption = (f"#{r['rank']} {label}", detail)
            tiles.append(_tile(source, gt_boxes, pred, caption, union([*gt_boxes, *pred, *related]), related))
        out[f"review_{kind}"] = tiles
    return out


def _missed_tiles(match: TideMatch, images_dir: str) -> list[Tile]:
    """The largest missed boxes."""
    a = match.arrays
    missed = np.flatnonzero(match.missed)
    area = a.g_box[missed, 2] * a.g_box[missed, 3]
    tiles = []
    for g in missed[np.argsort(-area, kind="stable")][:MAX_TILES]:
        box = a.g_box[g].tolist()
        caption = (f"{a.g_ann_id[g]} {a.names.get(int(a.g_cls[g]), '')}", "missed")
        tiles.append(_tile(Path(images_dir) / a.file_names[int(a.g_img[g])], [box], [], caption, box))
    return tiles


def _error_tiles(match: TideMatch, kind: str, images_dir: str) -> list[Tile]:
    """The detections with an error of type ``kind``, highest score first, with the box they
    were tested against (Miss: the largest missed boxes)."""
    if kind == "Miss":
        return _missed_tiles(match, images_dir)
    a, names = match.arrays, match.arrays.names
    dets = np.flatnonzero(match.error == error_codes()[kind])
    tiles = []
    for d in dets[np.argsort(-a.d_score[dets], kind="stable")][:MAX_TILES]:
        pred = a.d_box[d].tolist()
        g = int(match.error_gt[d])
        gt_boxes = [a.g_box[g].tolist()] if g >= 0 else []
        label = names.get(int(a.d_cls[d]), "")
        if kind == "Cls" and g >= 0:
            label = f"{names.get(int(a.g_cls[g]), '')}>{label}"
        caption = (label, f"s{a.d_score[d]:.2f} iou{match.iou_any[d]:.2f}")
        source = Path(images_dir) / a.file_names[int(a.d_img[d])]
        tiles.append(_tile(source, gt_boxes, [pred], caption, union([pred, *gt_boxes])))
    return tiles


def worst_image_tiles(match: TideMatch, per_image: np.ndarray, keep: np.ndarray, images_dir: str) -> list[Tile]:
    """The images with the most errors at the best-F1 thresholds (false positives + missed
    boxes + class confusions, ``per_image`` of :func:`detfold.analyze.thresholds.confusion_matrix`),
    whole, with their boxes and the detections ``keep`` marks (those at or above the thresholds)."""
    a = match.arrays
    gs, ge, ds, de = a.bounds()
    total = per_image.sum(1)
    worst = [int(i) for i in np.argsort(-total, kind="stable")[:WORST_IMAGES] if total[i] > 0]
    return [
        _tile(
            Path(images_dir) / a.file_names[i],
            [a.g_box[g].tolist() for g in range(gs[i], ge[i]) if not a.g_crowd[g]],
            [a.d_box[d].tolist() for d in range(ds[i], de[i]) if keep[d]],
            (a.file_names[i][-26:], f"fp{per_image[i, 0]} fn{per_image[i, 1]} cls{per_image[i, 2]}"),
        )
        for i in worst
    ]


def write_galleries(
    match: TideMatch,
    keep: np.ndarray,
    per_image: np.ndarray,
    review: tuple[TideMatch, Sequence[Mapping[str, Any]]],
    images_dir: str,
    gallery_dir: Path,
) -> None:
    """One PNG per sheet in ``gallery_dir``: ``error_<type>`` of TIDE's errors in ``match``,
    ``worst_images`` (``keep``, ``per_image``: at the best-F1 thresholds) and ``review_<kind>``
    of the candidates in ``review`` (their matching and rows)."""
    sheets = {f"error_{kind}": _error_tiles(match, kind, images_dir) for kind in ERROR_TYPES}
    sheets["worst_images"] = worst_image_tiles(match, per_image, keep, images_dir)
    sheets.update(review_tiles(*review, images_dir))
    gallery_dir.mkdir(parents=True, exist_ok=True)
    for stem, tiles in sheets.items():
        contact_sheet(tiles, gallery_dir / f"{stem}.png", ANALYSIS_LOOK)
    log.info("analysis: %d galleries in %s", len(sheets), gallery_dir)
