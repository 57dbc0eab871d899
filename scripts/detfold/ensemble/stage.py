"""Stage ensemble (workflow/ensemble.smk): what its rule scripts call (read inputs, call the library, write outputs)."""

from __future__ import annotations

from typing import Any

from detfold.core.coco import Coco, Detections, load_coco, read_detections
from detfold.core.io import atomic_open, read_json, write_json


def _fold_predictions(gt: Coco, model_files: dict[str, list[str]]) -> dict[str, list[Detections]]:
    return {name: [read_detections(gt, path) for path in model_files[name]] for name in sorted(model_files)}


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
    """Choose what is delivered on the blend split (:func:`detfold.ensemble.selection.choose_on_blend`):
    the search table, the delivered plan, the selection with its honest estimates, and the
    delivered plan's predictions on the blend images."""
    from detfold.ensemble.external import external_members
    from detfold.ensemble.selection import choose_on_blend

    gt = load_coco(blend_json)
    fold_preds = _fold_predictions(gt, model_blend)
    external, _ = external_members(settings["external"], "oof", gt, train_json)
    choice = choose_on_blend(gt, fold_preds, external, settings, seed, processes)
    with atomic_open(out_search) as handle:
        choice.search.to_csv(handle, index=False, lineterminator="\n")
    write_json(out_blend, choice.predictions.to_results())
    write_json(out_selection, choice.selection)
    write_json(out_best, choice.best)


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
    """The delivered plan applied to the test predictions (:func:`detfold.ensemble.delivery.deliver`):
    the predictions, the submission CSV and the metrics (scored when the test set is labelled)."""
    from detfold.ensemble.delivery import deliver
    from detfold.ensemble.external import external_members, write_submission

    test = load_coco(test_json, require_annotations=False)
    fold_preds = _fold_predictions(test, model_test)
    external, untuned = external_members(settings["external"], "test", test)
    best, selection = read_json(best_json), read_json(selection_json)
    delivered, metrics = deliver(test, fold_preds, external, untuned, best, selection, settings, seed)
    write_json(out_preds, delivered.to_results())
    write_submission(delivered, test, out_submission, settings["submission_label"])
    write_json(out_metrics, metrics)
