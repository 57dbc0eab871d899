"""Predictions that cross detfold's border: other tools' prediction files in (``ensemble.external``:
COCO results with their own ids, or competition CSV), the competition CSV out.

CSV rows are ``image_id`` (a file name or its stem) and ``PredictionString``: "label score
xmin ymin xmax ymax ..." (xyxy_abs). Read: label a class name or a 0-based class index;
written: the class index, the category id or the class name (``ensemble.submission_label``).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from detfold.core.coco import Coco, Detections, load_coco, load_results
from detfold.core.io import atomic_open, read_json
from detfold.ensemble.fusion import Member, as_detections

log = logging.getLogger(__name__)


def external_members(
    specs: list[dict[str, Any]], split: str, coco: Coco, train_json: str | None = None
) -> tuple[dict[str, Detections], dict[str, Detections]]:
    """External models' predictions (``ensemble.external`` entries) on ``coco``'s images:
    (those with OOF predictions, which take part in the choice, and the others, which join the
    model ensemble untuned). For the blend split (``split`` 'oof') only the first kind is read,
    its OOF files against the training images (``train_json``), kept on the blend images."""
    chosen: dict[str, Detections] = {}
    untuned: dict[str, Detections] = {}
    keep = np.asarray(coco.image_ids, dtype=np.int64)
    id_coco = load_coco(train_json) if split == "oof" and train_json and any(s["oof"] for s in specs) else coco
    for spec in specs:
        if split == "oof" and not spec["oof"]:
            continue
        preds = load_external(spec, split, id_coco)
        preds = preds.take(np.isin(preds.image_id, keep))
        (chosen if spec["oof"] else untuned)[spec["name"]] = preds
    return chosen, untuned


def load_external(spec: dict[str, Any], split: str, coco: Coco) -> Detections:
    """Foreign predictions for ``split`` ('oof' or 'test') mapped onto ``coco``'s ids.

    ``format: coco``: a COCO results JSON; with ``images``/``categories`` files of the other
    tool given (``id_source``), ids are mapped through file names and class names; otherwise
    its ids must already be this dataset's. ``format: csv``: the competition CSV (module
    docstring).
    """
    path = spec[split]
    if not path:
        raise ValueError(f"ensemble.external {spec['name']!r}: no '{split}' predictions file")
    results = _coco_results(path, coco, spec.get("id_source")) if spec["format"] == "coco" else _csv_results(path, coco)
    log.info("external %s (%s): %d predictions from %s", spec["name"], split, len(results), path)
    return Detections.from_results(results)


def _coco_results(path: str, coco: Coco, id_source: str | None) -> list[dict[str, Any]]:
    """A COCO results file's predictions with ``coco``'s ids (mapped through ``id_source``'s
    file names and class names when given)."""
    img_map = {im["id"]: im["id"] for im in coco.images}
    cat_map = {c["id"]: c["id"] for c in coco.categories}
    if id_source:
        source = read_json(id_source)
        by_name = {im["file_name"]: im["id"] for im in coco.images}
        cat_by_name = {c["name"]: c["id"] for c in coco.categories}
        img_map = {im["id"]: by_name.get(im["file_name"]) for im in source.get("images", [])}
        cat_map = {c["id"]: cat_by_name.get(c["name"]) for c in source.get("categories", [])}
    results = []
    for i, p in enumerate(load_results(path)):
        image_id, cat_id = img_map.get(p["image_id"]), cat_map.get(p["category_id"])
        if image_id is None:
            raise ValueError(f"{path}[{i}]: image_id {p['image_id']!r} is not an image of {coco.path}")
        if cat_id is None:
            raise ValueError(f"{path}[{i}]: category_id {p['category_id']!r} is not a class of {coco.path}")
        results.append({"image_id": image_id, "category_id": cat_id, "bbox": p["bbox"], "score": p["score"]})
    return results


def _csv_results(path: str, coco: Coco) -> list[dict[str, Any]]:
    """A competition CSV's predictions (xyxy_abs) as COCO results (xywh_abs) of ``coco``."""
    by_name = {im["file_name"]: im["id"] for im in coco.images}
    by_stem = {Path(n).stem: i for n, i in by_name.items()}
    categories = {c["name"]: c["id"] for c in coco.categories}, [c["id"] for c in coco.categories]
    results = []
    with open(path, newline="", encoding="utf-8") as handle:
        for n, row in enumerate(csv.DictReader(handle), start=2):
            key = (row.get("image_id") or "").strip()
            image_id = by_name.get(key, by_stem.get(Path(key).stem))
            if image_id is None:
                raise ValueError(f"{path}: row {n}: image_id {key!r} matches no file name of {coco.path}")
            values = (row.get("PredictionString") or "").split()
            if len(values) % 6:
                raise ValueError(f"{path}: row {n}: PredictionString has {len(values)} values, not a multiple of 6")
            for j in range(0, len(values), 6):
                results.append(_csv_box(values[j : j + 6], image_id, categories, f"{path}: row {n}"))
    return results


def _csv_box(
    values: list[str], image_id: int, categories: tuple[dict[str, int], list[int]], where: str
) -> dict[str, Any]:
    """One "label score x1 y1 x2 y2" of a PredictionString as a COCO result; ``categories``:
    the category ids by class name, and in class order."""
    label = values[0]
    by_name, cat_ids = categories
    index = int(label) if label.isdigit() and int(label) < len(cat_ids) else None
    cat_id = by_name.get(label, None if index is None else cat_ids[index])
    if cat_id is None:
        raise ValueError(f"{where}: label {label!r} is neither a class name nor an index")
    try:
        score, x1, y1, x2, y2 = (float(v) for v in values[1:])
    except ValueError:
        raise ValueError(f"{where}: a box value is not a number: {values}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2, score)) or x2 < x1 or y2 < y1:
        raise ValueError(f"{where}: box {values} is not finite or has x2 < x1 / y2 < y1")
    return {"image_id": image_id, "category_id": cat_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}


def write_submission(results: Member, coco: Coco, path: str | Path, label: str) -> None:
    """Competition CSV: ``PredictionString,image_id`` with "label score xmin ymin xmax ymax ..."
    per image (every image listed, empty string when nothing was found); ``label`` is the
    0-based class index ('index'), the category id ('category_id') or the class name ('name')."""
    d = as_detections(results)
    tags = {
        c["id"]: {"index": i, "category_id": c["id"], "name": c["name"]}[label] for i, c in enumerate(coco.categories)
    }
    per_image: dict[int, list[str]] = {im["id"]: [] for im in coco.images}
    order = np.lexsort((-d.score, d.image_id))  # by image, then score descending (stable)
    x, y, w, h = d.bbox_xywh[order].T.tolist()
    for image_id, cat, score, x1, y1, bw, bh in zip(
        d.image_id[order].tolist(), d.category_id[order].tolist(), d.score[order].tolist(), x, y, w, h, strict=True
    ):
        per_image[image_id].append(f"{tags[cat]} {score:.6f} {x1:.3f} {y1:.3f} {x1 + bw:.3f} {y1 + bh:.3f}")
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["PredictionString", "image_id"])
        for im in coco.images:
            writer.writerow([" ".join(per_image[im["id"]]), im["file_name"]])
