"""The delivered plan on the test set: its predictions, and on a labelled test set the scores of
every single model and every candidate (each as chosen on the blend split) and the bootstrap
intervals of the delivered predictions, also paired against the single model best on the test
set (an after-the-fact choice: the hardest comparison)."""

from __future__ import annotations

from typing import Any

from detfold.core.coco import Coco, Detections, is_labelled
from detfold.ensemble.plan import Plan, apply_plan
from detfold.evaluate.cocoeval import BboxEvaluator
from detfold.evaluate.metrics import evaluate_coco, headline
from detfold.evaluate.stats import bootstrap_counts, bootstrap_scores, intervals


def deliver(
    test: Coco,
    fold_preds: dict[str, list[Detections]],
    external: dict[str, Detections],
    untuned: dict[str, Detections],
    best: dict[str, Any],
    selection: dict[str, Any],
    settings: dict[str, Any],
    seed: int,
) -> tuple[Detections, dict[str, Any]]:
    """The plan of ``best`` (best.json) applied to the test predictions, and the metrics
    (metrics.json). ``external``: the external models that took part in the choice;
    ``untuned``: those without blend predictions (they join the model ensemble only);
    ``selection``: selection.json (the candidates); ``settings``: the resolved ``ensemble``
    config."""
    max_per_img = int(settings["max_per_img"])

    def predictions(plan: dict[str, Any]) -> Detections:
        return apply_plan(Plan(**plan), fold_preds, external, test.images, max_per_img, untuned)

    plan = Plan(**best["plan"])
    delivered = predictions(best["plan"])
    metrics: dict[str, Any] = {
        "delivered": {"kind": best["kind"], "plan": plan.to_dict(), "description": plan.describe()},
        "members": [*sorted(fold_preds), *external, *untuned],
        "n_predictions": len(delivered),
        "labelled": is_labelled(test),
    }
    if not is_labelled(test):
        return delivered, metrics
    singles = {f"{m}/fold{k}": p for m, folds in fold_preds.items() for k, p in enumerate(folds)}
    singles.update({**external, **untuned})
    scores = {name: evaluate_coco(test, p, name) for name, p in singles.items()}
    metrics["single"] = scores
    metrics["candidates"] = {
        kind: {
            "label": cand["label"],
            "description": cand["description"],
            **headline(evaluate_coco(test, predictions(cand["plan"]), kind)),
        }
        for kind, cand in selection["candidates"].items()
    }
    metrics["delivered"].update(evaluate_coco(test, delivered, "delivered"))
    # bootstrap over the test images, paired with the single model best on the test set (by mAP50, then mAP)
    best_single = max(scores, key=lambda n: (scores[n]["mAP50"] or 0.0, scores[n]["mAP"] or 0.0))
    ev = BboxEvaluator(test.data)
    counts = bootstrap_counts(len(test.images), int(settings["bootstrap_samples"]), seed)
    boot = bootstrap_scores(ev.match_results(delivered), counts)
    boot_single = bootstrap_scores(ev.match_results(singles[best_single]), counts)
    metrics["delivered"].update(
        {**intervals(boot), "best_single_on_test": best_single, "vs_best_single": intervals(boot - boot_single)}
    )
    return delivered, metrics
