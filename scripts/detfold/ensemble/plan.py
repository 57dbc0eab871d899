"""What the ensemble stage delivers: a :class:`Plan` (which members, fused how), the kinds of
candidate the choice compares, the fusion parameter grids it searches, and the plan applied to
other images (the test set). Members are detections on the same images.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from detfold.core.coco import Detections
from detfold.ensemble.fusion import Member, as_detections, check_fusion, fuse_members, fusion_params

#: The kinds of candidate, simplest first: one fold model (or external model) alone, one
#: model's K fold models fused (``fold_ensemble:NAME``), every model's fold ensemble fused.
SINGLE, FOLD_ENSEMBLE, MODEL_ENSEMBLE = "single", "fold_ensemble", "model_ensemble"
#: The fusion of fold models when none is configured (also the first combination of the
#: fold-fusion search); a search axis that is not listed takes its value from here.
DEFAULT_FOLD_FUSION: dict[str, Any] = {"method": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"}


@dataclass
class Plan:
    """One way to make the delivered predictions from the members.

    kind ``single``: one fold model (``member`` = "model/foldK") or one external model
    (``member`` = its name), as it is; ``fold_ensemble``: ``model``'s K fold models fused with
    ``fold_params[model]``; ``model_ensemble``: every model's fold ensemble (``fold_params``),
    then those and the external models fused with ``model_params``."""

    kind: str
    member: str | None = None
    model: str | None = None
    fold_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_params: dict[str, Any] | None = None

    def describe(self) -> str:
        if self.kind == SINGLE:
            return f"{self.member}, alone"
        if self.kind == FOLD_ENSEMBLE:
            return f"{self.model} fold ensemble {_short(self.fold_params[str(self.model)])}"
        folds = "; ".join(f"{m} {_short(p)}" for m, p in self.fold_params.items())
        return f"model ensemble {_short(self.model_params or {})} of fold ensembles ({folds})"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


def _short(params: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in params.items() if k != "class_agnostic") + ")"


def kind_label(kind: str) -> str:
    """'single', 'fold_ensemble:NAME' or 'model_ensemble' as words."""
    if kind == SINGLE:
        return "best single model"
    if kind.startswith(f"{FOLD_ENSEMBLE}:"):
        return f"{kind.split(':', 1)[1]} fold ensemble"
    return "model ensemble"


def grid(search: dict[str, Any], n_members: int) -> list[dict[str, Any]]:
    """Every combination of the search lists (an axis not listed: :data:`DEFAULT_FOLD_FUSION`'s
    value); conf_type only varies for WBF; weights are vectors of one weight per member (an
    empty list means equal weights)."""
    axes = {**{k: [v] for k, v in DEFAULT_FOLD_FUSION.items()}, **search}
    weights = search.get("weights") or [None]
    for w in weights:
        if w is not None and len(w) != n_members:
            raise ValueError(f"ensemble.search.weights: {w} has {len(w)} weights for {n_members} members")
    combos = []
    for method in axes["method"]:
        conf_types = axes["conf_type"] if method == "wbf" else [None]
        for conf in conf_types:
            check_fusion(method, conf or DEFAULT_FOLD_FUSION["conf_type"], "ensemble.search")
        for iou, skip, conf, w in itertools.product(axes["iou_thr"], axes["skip_box_thr"], conf_types, weights):
            weight = None if w is None else [float(x) for x in w]
            params = {"method": method, "iou_thr": float(iou), "skip_box_thr": float(skip), "conf_type": conf}
            combos.append({k: v for k, v in {**params, "weights": weight}.items() if v is not None})
    return combos


def fold_grid(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Fold-fusion combinations: with ``fold_fusion: search`` the default fold fusion first,
    then the search grid (equal weights: the K fold models are exchangeable); with fixed
    ``fold_fusion`` settings only those."""
    fixed = settings["fold_fusion"]
    if isinstance(fixed, dict):
        return [fusion_params({**DEFAULT_FOLD_FUSION, **fixed})]
    search = {k: v for k, v in settings["search"].items() if k != "weights"}
    return _unique([dict(DEFAULT_FOLD_FUSION), *grid(search, 1)])


def model_grid(settings: dict[str, Any], n_members: int) -> list[dict[str, Any]]:
    """Model-fusion combinations: the untuned default (``method``, ``iou_thr``, ...) first,
    then the search grid; ``class_agnostic`` applies to all."""
    agnostic = {"class_agnostic": True} if settings["class_agnostic"] else {}
    combos = [fusion_params(settings), *grid(settings["search"], n_members)]
    return _unique([{**c, **agnostic} for c in combos])


def _unique(combos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for c in combos:
        first.setdefault(repr(sorted(c.items())), c)
    return list(first.values())


def apply_plan(
    plan: Plan,
    fold_preds: Mapping[str, Sequence[Member]],
    external: Mapping[str, Member],
    images: Sequence[dict[str, Any]],
    max_per_img: int,
    untuned_external: Mapping[str, Member] | None = None,
) -> Detections:
    """The plan's predictions on other images (the test set): the same members, the same
    parameters. External models without blend predictions (``untuned_external``) join the
    model ensemble only, with weight 1."""
    if plan.kind == SINGLE:
        name = str(plan.member)
        if name in external:
            return as_detections(external[name])
        model, _, fold = name.rpartition("/fold")
        return as_detections(fold_preds[model][int(fold)])
    if plan.kind == FOLD_ENSEMBLE:
        model = str(plan.model)
        return fuse_members(fold_preds[model], images, plan.fold_params[model], max_per_img)
    fused = [fuse_members(fold_preds[m], images, plan.fold_params[m], max_per_img) for m in sorted(fold_preds)]
    extra = list((untuned_external or {}).values())
    params = dict(plan.model_params or {})
    if extra and "weights" in params:
        params["weights"] = list(params["weights"]) + [1.0] * len(extra)
    return fuse_members([*fused, *external.values(), *extra], images, params, max_per_img)
