"""The choice on the blend split (images no fold model trained on, so every fold model's
predictions there are clean): each kind of candidate fitted on weighted images, nested
selection, the delivered kind, and honest estimates with bootstrap intervals. Fusion and
matching are done once per combination by :class:`detfold.ensemble.search.Search`; a fit on
some images is a weighting.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from detfold.core.coco import Coco, Detections
from detfold.ensemble.fusion import Member
from detfold.ensemble.plan import (
    FOLD_ENSEMBLE,
    MODEL_ENSEMBLE,
    SINGLE,
    Plan,
    apply_plan,
    fold_grid,
    kind_label,
    model_grid,
)
from detfold.ensemble.search import FoldKey, ModelKey, Scores, Search, SingleKey
from detfold.evaluate.cocoeval import Matched
from detfold.evaluate.stats import NESTED_PARTS, bootstrap_counts, bootstrap_scores, intervals, nested_parts

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class BlendChoice:
    """What the choice on the blend split writes."""

    selection: dict[str, Any]  # every candidate's estimates and the delivered one (selection.json)
    best: dict[str, Any]  # the delivered plan, its kind, the metric (best.json)
    search: pd.DataFrame  # every combination of both fusion steps, scored in-sample (search.csv)
    predictions: Detections  # the delivered plan's predictions on the blend images


def choose_on_blend(
    gt: Coco,
    fold_preds: Mapping[str, Sequence[Member]],
    external: Mapping[str, Member],
    settings: dict[str, Any],
    seed: int,
    processes: int = 1,
) -> BlendChoice:
    """Choose what is delivered on the blend split ``gt`` (:func:`select_on_blend`);
    ``settings``: the resolved ``ensemble`` config. The search runs on ``processes`` processes,
    with the serial results."""
    selector = BlendSelector(gt, fold_preds, external, settings, seed=seed, processes=processes)
    selection = select_on_blend(selector, int(settings["bootstrap_samples"]), seed)
    d = selection["delivered"]
    plan = Plan(**d["plan"])
    fused = selector.plan_predictions(plan)  # the search's own fusions: what apply_plan gives (test)
    if fused is None:
        fused = apply_plan(plan, fold_preds, external, gt.images, selector.max_per_img)
    metric = selector.metric
    log.info(
        "delivered: %s; honest (nested) blend %s %.4f %s; vs best single model %+.4f %s",
        d["description"],
        metric,
        d["honest"][metric],
        d["honest"][f"{metric}_ci95"],
        d["vs_best_single"][metric],
        d["vs_best_single"][f"{metric}_ci95"],
    )
    best = {"plan": plan.to_dict(), "kind": d["kind"], "metric": metric}
    return BlendChoice(selection, best, selector.search_table(), fused)


def selection_weights(part: np.ndarray) -> list[np.ndarray]:
    """The image weights selection fits on (:func:`select_on_blend`): all images, every part
    left out, every two parts left out (the nested selection of the whole procedure)."""
    n_parts = int(part.max()) + 1 if len(part) else 0
    left_out = [(p,) for p in range(n_parts)] + list(itertools.combinations(range(n_parts), 2))
    return [np.ones(len(part), dtype=np.int64)] + [(~np.isin(part, out)).astype(np.int64) for out in left_out]


class BlendSelector:
    """Every kind of candidate fitted on weighted blend images, nested and chosen.

    ``fold_preds``: per model its K fold models' predictions on the blend images;
    ``external``: per external model its predictions there; ``settings``: the resolved
    ``ensemble`` config (search grid and metric, fold fusion, max_per_img).
    """

    def __init__(
        self,
        gt: Coco,
        fold_preds: Mapping[str, Sequence[Member]],
        external: Mapping[str, Member],
        settings: dict[str, Any],
        seed: int = 42,
        processes: int = 1,
    ) -> None:
        self.metric = settings["search"]["metric"]
        self.max_per_img = int(settings["max_per_img"])
        self.parts = NESTED_PARTS
        self.part = nested_parts(gt.image_ids, self.parts, seed)  # per image, in sorted id order
        grids = fold_grid(settings), model_grid(settings, len(fold_preds) + len(external))
        weightings = selection_weights(self.part)
        self.search = Search(gt, fold_preds, external, *grids, self.max_per_img, weightings, processes)
        self.search.summarize_folds()
        # the kinds of candidate, simplest first (ties go to the simpler)
        self.kinds = [SINGLE] + [f"{FOLD_ENSEMBLE}:{m}" for m in self.search.models]
        if len(fold_preds) + len(external) > 1:
            self.kinds.append(MODEL_ENSEMBLE)

    def _best(self, scored: Sequence[tuple[T, Scores]]) -> T:
        """The best scored item by the metric (ties: the first)."""
        best = max(range(len(scored)), key=lambda n: (_key(scored[n][1], self.metric), -n))
        return scored[best][0]

    def _best_fold(self, model: str, weights: np.ndarray) -> int:
        """The fold-grid entry that fuses ``model``'s fold models best on the weighted images."""
        combos = range(len(self.search.fold_grid))
        return self._best([(i, self.search.score(FoldKey(model, i), weights)) for i in combos])

    def fit(self, kind: str, weights: np.ndarray) -> tuple[Plan, Matched]:
        """The candidate of ``kind`` chosen on the images with weight > 0 (weights = counts)."""
        search = self.search
        if kind == SINGLE:
            name = self._best([(n, search.score(SingleKey(n), weights)) for n in search.singles])
            return Plan(SINGLE, member=name), search.singles[name]
        if kind.startswith(f"{FOLD_ENSEMBLE}:"):
            model = kind.split(":", 1)[1]
            i = self._best_fold(model, weights)
            plan = Plan(FOLD_ENSEMBLE, model=model, fold_params={model: search.fold_grid[i]})
            return plan, search.matched(FoldKey(model, i))
        if kind != MODEL_ENSEMBLE:
            raise ValueError(f"unknown candidate kind {kind!r}")
        choice = tuple(self._best_fold(m, weights) for m in search.models)
        search.summarize_models(choice)
        combos = range(len(search.model_grid))
        j = self._best([(j, search.score(ModelKey(choice, j), weights)) for j in combos])
        plan = Plan(
            MODEL_ENSEMBLE,
            fold_params={m: search.fold_grid[i] for m, i in zip(search.models, choice, strict=True)},
            model_params=search.model_grid[j],
        )
        return plan, search.matched(ModelKey(choice, j))

    def _nested(self, fit: Callable[[np.ndarray], tuple[T, Matched]], weights: np.ndarray) -> tuple[Matched, list[T]]:
        """For each part with weight: ``fit`` on the other parts' images, predicting that part;
        the parts' predictions pooled, and what each fit chose."""
        pooled, chosen = [], []
        for p in range(self.parts):
            inside = self.part == p
            if (weights[inside] > 0).any():
                choice, matched = fit(np.where(inside, 0, weights))
                pooled.append(matched.restrict(inside))
                chosen.append(choice)
        return Matched.pool(pooled), chosen

    def nested(self, kind: str, weights: np.ndarray) -> tuple[Matched, list[Plan]]:
        """Nested selection of ``kind``: its pooled predictions and the plan of each part."""
        return self._nested(lambda w: self.fit(kind, w), weights)

    def choose(self, weights: np.ndarray) -> str:
        """The kind with the best nested estimate on the weighted images (ties: the simpler)."""
        return self._best([(kind, self.nested(kind, weights)[0].scores(weights)) for kind in self.kinds])

    def procedure_nested(self) -> tuple[Matched, list[str]]:
        """The whole choice (every kind fitted, the kind with the best nested estimate kept),
        itself nested: its pooled predictions and the kind chosen for each part."""

        def choose_and_fit(weights: np.ndarray) -> tuple[str, Matched]:
            kind = self.choose(weights)
            return kind, self.fit(kind, weights)[1]

        return self._nested(choose_and_fit, np.ones(len(self.part), dtype=np.int64))

    def search_table(self) -> pd.DataFrame:
        """Every combination of both steps scored on all blend images (in-sample), best first
        per step; the model step fuses the fold ensembles chosen on all blend images."""
        search, ones = self.search, np.ones(len(self.part), dtype=np.int64)
        rows = []
        for m in search.models:
            for i, params in enumerate(search.fold_grid):
                scores = _rounded(search.score(FoldKey(m, i), ones))
                rows.append({"step": "fold fusion", "model": m, **_row(params), **scores})
        if MODEL_ENSEMBLE in self.kinds:
            choice = self._fold_choice(self.fit(MODEL_ENSEMBLE, ones)[0])
            for j, params in enumerate(search.model_grid):
                scores = _rounded(search.score(ModelKey(choice, j), ones))
                rows.append({"step": "model fusion", "model": "", **_row(params), **scores})
        other = "mAP" if self.metric == "mAP50" else "mAP50"
        return pd.DataFrame(rows).sort_values(
            ["step", self.metric, other], ascending=[True, False, False], kind="stable", ignore_index=True
        )

    def _fold_choice(self, plan: Plan) -> tuple[int, ...]:
        return tuple(self.search.fold_grid.index(plan.fold_params[m]) for m in self.search.models)

    def plan_predictions(self, plan: Plan) -> Detections | None:
        """What :func:`apply_plan` gives for ``plan`` on the blend images, from the fusions the
        search keeps; None for a single model, or a fold ensemble of one fold."""
        search = self.search
        if plan.kind == SINGLE or not search.fuses_folds:
            return None
        if plan.kind == FOLD_ENSEMBLE:
            model = str(plan.model)
            return search.fused(FoldKey(model, search.fold_grid.index(plan.fold_params[model])))
        return search.fused(ModelKey(self._fold_choice(plan), search.model_grid.index(plan.model_params or {})))


def _key(scores: Scores, metric: str) -> Scores:
    m_ap, m_ap50 = (round(v, 9) for v in scores)
    return (m_ap50, m_ap) if metric == "mAP50" else (m_ap, m_ap50)


def _row(params: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if k == "weights" else v for k, v in params.items()}


def _rounded(scores: Scores) -> dict[str, float]:
    return {"mAP": round(scores[0], 6), "mAP50": round(scores[1], 6)}


def select_on_blend(selector: BlendSelector, samples: int, seed: int = 42) -> dict[str, Any]:
    """Choose the delivered candidate on the blend split and say how good it is, honestly
    (selection.json). Per kind of candidate: its plan fitted on all blend images, the in-sample
    score (optimistic) and the nested estimate with its bootstrap interval (``samples``
    resamples of the images, seeded). The kind with the best nested estimate is delivered; the
    whole choice is nested once more for its honest estimate, also paired against the best
    single model (nested too: the single model is also a choice)."""
    n, ids = len(selector.part), selector.search.evaluator.img_ids
    counts = bootstrap_counts(n, samples, seed)
    winner = selector.choose(np.ones(n, dtype=np.int64))
    candidates: dict[str, Any] = {}
    nested_boot: dict[str, np.ndarray] = {}
    for kind in selector.kinds:
        candidates[kind], nested_boot[kind] = _candidate(selector, kind, counts)
    procedure, kinds_per_part = selector.procedure_nested()
    proc_boot = bootstrap_scores(procedure, counts, selector.search.processes)
    proc, single = _rounded(procedure.scores()), candidates[SINGLE]["nested"]
    metric, kinds = selector.metric, selector.kinds
    why = ", ".join(f"{kind_label(k)} {candidates[k]['nested'][metric]:.4f}" for k in kinds)
    return {
        "metric": metric,
        "blend_images": n,
        "nested_parts": selector.parts,
        "bootstrap_samples": samples,
        "seed": seed,
        "kinds": kinds,
        "singles": {name: _rounded(m.scores()) for name, m in selector.search.singles.items()},
        "part_image_ids": [ids[selector.part == p].tolist() for p in range(selector.parts)],
        "candidates": candidates,
        "delivered": {
            "kind": winner,
            "label": kind_label(winner),
            "plan": candidates[winner]["plan"],
            "description": candidates[winner]["description"],
            "why": f"best nested {metric} on the blend split of {len(kinds)} kinds of candidate ({why})",
            "honest": {**proc, **intervals(proc_boot), "kinds_per_part": [kind_label(k) for k in kinds_per_part]},
            "vs_best_single": {
                **{k: round(proc[k] - single[k], 6) for k in ("mAP", "mAP50")},
                **intervals(proc_boot - nested_boot[SINGLE]),
            },
        },
    }


def _candidate(selector: BlendSelector, kind: str, counts: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """One kind's entry of the selection (its plan on all blend images, in-sample and nested
    scores, the nested estimate's interval) and its nested bootstrap scores [samples, 2]."""
    ones = np.ones(len(selector.part), dtype=np.int64)
    plan, matched = selector.fit(kind, ones)
    pooled, plans = selector.nested(kind, ones)
    boot = bootstrap_scores(pooled, counts, selector.search.processes)
    in_sample, nested = _rounded(matched.scores()), _rounded(pooled.scores())
    log.info("blend: %s: in-sample %s, nested %s", kind_label(kind), in_sample, nested)
    entry = {
        "label": kind_label(kind),
        "plan": plan.to_dict(),
        "description": plan.describe(),
        "in_sample": in_sample,
        "nested": {**nested, **intervals(boot), "plans_per_part": [p.describe() for p in plans]},
    }
    return entry, boot
