"""The search engine of the blend-split choice: every fusion parameter combination fused and
matched once on all blend images (:class:`detfold.evaluate.cocoeval.Matched`), then scored under
any weighting of the images: subsets and resamples of the images are weights, which is what
makes nested selection affordable. Combinations that fuse alike
(:func:`detfold.ensemble.fusion.effective_params`) share one key.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from detfold.core.coco import Coco, Detections
from detfold.ensemble.fusion import Columns, Member, ResultArrays, as_detections, effective_params
from detfold.evaluate.cocoeval import BboxEvaluator, Matched

log = logging.getLogger(__name__)

Scores = tuple[float, float]  # (mAP, mAP50)


@dataclass(frozen=True)
class SingleKey:
    """One member as it is: "model/foldK" or an external model's name."""

    member: str


@dataclass(frozen=True)
class FoldKey:
    """``model``'s fold models fused with fold-grid entry ``combo``."""

    model: str
    combo: int


@dataclass(frozen=True)
class ModelKey:
    """The fold ensembles (per model, in name order, its fold-grid entry) and the external
    models fused with model-grid entry ``combo``."""

    fold_choice: tuple[int, ...]
    combo: int


Key = SingleKey | FoldKey | ModelKey
K = TypeVar("K", bound=Key)


class Search:
    """The fused and matched prediction sets of every combination on the blend images of ``gt``.

    ``fold_preds``: per model its K fold models' predictions; ``external``: per external model
    its predictions; ``fold_grid`` / ``model_grid``: the parameter combinations of the two
    fusion steps; ``weightings``: the image weights a selection will ask for: each combination is
    scored under all of them at once (on ``processes`` forked processes) and only its scores
    are kept, with the matched sets of the combinations a fit returns (all combinations' sets
    together would not fit in memory at scale).
    """

    def __init__(
        self,
        gt: Coco,
        fold_preds: Mapping[str, Sequence[Member]],
        external: Mapping[str, Member],
        fold_grid: list[dict[str, Any]],
        model_grid: list[dict[str, Any]],
        max_per_img: int,
        weightings: list[np.ndarray],
        processes: int = 1,
    ) -> None:
        self.evaluator = BboxEvaluator(gt.data)
        self.models = sorted(fold_preds)
        self.external = {name: as_detections(preds) for name, preds in external.items()}
        self.fold_grid, self.model_grid, self.max_per_img = fold_grid, model_grid, max_per_img
        self.weightings, self.processes = weightings, max(1, int(processes))
        folds = {f"{m}/fold{k}": preds for m in self.models for k, preds in enumerate(fold_preds[m])}
        self.singles = {name: self.evaluator.match_results(p) for name, p in {**folds, **self.external}.items()}
        self._arrays = {m: ResultArrays.of([as_detections(p) for p in fold_preds[m]], gt.images) for m in self.models}
        self._external_columns = ResultArrays.of(list(self.external.values()), gt.images).member_columns()
        self._fused: dict[FoldKey, Columns] = {}  # the fold ensembles the model step fuses again and again
        self._members_of: tuple[tuple[int, ...], ResultArrays] | None = None
        self._sorted_of: ResultArrays | None = None  # the member set whose sorted boxes are kept
        self._prepared: dict[Any, Any] = {}  # its sorted boxes (fuse_arrays' cache)
        self._matched: dict[Key, Matched] = {}
        self._scores: dict[Key, dict[bytes, Scores]] = {}
        self._summarized: set[Key] = set()
        # combinations that fuse alike (e.g. gaussian soft-NMS at every iou_thr) computed once
        self._fold_same = _first_alike(self.fold_grid)
        self._model_same = _first_alike(self.model_grid)

    @property
    def fuses_folds(self) -> bool:
        """Whether every model has several fold models (else its fold ensemble is itself)."""
        return all(self._arrays[m].n_models > 1 for m in self.models)

    def same(self, key: K) -> K:
        """The key of the first combination that fuses like ``key`` (its results are shared)."""
        if isinstance(key, FoldKey):
            return replace(key, combo=self._fold_same[key.combo])
        if isinstance(key, ModelKey):
            fold_choice = tuple(self._fold_same[i] for i in key.fold_choice)
            return replace(key, fold_choice=fold_choice, combo=self._model_same[key.combo])
        return key

    def score(self, key: Key, weights: np.ndarray) -> Scores:
        """The scores of combination ``key`` with the images weighted ``weights``, cached:
        nested selection asks for the same image subsets of the same prediction set many times."""
        key = self.same(key)
        weights_key = np.asarray(weights, dtype=np.int64).tobytes()
        scores = self._scores.setdefault(key, {})
        if weights_key not in scores:
            scores[weights_key] = self.matched(key).scores(weights)
        return scores[weights_key]

    def matched(self, key: Key) -> Matched:
        """The matched prediction set of ``key``, kept."""
        key = self.same(key)
        if key not in self._matched:
            self._matched[key] = self._compute(key)
        return self._matched[key]

    def summarize_folds(self) -> None:
        """Score every fold-fusion combination of every model under the weightings."""
        self._summarize({self.same(FoldKey(m, i)) for m in self.models for i in range(len(self.fold_grid))})
        for m in self.models:
            log.info("blend: %s fold fusion, %d combinations matched", m, len(self.fold_grid))

    def summarize_models(self, fold_choice: tuple[int, ...]) -> None:
        """Score every model-fusion combination of the fold ensembles ``fold_choice`` under the
        weightings (those not scored yet)."""
        keys = {self.same(ModelKey(fold_choice, j)) for j in range(len(self.model_grid))} - self._summarized
        if keys:
            self._model_members(fold_choice)  # the fold ensembles fused here once, then inherited by the workers
            self._summarize(keys)

    def _summarize(self, keys: Collection[FoldKey | ModelKey]) -> None:
        """Score the combinations ``keys`` under the weightings, on the worker processes; the
        scores are kept, the matched sets are not."""

        def order(key: FoldKey | ModelKey) -> tuple[str, float, str, int]:  # neighbours share fusion's sorted boxes
            params = self._params(key)
            model = key.model if isinstance(key, FoldKey) else ""
            return model, params.get("skip_box_thr", 0.0), repr(params.get("weights")), key.combo

        ordered = sorted(keys, key=order)
        for key, summary in zip(ordered, map_forked(self._summary, ordered, self.processes), strict=True):
            self._scores.setdefault(key, {}).update(summary)
            self._summarized.add(key)

    def _summary(self, key: Key) -> dict[bytes, Scores]:
        """The scores of one combination under every weighting (in a worker process)."""
        matched = self._compute(key)
        return {w.tobytes(): matched.scores(w) for w in self.weightings}

    def _compute(self, key: Key) -> Matched:
        """The matched prediction set of a combination key, computed (not kept)."""
        if isinstance(key, SingleKey):
            return self.singles[key.member]
        images, labels, xywh, scores = self._columns(key)
        cat = self.evaluator.category_positions(labels)
        return self.evaluator.match(images, cat, xywh, scores, by_image_and_score=True)  # as fusion returns them

    def fused(self, key: FoldKey | ModelKey) -> Detections:
        """The fused predictions of ``key`` on the blend images."""
        images, labels, xywh, scores = self._columns(self.same(key))
        return Detections(self.evaluator.img_ids[images], np.asarray(labels, dtype=np.int64), xywh, scores)

    def _params(self, key: FoldKey | ModelKey) -> dict[str, Any]:
        return self.fold_grid[key.combo] if isinstance(key, FoldKey) else self.model_grid[key.combo]

    def _columns(self, key: FoldKey | ModelKey) -> Columns:
        """The fused predictions of a combination key (of the first alike)."""
        if isinstance(key, FoldKey):
            return self._fused.get(key) or self._fuse(self._arrays[key.model], self._params(key))
        return self._fuse(self._model_members(key.fold_choice), self._params(key))

    def _fuse(self, arrays: ResultArrays, params: dict[str, Any]) -> Columns:
        """``arrays`` fused with ``params``, reusing the sorted boxes of the previous call on the
        same arrays (one sorted copy per process, not one per member set: each is as large)."""
        if arrays is not self._sorted_of:
            self._prepared.clear()
            self._sorted_of = arrays
        return arrays.fuse(self.max_per_img, self._prepared, **params)

    def _model_members(self, fold_choice: tuple[int, ...]) -> ResultArrays:
        """The model step's members (the chosen fold ensembles, the external models) as one
        :class:`ResultArrays`, kept for the latest fold choice."""
        fold_choice = tuple(self._fold_same[i] for i in fold_choice)
        if self._members_of is None or self._members_of[0] != fold_choice:
            keys = [FoldKey(m, i) for m, i in zip(self.models, fold_choice, strict=True)]
            self._fused.update({key: self._columns(key) for key in keys})
            sets = [self._fused[key] for key in keys] + self._external_columns
            wh = self._arrays[self.models[0]].wh
            self._members_of = (fold_choice, ResultArrays(self.evaluator.img_ids, wh, sets))
        return self._members_of[1]


def _first_alike(combos: list[dict[str, Any]]) -> list[int]:
    """Per combination, the index of the first one with the same effective fusion parameters."""
    first: dict[str, int] = {}
    return [first.setdefault(repr(sorted(effective_params(c).items())), i) for i, c in enumerate(combos)]


T = TypeVar("T")
R = TypeVar("R")


def map_forked(function: Callable[[T], R], items: Sequence[T], processes: int) -> list[R]:
    """``function`` over ``items`` on ``processes`` forked processes, each with its share of
    the items in order (consecutive items share caches); ``function`` and what it reaches are
    inherited (copy on write), only the results are sent back. With deterministic work the
    results are those of the serial loop, in the same order."""
    processes = min(processes, len(items))
    if processes <= 1:
        return [function(item) for item in items]
    context = multiprocessing.get_context("fork")
    size = math.ceil(len(items) / processes)
    receivers, workers = [], []
    for start in range(0, len(items), size):
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(target=_run_share, args=(function, items[start : start + size], sender))
        worker.start()
        sender.close()
        receivers.append(receiver)
        workers.append(worker)
    try:
        outcomes = [receiver.recv() for receiver in receivers]
    finally:
        for worker in workers:
            worker.join()
    results: list[R] = []
    for ok, value in outcomes:
        if not ok:
            raise value
        results += value
    return results


def _run_share(function: Callable[[T], R], share: Sequence[T], sender: Any) -> None:  # in a forked worker
    try:
        sender.send((True, [function(item) for item in share]))
    except Exception as err:  # sent back and raised there
        sender.send((False, err))
    finally:
        sender.close()
