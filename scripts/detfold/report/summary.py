"""The run summary: ``results/summary.md`` (what is delivered and why, honest estimates beside the
optimistic ones, the audit, the folds, CV per model and class) and ``results/summary.json``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detfold.evaluate.metrics import STAT_NAMES, headline
from detfold.report.tables import ensemble_rows, interval

HEADLINE_KEYS = ("mAP", "mAP50", "mAP_ci95", "mAP50_ci95")


@dataclass(frozen=True)
class RunResults:
    """What the summary reports: the audit's summary.json, the images per fold (by fold), the fold
    balance, each model's metrics.json (by name), selection.json, leaderboard.json and the test
    metrics (None: no test set)."""

    audit: Mapping[str, Any]
    fold_sizes: Mapping[int, int]
    balance: Mapping[str, Any] | None
    models: Mapping[str, Mapping[str, Any]]
    selection: Mapping[str, Any]
    leaderboard: Mapping[str, Any]
    test: Mapping[str, Any] | None


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _estimates(scores: Mapping[str, Any], number: Callable[[Any], str] = _num) -> str:
    """``mAP x [lo, hi], mAP50 y [lo, hi]``."""
    return ", ".join(f"{k} {number(scores[k])} {interval(scores[f'{k}_ci95'])}" for k in ("mAP", "mAP50"))


def _delivered(selection: Mapping[str, Any], test: Mapping[str, Any] | None) -> list[str]:
    """What is delivered, why, its honest estimate and its test score."""
    d, parts = selection["delivered"], selection["nested_parts"]
    gain = _estimates(d["vs_best_single"], "{:+.4f}".format)
    if test and test.get("labelled"):
        t = test["delivered"]
        vs = t["vs_best_single"]
        on_test = (
            f"Test set (never used to choose): {_estimates(t)}; paired difference from the single model best on "
            f"the test set ({t['best_single_on_test']}): mAP {interval(vs['mAP_ci95'])}, "
            f"mAP50 {interval(vs['mAP50_ci95'])}."
        )
    elif test:
        on_test = f"Test set unlabelled: {test['n_predictions']} predictions written, not scored."
    else:
        on_test = "No test set configured: the run ends with cross-validation and the blend-split choice."
    return [
        "## Delivered predictions",
        "",
        f"**{d['label']}**: {d['description']}.",
        "",
        f"Chosen on the blend split ({selection['blend_images']} training images no fold model trained on) "
        f"because it has the {d['why']}.",
        "",
        f"Honest estimate (the whole choice nested: made on {parts - 1} of {parts} parts of the blend images, "
        f"scored on the held-out part, pooled): {_estimates(d['honest'])} (95 % bootstrap intervals over the "
        f"images); difference from the best single model (nested too): {gain}.",
        "",
        on_test,
        "",
    ]


def _row(cells: Iterable[Any]) -> str:
    return f"| {' | '.join(map(str, cells))} |"


def _table(header: Sequence[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A markdown table's lines."""
    return [_row(header), "|---" * len(header) + "|", *map(_row, rows)]


def _candidates(selection: Mapping[str, Any], test: Mapping[str, Any] | None) -> list[str]:
    """Every candidate's blend score in-sample and nested, and its test score."""
    metric = selection["metric"]
    frame = ensemble_rows(selection, test)
    rows = [[x if isinstance(x, str) else _num(x) for x in row] for row in frame.itertuples(index=False)]
    rows[-1][0] = "**delivered**"  # ensemble_rows' last row
    header = ["predictions", "what", f"blend {metric} in-sample (optimistic)", f"blend {metric} nested (honest)"]
    return [
        "## Candidates",
        "",
        *_table([*header, "95 % interval", "test mAP", "test mAP50"], rows),
        "",
        "In-sample: chosen and scored on the same blend images, so it flatters the tuned candidates. Nested: the "
        "parameters chosen on the other parts, scored on the held-out part. A single fold model needs no choice: "
        "its blend score is honest as it is.",
        "",
    ]


def _leaderboard(board: Mapping[str, Any]) -> list[str]:
    """Each scope's models, best first, with intervals and the paired difference to the leader."""
    metric, rows = board["metric"], board["rows"]
    lines = [
        "## Leaderboard",
        "",
        f"Every model on the same images, ranked by {metric}. Difference to the leader: paired bootstrap (the same "
        f"{board['bootstrap']['samples']} resamples of the images score every model), 95 % interval; told apart "
        "when it leaves out 0. Training times, which vary from run to run, are in results/compare/leaderboard.csv.",
    ]
    screens = sorted({r["model"] for r in rows if r["kind"] == "screen"})
    if screens:
        lines += [
            "",
            f"Screens (trained on some folds only; compared here, not in the ensemble): {', '.join(screens)}.",
        ]
    header = ["rank", "model", "kind", "mAP [95 %]", "mAP50 [95 %]", f"{metric} - leader [paired 95 %]"]
    for scope in board["scopes"]:
        cells = [
            (
                r["rank"],
                r["model"],
                r["kind"],
                f"{_num(r['mAP'])} {interval([r['mAP_lo'], r['mAP_hi']])}",
                f"{_num(r['mAP50'])} {interval([r['mAP50_lo'], r['mAP50_hi']])}",
                f"{r[f'{metric}_diff']:+.4f} {interval([r[f'{metric}_diff_lo'], r[f'{metric}_diff_hi']])}",
                "yes" if r["distinct_from_leader"] else "no",
                f"{r['params'] / 1e6:.2f} M",
            )
            for r in rows
            if r["scope"] == scope["scope"]
        ]
        lines += ["", f"{scope['scope']} ({scope['images']} images):", ""]
        lines += _table([*header, "told apart", "parameters"], cells)
    return [*lines, ""]


def _audit(aud: Mapping[str, Any]) -> list[str]:
    """Images and boxes per split before and after the audit, and the findings per check."""
    splits = [(split, sp["images_after"], sp["boxes_before"], sp["boxes_after"]) for split, sp in aud["splits"].items()]
    found = ", ".join(
        f"{check} {entry['total']} ({', '.join(f'{a} {n}' for a, n in entry['by_action'].items())})"
        for check, entry in aud["findings_per_check"].items()
    )
    header = ["split", "images", "boxes before", "boxes after"]
    return ["## Audit", "", *_table(header, splits), "", "Findings per check: " + (found or "none"), ""]


def _folds(fold_sizes: Mapping[int, int], balance: Mapping[str, Any] | None) -> list[str]:
    """K, the images per fold and, with the balance file, the blend split and the deviations."""
    sizes = ", ".join(str(n) for n in fold_sizes.values())
    lines = ["## Folds", "", f"K = {len(fold_sizes)}; images per fold: " + sizes, ""]
    if balance:
        lines += [
            f"Blend split: {balance.get('blend_images', 0)} images (share {balance.get('blend_share')}). "
            f"Method {balance['method']}, seed {balance['seed']}, group_by {balance['group_by']} "
            f"({balance['groups_of_several_images']} groups of several images). Max deviation from 1/K: "
            f"box share {balance['max_box_share_deviation']:.4f}, "
            f"image share {balance['max_image_share_deviation']:.4f}.",
            "",
        ]
    return lines


def _cross_validation(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per model its folds, mean +- std and pooled OOF mAP; then its per-class AP."""
    rows: list[Sequence[Any]] = []
    per_class: list[Sequence[Any]] = []
    for name, m in models.items():
        cv, pooled = m["cv"], m["pooled_oof"]
        rows += [(name, f["fold"], _num(f["mAP"]), _num(f["mAP50"])) for f in m["folds"]]
        spread = [f"{_num(cv[k]['mean'])} +- {_num(cv[k]['std'])}" for k in ("mAP", "mAP50")]
        rows.append((name, "mean +- std (ddof 1)", *spread))
        pooled_cells = [f"**{_num(pooled[k])}** {interval(pooled.get(f'{k}_ci95'))}" for k in ("mAP", "mAP50")]
        rows.append((name, "**pooled OOF** [95 % interval]", *pooled_cells))
        per_class += [(name, c, _num(v["AP"]), _num(v["AP50"]), v["n_gt"]) for c, v in pooled["per_class"].items()]
    return [
        "## Cross-validated mAP (out-of-fold)",
        "",
        *_table(["model", "fold", "mAP", "mAP50"], rows),
        "",
        "Per-class AP (pooled OOF):",
        "",
        *_table(["model", "class", "AP", "AP50", "GT boxes"], per_class),
    ]


def summary_markdown(run: RunResults) -> str:
    """``summary.md``: the delivered predictions, the candidates, the leaderboard, the audit, the
    folds, CV per model."""
    lines = [*_delivered(run.selection, run.test), *_candidates(run.selection, run.test)]
    lines += [*_leaderboard(run.leaderboard), *_audit(run.audit)]
    lines += [*_folds(run.fold_sizes, run.balance), *_cross_validation(run.models)]
    return "\n".join(["# detfold run summary", "", *lines]) + "\n"


def summary_json(run: RunResults) -> dict[str, Any]:
    """``summary.json``: the same headline numbers as :func:`summary_markdown`, for a program."""
    test = run.test
    return {
        "audit": run.audit,
        "fold_sizes": dict(run.fold_sizes),
        "fold_balance": run.balance,
        "models": {
            n: {"cv": m["cv"], "pooled_oof": {k: m["pooled_oof"][k] for k in HEADLINE_KEYS}}
            for n, m in run.models.items()
        },
        "delivered": run.selection["delivered"],
        "leaderboard": run.leaderboard["scopes"],
        "test": None
        if test is None
        else {
            "delivered": {k: test["delivered"].get(k) for k in HEADLINE_KEYS},
            "single": {n: headline(m) for n, m in test.get("single", {}).items()},
            "candidates": {n: headline(m) for n, m in test.get("candidates", {}).items()},
        },
        "stat_names": list(STAT_NAMES),
    }
