"""Stage compare (workflow/compare.smk): what its rule script calls (read the out-of-fold
predictions, training times and fold models; write the leaderboard)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pandas as pd

from detfold.compare.leaderboard import leaderboard_rows, paired_scores
from detfold.core.coco import Detections, load_coco, load_detections, pooled_dataset
from detfold.core.io import atomic_open, read_product, write_json
from detfold.evaluate.stats import BOOTSTRAP_SAMPLES

log = logging.getLogger(__name__)


def scopes(model_folds: Mapping[str, Sequence[int]], k: int) -> list[tuple[str, list[int], list[str]]]:
    """(name, folds, models) of each comparison: every model on the val images of the folds
    they all trained; then, if that is not every fold, the models that trained every fold on
    their pooled OOF images."""
    shared = sorted(set.intersection(*(set(f) for f in model_folds.values())))
    full = [m for m, folds in model_folds.items() if sorted(folds) == list(range(k))]
    if shared == list(range(k)):
        return [(f"pooled OOF ({k} folds)", shared, list(model_folds))]
    name = ("fold " if len(shared) == 1 else "folds ") + ", ".join(map(str, shared))
    return [(name, shared, list(model_folds)), *([(f"pooled OOF ({k} folds)", list(range(k)), full)] if full else [])]


def train_seconds(benchmarks: Mapping[int, str], folds: Sequence[int]) -> float:
    """Wall seconds of the fold trainings (Snakemake's benchmark files, column ``s``)."""
    return round(sum(float(pd.read_csv(benchmarks[f], sep="\t")["s"].iloc[0]) for f in folds), 1)


def run_compare(
    model_folds: Mapping[str, Sequence[int]],
    val_jsons: Sequence[str],
    oof: Sequence[str],
    checkpoints: Sequence[str],
    train_benchmarks: Sequence[str],
    metric: str,
    seed: int,
    out_csv: str,
    out_json: str,
) -> None:
    """The leaderboard of every model (:func:`scopes`), as CSV and JSON. ``val_jsons`` are by
    fold; ``oof``, ``checkpoints`` and ``train_benchmarks`` by (model, fold) in ``model_folds``'
    order. Ranked by ``metric``; intervals from :data:`BOOTSTRAP_SAMPLES` resamples (``seed``)."""
    from detfold.train.checkpoints import parameter_count

    pairs = [(m, f) for m, folds in model_folds.items() for f in folds]
    oof_by, bench_by = dict(zip(pairs, oof, strict=True)), dict(zip(pairs, train_benchmarks, strict=True))
    first_checkpoint = {m: c for (m, _), c in reversed(list(zip(pairs, checkpoints, strict=True)))}
    params = {m: parameter_count(path) for m, path in first_checkpoint.items()}
    rows, summary = [], []
    for name, folds, models in scopes(model_folds, len(val_jsons)):
        gt = pooled_dataset([load_coco(val_jsons[f]).data for f in folds])
        predictions = {
            m: Detections.concat([load_detections(oof_by[m, f], read_product) for f in folds]) for m in models
        }
        scored = leaderboard_rows(name, paired_scores(gt, predictions, BOOTSTRAP_SAMPLES, seed), metric)
        for row in scored:
            m = row["model"]
            kind = "all folds" if len(model_folds[m]) == len(val_jsons) else "screen"
            row |= {"folds": " ".join(map(str, folds)), "images": len(gt["images"]), "kind": kind}
            row |= {"train_s": train_seconds({f: bench_by[m, f] for f in folds}, folds), "params": params[m]}
        rows += scored
        summary.append({"scope": name, "folds": folds, "images": len(gt["images"]), "leader": scored[0]["model"]})
        log.info("%s: leader %s (%s %.4f)", name, scored[0]["model"], metric, scored[0][metric])
    first = ["scope", "folds", "images", "rank", "model", "kind"]
    table = pd.DataFrame(rows)
    table = table[first + [c for c in table.columns if c not in first]]
    with atomic_open(out_csv) as handle:
        table.to_csv(handle, index=False, lineterminator="\n")
    bootstrap = {"samples": BOOTSTRAP_SAMPLES, "seed": seed, "over": "images", "paired": True}
    write_json(out_json, {"metric": metric, "bootstrap": bootstrap, "scopes": summary, "rows": rows})
