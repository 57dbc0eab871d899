"""Ensembles of fold models and of models: fusion of COCO results, the choice on the blend
split (candidates, nested selection, bootstrap intervals), foreign prediction files, and the
submission CSV.

Members are detections (:class:`detfold.core.coco.Detections`, columns; a COCO result list
``image_id, category_id, bbox xywh_abs, score`` is accepted too) on the same images.
Everything is chosen on the blend split, images that no fold model trained on, so every fold
model's predictions there are clean; the choice is then applied to the test set.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detfold.core.coco import Coco, Detections, load_results
from detfold.core.io import atomic_open, read_json
from detfold.ensemble.fusion import (
    Member,
    ResultArrays,
    as_detections,
    check_fusion,
    effective_params,
    fuse_members,
    fusion_params,
)
from detfold.evaluate.cocoeval import BboxEvaluator, Matched
from detfold.evaluate.stats import (
    BOOTSTRAP_SAMPLES,
    NESTED_PARTS,
    bootstrap_counts,
    bootstrap_scores,
    interval,
    nested_parts,
)

log = logging.getLogger(__name__)


def grid(search: dict[str, Any], n_members: int) -> list[dict[str, Any]]:
    """Every combination of the search lists; conf_type only varies for WBF; weights are
    vectors of one weight per member (an empty list means equal weights)."""
    methods = search.get("method", ["wbf"])
    weights = search.get("weights") or [None]
    for w in weights:
        if w is not None and len(w) != n_members:
            raise ValueError(f"ensemble.search.weights: {w} has {len(w)} weights for {n_members} members")
    combos = []
    for method in methods:
        conf_types = search.get("conf_type", ["avg"]) if method == "wbf" else [None]
        for conf in conf_types:
            check_fusion(method, conf or "avg", "ensemble.search")
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


def load_external(spec: dict[str, Any], split: str, coco: Coco) -> Detections:
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
    return Detections.from_results(results)


def write_submission(results: Member, coco: Coco, path: str | Path, label: str = "index") -> None:
    """Competition CSV: ``PredictionString,image_id`` with "label score xmin ymin xmax ymax ..."
    per image (every image listed, empty string when nothing was found); label is the 0-based
    class index, the category id or the class name."""
    if label not in ("index", "category_id", "name"):
        raise ValueError(f"ensemble.submission_label must be index, category_id or name, got {label!r}")
    d = as_detections(results)
    index = {c["id"]: i for i, c in enumerate(coco.categories)}
    names = {c["id"]: c["name"] for c in coco.categories}
    tags = {"index": index, "category_id": {c: c for c in index}, "name": names}[label]
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


# ---------------------------------------------------------------------------------------------
# choosing on the blend split: candidates, nested selection, bootstrap intervals

#: Fold fusion when none is configured: also the first combination of the fold-fusion search.
DEFAULT_FOLD_FUSION = {"method": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"}


@dataclass
class Plan:
    """One way to make the delivered predictions from the members.

    kind ``single``: one fold model (``member`` = "model/foldK") or one external model
    (``member`` = its name), as it is; ``fold_ensemble``: ``model``'s K fold models fused with
    ``fold_params[model]``; ``ensemble``: every model's fold ensemble (``fold_params``), then
    those and the external models fused with ``model_params``."""

    kind: str
    member: str | None = None
    model: str | None = None
    fold_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_params: dict[str, Any] | None = None

    def describe(self) -> str:
        if self.kind == "single":
            return f"{self.member}, alone"
        if self.kind == "fold_ensemble":
            return f"{self.model} fold ensemble {_short(self.fold_params[str(self.model)])}"
        folds = "; ".join(f"{m} {_short(p)}" for m, p in self.fold_params.items())
        return f"model ensemble {_short(self.model_params or {})} of fold ensembles ({folds})"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**data)


def _short(params: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in params.items() if k != "class_agnostic") + ")"


def kind_label(kind: str) -> str:
    """'single', 'fold_ensemble:NAME' or 'ensemble' as words."""
    if kind == "single":
        return "best single model"
    if kind.startswith("fold_ensemble:"):
        return f"{kind.split(':', 1)[1]} fold ensemble"
    return "model ensemble"


def fold_grid(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Fold-fusion combinations: with ``fold_fusion: search`` (the default) the default fold
    fusion first, then the search grid (equal weights: the K fold models are exchangeable);
    with fixed ``fold_fusion`` settings only those."""
    fixed = settings.get("fold_fusion", "search")
    if isinstance(fixed, dict):
        return [fusion_params({**DEFAULT_FOLD_FUSION, **fixed})]
    search = {k: v for k, v in (settings.get("search") or {}).items() if k != "weights"}
    return _unique([dict(DEFAULT_FOLD_FUSION), *(grid(search, 1) if search else [])])


def model_grid(settings: dict[str, Any], n_members: int) -> list[dict[str, Any]]:
    """Model-fusion combinations: the untuned default (``method``, ``iou_thr``, ...) first,
    then the search grid; ``class_agnostic`` applies to all."""
    agnostic = {"class_agnostic": True} if settings.get("class_agnostic") else {}
    search = settings.get("search") or {}
    combos = [fusion_params(settings), *(grid(search, n_members) if search else [])]
    return _unique([{**c, **agnostic} for c in combos])


def _unique(combos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for c in combos:
        key = repr(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _key(scores: tuple[float, float], metric: str) -> tuple[float, float]:
    m_ap, m_ap50 = (round(v, 9) for v in scores)
    return (m_ap50, m_ap) if metric == "mAP50" else (m_ap, m_ap50)


_SELECTOR: BlendSelector | None = None  # the selector a forked worker process computes for


def _combination(key: tuple[Any, ...]) -> dict[bytes, tuple[float, float]]:  # in a forked worker
    assert _SELECTOR is not None
    return _SELECTOR._summary(key)


def _map_combinations(
    selector: BlendSelector, keys: list[tuple[Any, ...]], processes: int
) -> list[dict[bytes, tuple[float, float]]]:
    """Fuse and match the parameter combinations ``keys`` (("fold", model, i) or ("ensemble",
    fold choice, j)) and score each under the image weights of the selection
    (:meth:`BlendSelector._summary`), on ``processes`` forked worker processes, each with its
    share of the combinations in order; only the scores come back. Fusion, matching and scoring
    are deterministic, so the results are those of the serial loop, in the same order
    (tests/ensemble/test_selection.py compares them)."""
    global _SELECTOR
    processes = min(processes, len(keys))
    if processes <= 1:
        return [selector._summary(key) for key in keys]
    import multiprocessing

    _SELECTOR = selector  # inherited by the forked workers (copy on write), nothing pickled
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            return pool.map(_combination, keys, chunksize=math.ceil(len(keys) / processes))
    finally:
        _SELECTOR = None


def selection_weights(part: np.ndarray) -> list[np.ndarray]:
    """The image weights selection fits on (:func:`select_on_blend`): all images, every part
    left out, every two parts left out (the nested selection of the whole procedure)."""
    n_parts = int(part.max()) + 1 if len(part) else 0
    out = [np.ones(len(part), dtype=np.int64)]
    for left_out in [(p,) for p in range(n_parts)] + list(itertools.combinations(range(n_parts), 2)):
        out.append(np.where(np.isin(part, left_out), 0, 1).astype(np.int64))
    return out


class BlendSelector:
    """Every candidate, scored on the blend split (images no fold model trained on).

    ``fold_preds``: per model its K fold models' predictions on the blend images;
    ``external``: per external model its predictions there. Fusion and matching are done once
    per parameter combination on all blend images; any subset or bootstrap resample is then
    scored by image weights (:class:`detfold.evaluate.cocoeval.Matched`), which is what makes nested
    selection affordable.
    """

    def __init__(
        self,
        gt: Coco,
        fold_preds: dict[str, list[Member]],
        external: dict[str, Member],
        settings: dict[str, Any],
        seed: int = 42,
        parts: int = NESTED_PARTS,
        processes: int = 1,
    ) -> None:
        self.gt = gt
        self.metric = (settings.get("search") or {}).get("metric", "mAP50")
        if self.metric not in ("mAP", "mAP50"):
            raise ValueError(f"ensemble.search.metric must be mAP or mAP50, got {self.metric!r}")
        self.max_per_img = int(settings.get("max_per_img", 100))
        self.evaluator = BboxEvaluator(gt.data)
        self.models = sorted(fold_preds)
        self.external = {name: as_detections(preds) for name, preds in external.items()}
        self.fold_grid = fold_grid(settings)
        self.model_grid = model_grid(settings, len(self.models) + len(self.external))
        self.part = nested_parts(self.evaluator.img_ids.tolist(), parts, seed)
        self.parts = parts
        self.singles: dict[str, Matched] = {}
        for m in self.models:
            for k, preds in enumerate(fold_preds[m]):
                self.singles[f"{m}/fold{k}"] = self.evaluator.match_results(preds)
        for name, preds in self.external.items():
            self.singles[name] = self.evaluator.match_results(preds)
        self._arrays = {m: ResultArrays([as_detections(p) for p in fold_preds[m]], gt.images) for m in self.models}
        self._external_arrays = ResultArrays(list(self.external.values()), gt.images) if self.external else None
        self._fused: dict[tuple[Any, ...], tuple[np.ndarray, ...]] = {}
        self._members_of: tuple[tuple[int, ...], ResultArrays] | None = None
        self._sorted_of: ResultArrays | None = None  # the member set whose sorted boxes are kept
        self._matched: dict[tuple[Any, ...], Matched] = {}
        self._scores: dict[tuple[Any, ...], tuple[float, float]] = {}
        self._summarized: set[tuple[Any, ...]] = set()
        self.processes = max(1, int(processes))
        self._weights = selection_weights(self.part)
        # combinations that fuse alike (e.g. gaussian soft-NMS at every iou_thr) computed once
        self._fold_same = _first_alike(self.fold_grid)
        self._model_same = _first_alike(self.model_grid)
        # by model, then skip_box_thr: consecutive combinations share fusion's filtered, sorted boxes
        keys = sorted(
            {self._same(("fold", m, i)) for m in self.models for i in range(len(self.fold_grid))},
            key=lambda k: (k[1], self.fold_grid[k[2]].get("skip_box_thr", 0.0), k[2]),
        )
        self._summarize(keys)
        for m in self.models:
            log.info("blend: %s fold fusion, %d combinations matched", m, len(self.fold_grid))

    @property
    def kinds(self) -> list[str]:
        kinds = ["single"] + [f"fold_ensemble:{m}" for m in self.models]
        return kinds + (["ensemble"] if len(self.models) + len(self.external) > 1 else [])

    # fused and matched prediction sets, cached ------------------------------------------
    def _same(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        """The key of the first combination that fuses like ``key`` (its results are shared)."""
        if key[0] == "fold":
            return ("fold", key[1], self._fold_same[key[2]])
        if key[0] == "ensemble":
            return ("ensemble", tuple(self._fold_same[i] for i in key[1]), self._model_same[key[2]])
        return key

    def _match_columns(self, columns: tuple[np.ndarray, ...]) -> Matched:
        images, labels, xywh, scores = columns
        cat = self.evaluator.category_positions(labels)
        return self.evaluator.match(images, cat, xywh, scores, by_image_and_score=True)  # as fusion returns them

    def _fuse(self, arrays: ResultArrays, params: dict[str, Any]) -> tuple[np.ndarray, ...]:
        """``arrays`` fused with ``params``, reusing its sorted boxes from the previous call;
        the member set fused before drops its own (one sorted copy per process, not one per
        model: each is as large as the member set)."""
        if self._sorted_of is not None and self._sorted_of is not arrays:
            self._sorted_of.drop_cache()
        self._sorted_of = arrays
        return arrays.fuse(self.max_per_img, **params)

    def _fold_fused(self, model: str, i: int) -> tuple[np.ndarray, ...]:
        key = self._same(("fold", model, i))
        if key not in self._fused:
            self._fused[key] = self._fuse(self._arrays[model], self.fold_grid[key[2]])
        return self._fused[key]

    def _ensemble_arrays(self, fold_choice: tuple[int, ...]) -> ResultArrays:
        """The model step's members (the chosen fold ensembles, the external models) as one
        :class:`ResultArrays`, kept for the latest fold choice."""
        fold_choice = tuple(self._fold_same[i] for i in fold_choice)
        if self._members_of is None or self._members_of[0] != fold_choice:
            sets = [self._fold_fused(m, i) for m, i in zip(self.models, fold_choice, strict=True)]
            if self._external_arrays is not None:
                a = self._external_arrays.arrays
                for e in range(len(self.external)):
                    sel = a["model"] == e
                    xyxy = a["box"][sel] * np.hstack([self._external_arrays.wh[a["image"][sel]]] * 2)
                    xywh = np.hstack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])
                    sets.append((a["image"][sel], a["label"][sel], xywh, a["score"][sel]))
            arrays = ResultArrays.from_columns(self.evaluator.img_ids, self._arrays[self.models[0]].wh, sets)
            self._members_of = (fold_choice, arrays)
        return self._members_of[1]

    def plan_predictions(self, plan: Plan) -> Detections | None:
        """What :func:`apply_plan` gives for ``plan`` on the blend images, from the fusions the
        search keeps (the fold ensembles; the model ensemble fused once more) instead of
        fusing every step again; None for a single model, or a fold ensemble of one fold."""
        if plan.kind == "single" or any(self._arrays[m].n_models < 2 for m in self.models):
            return None
        if plan.kind == "fold_ensemble":
            model = str(plan.model)
            fused = self._fold_fused(model, self.fold_grid.index(plan.fold_params[model]))
        else:
            choice = tuple(self.fold_grid.index(plan.fold_params[m]) for m in self.models)
            fused = self._fuse(self._ensemble_arrays(choice), self.model_grid[self.model_grid.index(plan.model_params)])
        images, labels, xywh, scores = fused
        return Detections(self.evaluator.img_ids[images], np.asarray(labels, dtype=np.int64), xywh, scores)

    def _compute(self, key: tuple[Any, ...]) -> Matched:
        """The matched prediction set of a combination key, computed (not kept)."""
        if key[0] == "single":
            return self.singles[key[1]]
        if key[0] == "fold":
            model, i = key[1], key[2]
            fused = self._fused.get(key) or self._fuse(self._arrays[model], self.fold_grid[i])
            return self._match_columns(fused)
        arrays = self._ensemble_arrays(key[1])
        return self._match_columns(self._fuse(arrays, self.model_grid[key[2]]))

    def _matched_of(self, key: tuple[Any, ...]) -> Matched:
        """:meth:`_compute`, kept: only the sets a fit returns are (each is a few bytes per
        detection; all combinations' sets together would not fit in memory at scale)."""
        key = self._same(key)
        if key not in self._matched:
            self._matched[key] = self._compute(key)
        return self._matched[key]

    def _fold_matched(self, model: str, i: int) -> Matched:
        return self._matched_of(("fold", model, i))

    def _ensemble_matched(self, fold_choice: tuple[int, ...], j: int) -> Matched:
        return self._matched_of(("ensemble", fold_choice, j))

    def _summary(self, key: tuple[Any, ...]) -> dict[bytes, tuple[float, float]]:
        """The scores of one combination under every weighting of :func:`selection_weights`."""
        matched = self._compute(key)
        return {w.tobytes(): matched.scores(w) for w in self._weights}

    def _summarize(self, keys: list[tuple[Any, ...]]) -> None:
        """Score the combinations ``keys`` under the selection's weightings, on the worker
        processes; the scores are kept, the matched sets are not."""
        for key, summary in zip(keys, _map_combinations(self, keys, self.processes), strict=True):
            for weights, scores in summary.items():
                self._scores[(key, weights)] = scores
            self._summarized.add(key)

    def _score(self, key: tuple[Any, ...], weights: np.ndarray) -> tuple[float, float]:
        """The scores of combination ``key`` with the images weighted ``weights``, cached:
        nested selection asks for the same image subsets of the same prediction set many
        times."""
        key = self._same(key)
        cache_key = (key, np.asarray(weights, dtype=np.int64).tobytes())
        if cache_key not in self._scores:
            self._scores[cache_key] = self._matched_of(key).scores(weights)
        return self._scores[cache_key]

    # fitting a kind of candidate on weighted images -------------------------------------
    def _best(self, scored: list[tuple[Any, tuple[float, float]]]) -> Any:
        best = max(range(len(scored)), key=lambda n: (_key(scored[n][1], self.metric), -n))  # ties: first
        return scored[best][0]

    def fit(self, kind: str, weights: np.ndarray) -> tuple[Plan, Matched]:
        """The candidate of ``kind`` chosen on the images with weight > 0 (weights = counts)."""
        if kind == "single":
            name = self._best([(n, self._score(("single", n), weights)) for n in self.singles])
            return Plan("single", member=name), self.singles[name]
        if kind.startswith("fold_ensemble:"):
            model = kind.split(":", 1)[1]
            i = self._best([(i, self._score(("fold", model, i), weights)) for i in range(len(self.fold_grid))])
            return Plan("fold_ensemble", model=model, fold_params={model: self.fold_grid[i]}), self._fold_matched(
                model, i
            )
        if kind != "ensemble":
            raise ValueError(f"unknown candidate kind {kind!r}")
        choice = tuple(
            self._best([(i, self._score(("fold", m, i), weights)) for i in range(len(self.fold_grid))])
            for m in self.models
        )
        missing = sorted(  # by skip_box_thr and weights: consecutive ones share fusion's sorted boxes
            {self._same(("ensemble", choice, j)) for j in range(len(self.model_grid))} - self._summarized,
            key=lambda k: (
                self.model_grid[k[2]].get("skip_box_thr", 0.0),
                repr(self.model_grid[k[2]].get("weights")),
                k[2],
            ),
        )
        if missing:  # the chosen fold ensembles fused here once, then inherited by the workers
            self._ensemble_arrays(choice)
        self._summarize(missing)
        j = self._best([(j, self._score(("ensemble", choice, j), weights)) for j in range(len(self.model_grid))])
        plan = Plan(
            "ensemble",
            fold_params={m: self.fold_grid[i] for m, i in zip(self.models, choice, strict=True)},
            model_params=self.model_grid[j],
        )
        return plan, self._ensemble_matched(choice, j)

    def nested(self, kind: str, weights: np.ndarray) -> tuple[Matched, list[Plan]]:
        """Nested selection: for each part, ``kind`` is fitted on the other parts' images and
        predicts that part; the parts' predictions pooled, and the plan of each part."""
        pooled, plans = [], []
        for p in range(self.parts):
            inside = self.part == p
            if not (weights[inside] > 0).any():
                continue
            plan, matched = self.fit(kind, np.where(inside, 0, weights))
            pooled.append(matched.restrict(inside))
            plans.append(plan)
        return Matched.pool(pooled), plans

    def choose(self, weights: np.ndarray) -> tuple[str, dict[str, tuple[float, float]]]:
        """The kind with the best nested estimate on the weighted images (ties: the simpler,
        in the order of :attr:`kinds`), and every kind's nested estimate."""
        estimates = {kind: self.nested(kind, weights)[0].scores(weights) for kind in self.kinds}
        best = max(range(len(self.kinds)), key=lambda n: (_key(estimates[self.kinds[n]], self.metric), -n))
        return self.kinds[best], estimates

    def procedure_nested(self) -> tuple[Matched, list[str]]:
        """The whole choice (every kind fitted, the kind with the best nested estimate kept),
        itself nested: for each part, done on the other parts, predicting that part."""
        ones = np.ones(len(self.part), dtype=np.int64)
        pooled, kinds = [], []
        for p in range(self.parts):
            inside = self.part == p
            weights = np.where(inside, 0, ones)
            kind, _ = self.choose(weights)
            _, matched = self.fit(kind, weights)
            pooled.append(matched.restrict(inside))
            kinds.append(kind)
        return Matched.pool(pooled), kinds

    def search_table(self) -> pd.DataFrame:
        """Every combination of both steps scored on all blend images (in-sample), best first
        per step; the model step fuses the fold ensembles chosen on all blend images."""
        ones = np.ones(len(self.part), dtype=np.int64)
        rows = []
        for m in self.models:
            for i, params in enumerate(self.fold_grid):
                scores = _rounded(self._score(("fold", m, i), ones))
                rows.append({"step": "fold fusion", "model": m, **_row(params), **scores})
        if "ensemble" in self.kinds:
            plan, _ = self.fit("ensemble", ones)
            choice = tuple(self.fold_grid.index(plan.fold_params[m]) for m in self.models)
            for j, params in enumerate(self.model_grid):
                scores = _rounded(self._score(("ensemble", choice, j), ones))
                rows.append({"step": "model fusion", "model": "", **_row(params), **scores})
        table = pd.DataFrame(rows)
        other = "mAP" if self.metric == "mAP50" else "mAP50"
        order = np.lexsort(
            (np.arange(len(table)), -table[other].to_numpy(), -table[self.metric].to_numpy(), table.step.to_numpy())
        )
        return table.iloc[order].reset_index(drop=True)


def _first_alike(combos: list[dict[str, Any]]) -> list[int]:
    """Per combination, the index of the first one with the same effective fusion parameters."""
    first: dict[str, int] = {}
    return [first.setdefault(repr(sorted(effective_params(c).items())), i) for i, c in enumerate(combos)]


def _row(params: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if k == "weights" else v for k, v in params.items()}


def _scores(matched: Matched, weights: np.ndarray | None = None) -> dict[str, float]:
    return _rounded(matched.scores(weights))


def _rounded(scores: tuple[float, float]) -> dict[str, float]:
    m_ap, m_ap50 = scores
    return {"mAP": round(m_ap, 6), "mAP50": round(m_ap50, 6)}


def select_on_blend(selector: BlendSelector, samples: int = BOOTSTRAP_SAMPLES, seed: int = 42) -> dict[str, Any]:
    """Choose the delivered candidate on the blend split and say how good it is, honestly.

    Per kind of candidate: its plan fitted on all blend images with the in-sample score (the
    optimistic number: chosen and scored on the same images) and the nested estimate (chosen
    on the other parts, scored on the held-out part, pooled) with its bootstrap interval.
    The delivered kind is the one with the best nested estimate; the whole choice is nested
    once more for its honest estimate; the paired bootstrap interval of the difference is
    against the best single model (nested too: the single model is also a choice).
    """
    n = len(selector.part)
    ones = np.ones(n, dtype=np.int64)
    counts = bootstrap_counts(n, samples, seed)
    winner, _ = selector.choose(ones)
    candidates: dict[str, Any] = {}
    nested_boot: dict[str, np.ndarray] = {}
    for kind in selector.kinds:
        plan, matched = selector.fit(kind, ones)
        pooled, plans = selector.nested(kind, ones)
        boot = bootstrap_scores(pooled, counts, selector.processes)
        nested_boot[kind] = boot
        candidates[kind] = {
            "label": kind_label(kind),
            "plan": plan.to_dict(),
            "description": plan.describe(),
            "in_sample": _scores(matched),
            "nested": {
                **_scores(pooled),
                "mAP_ci95": interval(boot[:, 0]),
                "mAP50_ci95": interval(boot[:, 1]),
                "plans_per_part": [p.describe() for p in plans],
            },
        }
        log.info(
            "blend: %s: in-sample %s, nested %s",
            kind_label(kind),
            candidates[kind]["in_sample"],
            {k: candidates[kind]["nested"][k] for k in ("mAP", "mAP50")},
        )
    procedure, kinds_per_part = selector.procedure_nested()
    proc_boot = bootstrap_scores(procedure, counts, selector.processes)
    diff = proc_boot - nested_boot["single"]
    single = candidates["single"]["nested"]
    proc = _scores(procedure)
    return {
        "metric": selector.metric,
        "blend_images": n,
        "nested_parts": selector.parts,
        "bootstrap_samples": samples,
        "seed": seed,
        "kinds": selector.kinds,
        "singles": {name: _scores(m) for name, m in selector.singles.items()},
        "part_image_ids": [selector.evaluator.img_ids[selector.part == p].tolist() for p in range(selector.parts)],
        "candidates": candidates,
        "delivered": {
            "kind": winner,
            "label": kind_label(winner),
            "plan": candidates[winner]["plan"],
            "description": candidates[winner]["description"],
            "why": f"best nested {selector.metric} on the blend split of {len(selector.kinds)} kinds of candidate ("
            + ", ".join(f"{kind_label(k)} {candidates[k]['nested'][selector.metric]:.4f}" for k in selector.kinds)
            + ")",
            "honest": {
                **proc,
                "mAP_ci95": interval(proc_boot[:, 0]),
                "mAP50_ci95": interval(proc_boot[:, 1]),
                "kinds_per_part": [kind_label(k) for k in kinds_per_part],
            },
            "vs_best_single": {
                "mAP": round(proc["mAP"] - single["mAP"], 6),
                "mAP50": round(proc["mAP50"] - single["mAP50"], 6),
                "mAP_ci95": interval(diff[:, 0]),
                "mAP50_ci95": interval(diff[:, 1]),
            },
        },
    }


def apply_plan(
    plan: Plan,
    fold_preds: dict[str, list[Member]],
    external: dict[str, Member],
    images: Sequence[dict[str, Any]],
    max_per_img: int = 100,
    untuned_external: dict[str, Member] | None = None,
) -> Detections:
    """The plan's predictions on other images (the test set): the same members, the same
    parameters. External models without blend predictions (``untuned_external``) join the
    model ensemble only, with weight 1."""
    if plan.kind == "single":
        name = str(plan.member)
        if name in external:
            return as_detections(external[name])
        model, _, fold = name.rpartition("/fold")
        return as_detections(fold_preds[model][int(fold)])
    if plan.kind == "fold_ensemble":
        model = str(plan.model)
        return fuse_members(fold_preds[model], images, plan.fold_params[model], max_per_img)
    members: list[Member] = [
        fuse_members(fold_preds[m], images, plan.fold_params[m], max_per_img) for m in sorted(fold_preds)
    ]
    members += [external[name] for name in external]
    params = dict(plan.model_params or {})
    extra = list((untuned_external or {}).values())
    if extra and "weights" in params:
        params["weights"] = list(params["weights"]) + [1.0] * len(extra)
    return fuse_members(members + extra, images, params, max_per_img)
