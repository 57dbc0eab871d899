"""Stage ensemble (workflow/ensemble.smk): what its rule scripts call (read inputs, call the library, write outputs)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from detfold.core.coco import (
    Coco,
    Detections,
    is_labelled,
    load_coco,
    read_detections,
)
from detfold.core.io import atomic_open, read_json, write_json
from detfold.evaluate.metrics import evaluate_coco, headline

log = logging.getLogger(__name__)


def _fold_predictions(gt: Coco, model_files: dict[str, list[str]], processes: int = 1) -> dict[str, list[Detections]]:
    return {name: [read_detections(gt, path) for path in model_files[name]] for name in sorted(model_files)}


def _externals(
    settings: dict[str, Any], split: str, coco: Coco, id_coco: Coco | None = None
) -> tuple[dict[str, Detections], dict[str, Detections]]:
    """External models' predictions on ``coco``'s images: (those with OOF predictions, which
    take part in the choice, and the others, which join the model ensemble untuned). For the
    blend split (``split`` oof) their OOF files are read against ``id_coco`` (all training
    images) and kept on the blend images."""
    from detfold.ensemble import selection

    chosen, untuned = {}, {}
    keep = np.asarray(coco.image_ids, dtype=np.int64)
    for spec in settings.get("external") or []:
        if split == "oof" and not spec.get("oof"):
            continue
        preds = selection.load_external(spec, split, id_coco or coco)
        preds = preds.take(np.isin(preds.image_id, keep))
        (chosen if spec.get("oof") else untuned)[spec["name"]] = preds
    return chosen, untuned


def run_ensemble_select(
    blend_json: str,
    train_json: str,
    model_blend: dict[str, list[str]],
    settings: dict[str, Any],
    seed: int,
    out_search: str,
    out_best: str,
    out_selection: str,
    out_blend: str,
    processes: int = 1,
) -> None:
    """Choose what is delivered, on the blend split (images no fold model trained on).

    Candidates: the best single fold model (or external model), each model's fold ensemble
    (fold fusion tuned), and the model ensemble of the fold ensembles (model fusion tuned too).
    Each is scored in-sample and by nested selection with bootstrap intervals; the kind with
    the best nested estimate is delivered (``out_best``), its whole choice nested once more
    for its honest estimate (``out_selection``). The search's fusion and matching run on
    ``processes`` processes, with the serial results."""
    from detfold.ensemble import selection

    gt = load_coco(blend_json)
    fold_preds = _fold_predictions(gt, model_blend, processes)
    oof_external = any(spec.get("oof") for spec in settings.get("external") or [])
    external, _ = _externals(settings, "oof", gt, load_coco(train_json) if oof_external else None)
    selector = selection.BlendSelector(gt, fold_preds, external, settings, seed=seed, processes=processes)
    selection = selection.select_on_blend(
        selector, samples=int(settings.get("bootstrap_samples", selection.BOOTSTRAP_SAMPLES)), seed=seed
    )
    plan = selection.Plan.from_dict(selection["delivered"]["plan"])
    fused = selector.plan_predictions(plan)  # the search's own fusions: what apply_plan gives (test)
    if fused is None:
        fused = selection.apply_plan(plan, fold_preds, external, gt.images, selector.max_per_img)
    with atomic_open(out_search) as handle:
        selector.search_table().to_csv(handle, index=False, lineterminator="\n")
    write_json(out_blend, fused.to_results())
    write_json(out_selection, selection)
    write_json(out_best, {"plan": plan.to_dict(), "kind": selection["delivered"]["kind"], "metric": selector.metric})
    d = selection["delivered"]
    log.info(
        "delivered: %s; honest (nested) blend %s %.4f %s; vs best single model %+.4f %s",
        d["description"],
        selector.metric,
        d["honest"][selector.metric],
        d["honest"][f"{selector.metric}_ci95"],
        d["vs_best_single"][selector.metric],
        d["vs_best_single"][f"{selector.metric}_ci95"],
    )


def run_ensemble_test(
    test_json: str,
    model_test: dict[str, list[str]],
    settings: dict[str, Any],
    best_json: str,
    selection_json: str,
    seed: int,
    out_preds: str,
    out_metrics: str,
    out_submission: str,
) -> None:
    """The delivered plan applied to the test predictions (``out_preds``, the submission CSV).

    On a labelled test set every single fold model and every candidate (each as chosen on the
    blend split) is scored too, and the delivered predictions get bootstrap intervals, also
    paired against the single fold model that is best on the test set (an after-the-fact
    choice: the hardest comparison). An unlabelled test set is predicted, fused and written."""
    from detfold.ensemble import selection

    test = load_coco(test_json, require_annotations=False)
    max_per_img = int(settings.get("max_per_img", 100))
    fold_preds = _fold_predictions(test, model_test)
    external, untuned = _externals(settings, "test", test)
    best = read_json(best_json)
    plan = selection.Plan.from_dict(best["plan"])
    delivered = selection.apply_plan(plan, fold_preds, external, test.images, max_per_img, untuned)
    write_json(out_preds, delivered.to_results())
    selection.write_submission(delivered, test, out_submission, settings.get("submission_label", "index"))
    metrics: dict[str, Any] = {
        "delivered": {"kind": best["kind"], "plan": plan.to_dict(), "description": plan.describe()},
        "members": [*sorted(fold_preds), *external, *untuned],
        "n_predictions": len(delivered),
        "labelled": is_labelled(test),
    }
    if is_labelled(test):
        selection = read_json(selection_json)
        metrics["single"] = {
            f"{m}/fold{k}": evaluate_coco(test, p, f"{m}/fold{k}")
            for m, folds in fold_preds.items()
            for k, p in enumerate(folds)
        }
        metrics["single"].update({name: evaluate_coco(test, p, name) for name, p in {**external, **untuned}.items()})
        metrics["candidates"] = {}
        for kind, cand in selection["candidates"].items():
            preds = selection.apply_plan(
                selection.Plan.from_dict(cand["plan"]), fold_preds, external, test.images, max_per_img, untuned
            )
            metrics["candidates"][kind] = {
                "label": cand["label"],
                "description": cand["description"],
                **headline(evaluate_coco(test, preds, kind)),
            }
        metrics["delivered"].update(evaluate_coco(test, delivered, out_preds))
        samples = int(settings.get("bootstrap_samples") or selection.BOOTSTRAP_SAMPLES)
        metrics["delivered"].update(
            _test_intervals(test, delivered, metrics["single"], fold_preds, external, seed, samples)
        )
    write_json(out_metrics, metrics)


def _test_intervals(
    test: Coco,
    delivered: Detections,
    singles: dict[str, dict[str, Any]],
    fold_preds: dict[str, list[Detections]],
    external: dict[str, Detections],
    seed: int,
    samples: int,
) -> dict[str, Any]:
    """Bootstrap intervals over the test images of the delivered predictions, and of their
    difference from the single model that scores best on the test set (paired resamples)."""
    from detfold.evaluate import stats
    from detfold.evaluate.cocoeval import BboxEvaluator

    ev = BboxEvaluator(test.data)
    counts = stats.bootstrap_counts(len(test.images), samples, seed)
    best_single = max(singles, key=lambda n: (singles[n]["mAP50"] or 0.0, singles[n]["mAP"] or 0.0))
    model, _, fold = best_single.rpartition("/fold")
    single_preds = external[best_single] if best_single in external else fold_preds[model][int(fold)]
    boot = {}
    for name, preds in (("delivered", delivered), ("single", single_preds)):
        boot[name] = stats.bootstrap_scores(ev.match_results(preds), counts)
    diff = boot["delivered"] - boot["single"]
    return {
        "mAP_ci95": stats.interval(boot["delivered"][:, 0]),
        "mAP50_ci95": stats.interval(boot["delivered"][:, 1]),
        "best_single_on_test": best_single,
        "vs_best_single": {"mAP_ci95": stats.interval(diff[:, 0]), "mAP50_ci95": stats.interval(diff[:, 1])},
    }
