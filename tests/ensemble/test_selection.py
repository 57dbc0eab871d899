"""Choosing on the blend split: nested selection on disjoint images, bootstrap intervals,
one-member fusion as the identity, and a delivery that is never a fusion that lost."""

import json

import numpy as np
import pytest
from detfold.core.config import with_defaults
from detfold.ensemble import plan, selection
from detfold.ensemble.fusion import ResultArrays, as_detections, fuse_members
from detfold.evaluate import stats
from detfold.evaluate.cocoeval import BboxEvaluator, evaluate_bbox
from detfold.evaluate.stage import _pooled_intervals
from helpers.predictions import clean, noisy_member

SEARCH = {"metric": "mAP50", "method": ["wbf", "nms"], "iou_thr": [0.5, 0.7], "conf_type": ["avg", "max"]}
SETTINGS = with_defaults({"ensemble": {"search": SEARCH}})["ensemble"]  # as the rules get it: resolved


def perfect(gt):
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt.annotations
    ]


def matched_of(gt, preds):
    return BboxEvaluator(gt.data).match_results(preds)


def test_weighted_scores_equal_a_plain_evaluation_of_the_subset(bccd_test):
    gt = clean(bccd_test)
    preds = noisy_member(gt, 0)
    matched = matched_of(gt, preds)
    full = evaluate_bbox(gt.data, preds).stats[:2]
    assert matched.scores() == pytest.approx(tuple(full), abs=1e-12)
    ids = sorted(gt.image_ids)[::3]
    sub = gt.subset(ids)
    expected = evaluate_bbox(sub.data, [p for p in preds if p["image_id"] in set(ids)]).stats[:2]
    weights = np.isin(sorted(gt.image_ids), ids).astype(int)
    assert matched.scores(weights) == pytest.approx(tuple(expected), abs=1e-12)


def test_bootstrap_interval_of_a_perfect_prediction_is_one_one(bccd_test):
    gt = clean(bccd_test)
    boot = stats.bootstrap_scores(matched_of(gt, perfect(gt)), stats.bootstrap_counts(len(gt.images), 200, 42))
    assert stats.interval(boot[:, 0]) == [1.0, 1.0]
    assert stats.interval(boot[:, 1]) == [1.0, 1.0]
    assert _pooled_intervals(gt, perfect(gt), seed=42)["mAP50_ci95"] == [1.0, 1.0]


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded(bccd_test):
    gt = clean(bccd_test)
    preds = noisy_member(gt, 1)
    first, again = _pooled_intervals(gt, preds, seed=7), _pooled_intervals(gt, preds, seed=7)
    assert first == again
    value = evaluate_bbox(gt.data, preds).stats[1]
    lo, hi = first["mAP50_ci95"]
    assert lo < value < hi and hi - lo > 0.01


def test_one_member_fusion_returns_its_input_unchanged(bccd_test):
    gt = clean(bccd_test)
    preds = noisy_member(gt, 2)
    for params in ({"method": "wbf", "iou_thr": 0.55, "conf_type": "avg"}, {"method": "nms", "iou_thr": 0.5}):
        assert fuse_members([preds], gt.images, params, 100).to_results() == preds
    one_model = plan.Plan(
        "model_ensemble", fold_params={"a": {"method": "nms", "iou_thr": 0.5}}, model_params={"method": "wbf"}
    )
    one_fold = {"a": [preds]}
    assert plan.apply_plan(one_model, one_fold, {}, gt.images, 100).to_results() == preds


def test_nested_selection_fits_on_other_images_than_it_scores(bccd_test, monkeypatch):
    gt = clean(bccd_test)
    folds = {"a": [noisy_member(gt, s) for s in range(3)]}
    selector = selection.BlendSelector(gt, folds, {}, SETTINGS, seed=3)
    ids = selector.search.evaluator.img_ids
    part_ids = [set(ids[selector.part == p].tolist()) for p in range(selector.parts)]
    assert set().union(*part_ids) == set(gt.image_ids)
    assert sum(len(p) for p in part_ids) == len(gt.images)  # disjoint
    seen = []
    fit = selector.fit

    def spy(kind, weights):
        seen.append(set(ids[weights > 0].tolist()))
        return fit(kind, weights)

    monkeypatch.setattr(selector, "fit", spy)
    pooled, plans = selector.nested("fold_ensemble:a", np.ones(len(ids), dtype=np.int64))
    assert len(plans) == len(seen) == selector.parts
    for fitted, held in zip(seen, part_ids, strict=True):
        assert fitted.isdisjoint(held) and fitted | held == set(gt.image_ids)
    # the pooled predictions of each part come from the plan fitted without it
    assert set(ids[np.unique(pooled.img)].tolist()) <= set(gt.image_ids)
    seen.clear()
    chosen_on = []
    choose = selector.choose

    def spy_choose(weights):
        chosen_on.append(set(ids[weights > 0].tolist()))
        seen.append("choose")
        return choose(weights)

    monkeypatch.setattr(selector, "choose", spy_choose)
    selector.procedure_nested()  # the whole choice, nested: every inner fit avoids the outer part too
    assert [set(gt.image_ids) - c for c in chosen_on] == part_ids
    outer = -1
    for event in seen:
        if event == "choose":
            outer += 1
        else:
            assert event.isdisjoint(part_ids[outer]), outer


def test_selection_records_disjoint_parts_and_is_byte_reproducible(bccd_test):
    gt = clean(bccd_test)
    folds = {"a": [noisy_member(gt, s) for s in range(3)]}
    runs = [
        json.dumps(selection.select_on_blend(selection.BlendSelector(gt, folds, {}, SETTINGS, seed=5), 100, 5))
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    parts = json.loads(runs[0])["part_image_ids"]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == sorted(gt.image_ids) and len(flat) == len(set(flat))


def test_search_on_two_processes_equals_the_serial_search(bccd_test):
    """The combinations fused and matched on 2 forked processes give the serial results:
    the same selection (byte for byte) and the same search table, for two models (so the model
    step's combinations run in the workers too)."""
    gt = clean(bccd_test)
    folds = {"a": [noisy_member(gt, s) for s in range(3)], "b": [noisy_member(gt, s + 10) for s in range(3)]}
    out = {}
    for processes in (1, 2):
        selector = selection.BlendSelector(gt, folds, {}, SETTINGS, seed=5, processes=processes)
        out[processes] = (json.dumps(selection.select_on_blend(selector, 50, 5)), selector.search_table())
    assert out[1][0] == out[2][0]
    assert out[1][1].equals(out[2][1])


def test_fusion_of_independent_fold_models_is_delivered_and_beats_each(bccd_test):
    gt = clean(bccd_test)
    folds = {"a": [noisy_member(gt, s, drop=0.35, jitter=3.0) for s in range(3)]}
    result = selection.select_on_blend(selection.BlendSelector(gt, folds, {}, SETTINGS, seed=1), 200, 1)
    d = result["delivered"]
    assert d["kind"] == "fold_ensemble:a"
    assert d["honest"]["mAP50"] > max(s["mAP50"] for s in result["singles"].values())
    assert d["vs_best_single"]["mAP50_ci95"][0] > 0  # the gain is larger than its noise
    nested, in_sample = (
        result["candidates"]["fold_ensemble:a"]["nested"],
        result["candidates"]["fold_ensemble:a"]["in_sample"],
    )
    assert nested["mAP50"] <= in_sample["mAP50"] + 1e-9  # the optimistic number is the larger


def test_a_single_model_is_delivered_when_fusing_only_loses(bccd_test):
    gt = clean(bccd_test)
    good = noisy_member(gt, 0, drop=0.05, jitter=0.5)
    rng = np.random.default_rng(0)
    junk = [
        {
            "image_id": im["id"],
            "category_id": int(rng.choice(gt.category_ids)),
            "bbox": [float(v) for v in rng.uniform([0, 0, 5, 5], [200, 150, 60, 60])],
            "score": float(rng.uniform(0.5, 1)),
        }
        for im in gt.images
        for _ in range(30)
    ]
    result = selection.select_on_blend(selection.BlendSelector(gt, {"a": [junk, good, junk]}, {}, SETTINGS), 100)
    assert result["delivered"]["kind"] == "single"
    assert result["delivered"]["plan"] == {"kind": "single", "member": "a/fold1"}
    delivered = plan.apply_plan(plan.Plan(**result["delivered"]["plan"]), {"a": [junk, good, junk]}, {}, gt.images, 100)
    assert delivered.to_results() == good


def test_fixed_fold_fusion_is_the_only_one_tried():
    assert plan.fold_grid({**SETTINGS, "fold_fusion": {"method": "nms", "iou_thr": 0.6}}) == [
        {"method": "nms", "iou_thr": 0.6, "skip_box_thr": 0.0, "conf_type": "avg"}
    ]
    grid = plan.fold_grid(SETTINGS)
    assert grid[0] == plan.DEFAULT_FOLD_FUSION and len(grid) == 1 + 2 * 2 + 2  # default, wbf x 4, nms x 2
    search = {**SETTINGS["search"], "iou_thr": [0.55]}
    assert len(plan.fold_grid({**SETTINGS, "search": search})) == 2 + 1  # the default is also in the grid: once


def test_alike_combinations_are_fused_once_and_scored_alike(bccd_test):
    """Gaussian soft-NMS ignores iou_thr: its combinations that differ only there are fused and
    matched once, and the search table reports each with the same scores."""
    gt = clean(bccd_test)
    folds = {"a": [noisy_member(gt, s) for s in range(3)]}
    settings = {**SETTINGS, "search": {"metric": "mAP50", "method": ["soft_nms", "nms"], "iou_thr": [0.5, 0.7]}}
    selector = selection.BlendSelector(gt, folds, {}, settings, seed=5)
    computed = {key.combo for key in selector.search._summarized}
    assert len(selector.search.fold_grid) == 5 and len(computed) == 4  # default wbf, soft-NMS once, nms twice
    table = selector.search_table()
    soft = table[(table.step == "fold fusion") & (table.method == "soft_nms")]
    assert len(soft) == 2 and soft[["mAP", "mAP50"]].nunique().max() == 1


def test_bootstrap_on_threads_and_presorted_matching_give_the_same_numbers(bccd_test):
    gt = clean(bccd_test)
    members = [noisy_member(gt, s) for s in range(3)]
    arrays = ResultArrays.of([as_detections(m) for m in members], gt.images)
    images, labels, xywh, scores = arrays.fuse(100, method="wbf", iou_thr=0.55)
    evaluator = BboxEvaluator(gt.data)
    _, cat = evaluator.positions(evaluator.img_ids[images], labels)
    plain = evaluator.match(images, cat, xywh, scores)
    presorted = evaluator.match(images, cat, xywh, scores, by_image_and_score=True)
    for field in ("img", "cat", "score", "matched", "ignored", "gt_counts"):
        assert np.array_equal(getattr(plain, field), getattr(presorted, field)), field
    counts = stats.bootstrap_counts(len(gt.images), 64, 3)
    assert np.array_equal(stats.bootstrap_scores(plain, counts), stats.bootstrap_scores(plain, counts, 2))


def test_the_plan_predictions_kept_by_the_search_are_those_of_apply_plan(bccd_test):
    """run_ensemble_select writes the delivered plan's blend predictions from the search's own
    fusions: for every kind of candidate they are apply_plan's, value for value."""
    gt = clean(bccd_test)
    folds = {"a": [noisy_member(gt, s) for s in range(3)], "b": [noisy_member(gt, s + 10) for s in range(3)]}
    selector = selection.BlendSelector(gt, folds, {}, SETTINGS, seed=5)
    result = selection.select_on_blend(selector, 20, 5)
    assert set(result["candidates"]) == {"single", "fold_ensemble:a", "fold_ensemble:b", "model_ensemble"}
    for kind, candidate in result["candidates"].items():
        chosen = plan.Plan(**candidate["plan"])
        kept = selector.plan_predictions(chosen)
        if kind == "single":
            assert kept is None
            continue
        again = plan.apply_plan(chosen, folds, {}, gt.images, selector.max_per_img)
        assert kept.to_results() == again.to_results() and len(again) > 0
