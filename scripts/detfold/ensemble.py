"""Ensembles of fold models and of models: fusion of COCO results, the OOF parameter search,
foreign prediction files, and the submission CSV.

Members are COCO result lists (``image_id, category_id, bbox xywh_abs, score``) on the same
images. Fusion parameters are chosen on out-of-fold predictions, where every training image
is predicted by models that never saw it, and then applied to the test predictions.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detfold.coco import Coco, load_results
from detfold.cocoeval import BboxEvaluator
from detfold.fusion import CONF_TYPES, METHODS, ResultArrays, fuse_coco_predictions
from detfold.io import atomic_open, read_json

log = logging.getLogger(__name__)

FUSION_KEYS = ("method", "iou_thr", "skip_box_thr", "conf_type", "weights", "sigma", "thresh", "class_agnostic")


def fusion_params(settings: dict[str, Any]) -> dict[str, Any]:
    """The fusion keyword arguments of a settings dict (other keys ignored)."""
    return {k: settings[k] for k in FUSION_KEYS if k in settings and settings[k] is not None}


def grid(search: dict[str, Any], n_members: int) -> list[dict[str, Any]]:
    """Every combination of the search lists; conf_type only varies for WBF; weights are
    vectors of one weight per member (an empty list means equal weights)."""
    methods = search.get("method", ["wbf"])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"ensemble.search.method: unknown {unknown}; allowed: {list(METHODS)}")
    weights = search.get("weights") or [None]
    for w in weights:
        if w is not None and len(w) != n_members:
            raise ValueError(f"ensemble.search.weights: {w} has {len(w)} weights for {n_members} members")
    combos = []
    for method in methods:
        conf_types = search.get("conf_type", ["avg"]) if method == "wbf" else [None]
        for conf in conf_types:
            if conf is not None and conf not in CONF_TYPES:
                raise ValueError(f"ensemble.search.conf_type: {conf!r} not in {list(CONF_TYPES)}")
        for iou, skip, conf, w in itertools.product(
            search.get("iou_thr", [0.55]), search.get("skip_box_thr", [0.0]), conf_types, weights
        ):
            params = {"method": method, "iou_thr": float(iou), "skip_box_thr": float(skip)}
            if conf is not None:
                params["conf_type"] = conf
            if w is not None:
                params["weights"] = [float(x) for x in w]
            combos.append(params)
    return combos


class MemberArrays:
    """Member predictions on the ground truth's images, ready to be fused and scored many times."""

    def __init__(self, members: Sequence[list[dict[str, Any]]], coco: Coco) -> None:
        self.evaluator = BboxEvaluator(coco.data)
        self.results = ResultArrays(members, coco.images)  # same sorted image positions as the evaluator

    def score(self, params: dict[str, Any], max_per_image: int = 100) -> dict[str, float]:
        images, labels, xywh, scores = self.results.fuse(max_per_image=max_per_image, **params)
        _, cat_pos = self.evaluator.positions(self.evaluator.img_ids[images], labels)
        stats = self.evaluator.evaluate(images, cat_pos, xywh, scores).stats
        return {"mAP": float(stats[0]), "mAP50": float(stats[1])}


def search(
    members: Sequence[list[dict[str, Any]]], gt: Coco, combos: list[dict[str, Any]], metric: str = "mAP50"
) -> pd.DataFrame:
    """Score every parameter combination on the pooled OOF predictions; best first."""
    if metric not in ("mAP", "mAP50"):
        raise ValueError(f"ensemble.search.metric must be mAP or mAP50, got {metric!r}")
    arrays = MemberArrays(members, gt)
    rows = []
    for n, params in enumerate(combos, start=1):
        rows.append({**{k: str(v) if k == "weights" else v for k, v in params.items()}, **arrays.score(params)})
        if n % 25 == 0 or n == len(combos):
            log.info("search: %d/%d combinations", n, len(combos))
    table = pd.DataFrame(rows)
    other = "mAP" if metric == "mAP50" else "mAP50"
    order = np.lexsort((np.arange(len(table)), -table[other].to_numpy(), -table[metric].to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def params_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A search-table row back into fusion parameters."""
    params = {"method": row["method"], "iou_thr": float(row["iou_thr"]), "skip_box_thr": float(row["skip_box_thr"])}
    if isinstance(row.get("conf_type"), str):
        params["conf_type"] = row["conf_type"]
    if isinstance(row.get("weights"), str):
        params["weights"] = [float(x) for x in row["weights"].strip("[]").split(",")]
    return params


def load_external(spec: dict[str, Any], split: str, coco: Coco) -> list[dict[str, Any]]:
    """Foreign predictions for ``split`` ('oof' or 'test') mapped onto ``coco``'s ids.

    ``format: coco``: a COCO results JSON; with ``images``/``categories`` files of the other
    tool given (``id_source``), ids are mapped through file names and class names; otherwise
    its ids must already be this dataset's. ``format: csv``: columns ``image_id`` (file name
    or its stem) and ``PredictionString`` ("label score xmin ymin xmax ymax ..."), label a
    class name, or a 0-based class index.
    """
    path = spec.get(split)
    if not path:
        raise ValueError(f"ensemble.external {spec.get('name')!r}: no '{split}' predictions file")
    by_name = {im["file_name"]: im["id"] for im in coco.images}
    by_stem = {Path(n).stem: i for n, i in by_name.items()}
    cat_by_name = {c["name"]: c["id"] for c in coco.categories}
    cat_ids = [c["id"] for c in coco.categories]
    fmt = spec.get("format", "coco")
    results: list[dict[str, Any]] = []
    if fmt == "coco":
        data = load_results(path)
        known_img, known_cat = set(by_name.values()), set(cat_ids)
        img_map, cat_map = None, None
        if spec.get("id_source"):
            source = read_json(spec["id_source"])
            img_map = {im["id"]: by_name.get(im["file_name"]) for im in source.get("images", [])}
            cat_map = {c["id"]: cat_by_name.get(c["name"]) for c in source.get("categories", [])}
        for i, p in enumerate(data):
            image_id = img_map.get(p.get("image_id")) if img_map is not None else p.get("image_id")
            cat_id = cat_map.get(p.get("category_id")) if cat_map is not None else p.get("category_id")
            if image_id not in known_img:
                raise ValueError(f"{path}[{i}]: image_id {p.get('image_id')!r} is not an image of {coco.path}")
            if cat_id not in known_cat:
                raise ValueError(f"{path}[{i}]: category_id {p.get('category_id')!r} is not a class of {coco.path}")
            results.append({"image_id": image_id, "category_id": cat_id, "bbox": p["bbox"], "score": p["score"]})
    elif fmt == "csv":
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
                    label, score, x1, y1, x2, y2 = values[j : j + 6]
                    if label in cat_by_name:
                        cat_id = cat_by_name[label]
                    elif label.isdigit() and int(label) < len(cat_ids):
                        cat_id = cat_ids[int(label)]
                    else:
                        raise ValueError(f"{path}: row {n}: label {label!r} is neither a class name nor an index")
                    try:
                        x1f, y1f, x2f, y2f, scoref = (float(v) for v in (x1, y1, x2, y2, score))
                    except ValueError:
                        raise ValueError(f"{path}: row {n}: a box value is not a number: {values[j : j + 6]}") from None
                    if not all(math.isfinite(v) for v in (x1f, y1f, x2f, y2f, scoref)) or x2f < x1f or y2f < y1f:
                        raise ValueError(
                            f"{path}: row {n}: box {values[j : j + 6]} is not finite or has x2 < x1 / y2 < y1"
                        )
                    results.append(
                        {
                            "image_id": image_id,
                            "category_id": cat_id,
                            "bbox": [x1f, y1f, x2f - x1f, y2f - y1f],
                            "score": scoref,
                        }
                    )
    else:
        raise ValueError(f"ensemble.external {spec.get('name')!r}: format must be coco or csv, got {fmt!r}")
    log.info("external %s (%s): %d predictions from %s", spec.get("name"), split, len(results), path)
    return results


def fuse_members(
    members: Sequence[list[dict[str, Any]]],
    images: Sequence[dict[str, Any]],
    params: dict[str, Any],
    max_per_image: int,
) -> list[dict[str, Any]]:
    return fuse_coco_predictions(members, images, max_per_image=max_per_image, **params)


def write_submission(results: list[dict[str, Any]], coco: Coco, path: str | Path, label: str = "index") -> None:
    """Competition CSV: ``PredictionString,image_id`` with "label score xmin ymin xmax ymax ..."
    per image (every image listed, empty string when nothing was found); label is the 0-based
    class index, the category id or the class name."""
    if label not in ("index", "category_id", "name"):
        raise ValueError(f"ensemble.submission_label must be index, category_id or name, got {label!r}")
    index = {c["id"]: i for i, c in enumerate(coco.categories)}
    names = {c["id"]: c["name"] for c in coco.categories}
    per_image: dict[int, list[str]] = {im["id"]: [] for im in coco.images}
    for r in sorted(results, key=lambda r: (r["image_id"], -r["score"])):
        x, y, w, h = r["bbox"]
        tag = {"index": index, "category_id": {c: c for c in index}, "name": names}[label][r["category_id"]]
        per_image[r["image_id"]].append(f"{tag} {r['score']:.6f} {x:.3f} {y:.3f} {x + w:.3f} {y + h:.3f}")
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["PredictionString", "image_id"])
        for im in coco.images:
            writer.writerow([" ".join(per_image[im["id"]]), im["file_name"]])
