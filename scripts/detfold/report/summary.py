"""The run summary: ``results/summary.md`` (what is delivered and why, honest estimates with
intervals beside the optimistic ones, the audit, the folds, CV per model and class, test) and
``results/summary.json`` (the same headline numbers for a program)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detfold.evaluate.metrics import STAT_NAMES, headline
from detfold.report.tables import ensemble_rows, interval

HEADLINE_KEYS = ("mAP", "mAP50", "mAP_ci95", "mAP50_ci95")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _delivered(selection: Mapping[str, Any], test: Mapping[str, Any] | None) -> list[str]:
    """What is delivered, why, its honest estimate and its test score."""
    d = selection["delivered"]
    h, v, parts = d["honest"], d["vs_best_single"], selection["nested_parts"]
    lines = [
        "## Delivered predictions",
        "",
        f"**{d['label']}**: {d['description']}.",
        "",
        f"Chosen on the blend split ({selection['blend_images']} training images no fold model trained on) "
        f"because it has the {d['why']}.",
        "",
        f"Honest estimate (the whole choice nested: made on {parts - 1} of {parts} parts of the blend images, "
        f"scored on the held-out part, pooled): mAP {_num(h['mAP'])} {interval(h['mAP_ci95'])}, "
        f"mAP50 {_num(h['mAP50'])} {interval(h['mAP50_ci95'])} "
        f"(95 % bootstrap intervals over the images); difference from the best single model (nested too): "
        f"mAP {v['mAP']:+.4f} {interval(v['mAP_ci95'])}, mAP50 {v['mAP50']:+.4f} {interval(v['mAP50_ci95'])}.",
        "",
    ]
    if test and test.get("labelled"):
        t = test["delivered"]
        vs = t["vs_best_single"]
        lines += [
            f"Test set (never used to choose): mAP {_num(t['mAP'])} {interval(t['mAP_ci95'])}, "
            f"mAP50 {_num(t['mAP50'])} {interval(t['mAP50_ci95'])}; paired difference from the single model "
            f"best on the test set ({t['best_single_on_test']}): mAP {interval(vs['mAP_ci95'])}, "
            f"mAP50 {interval(vs['mAP50_ci95'])}.",
            "",
        ]
    elif test:
        lines += [f"Test set unlabelled: {test['n_predictions']} predictions written, not scored.", ""]
    else:
        lines += ["No test set configured: the run ends with cross-validation and the blend-split choice.", ""]
    return lines


def _candidates(selection: Mapping[str, Any], test: Mapping[str, Any] | None) -> list[str]:
    """Every candidate's blend score in-sample and nested, and its test score."""
    metric = selection["metric"]
    lines = [
        "## Candidates",
        "",
        f"| predictions | what | blend {metric} in-sample (optimistic) | blend {metric} nested (honest) "
        "| 95 % interval | test mAP | test mAP50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ensemble_rows(selection, test).itertuples(index=False):
        name = f"**{row[0]}**" if row[0] == "delivered" else row[0]
        cells = [_num(x) if not isinstance(x, str) else x for x in row[2:]]
        lines.append(f"| {name} | {row[1]} | " + " | ".join(cells) + " |")
    return [
        *lines,
        "",
        "In-sample: chosen and scored on the same blend images, so it flatters the tuned candidates. Nested: the "
        "parameters chosen on the other parts, scored on the held-out part. A single fold model needs no choice: "
        "its blend score is honest as it is.",
        "",
    ]


def _audit(aud: Mapping[str, Any]) -> list[str]:
    """Images and boxes per split before and after the audit, and the findings per check."""
    lines = ["## Audit", "", "| split | images | boxes before | boxes after |", "|---|---|---|---|"]
    for split, sp in aud["splits"].items():
        lines.append(f"| {split} | {sp['images_after']} | {sp['boxes_before']} | {sp['boxes_after']} |")
    found = ", ".join(
        f"{check} {entry['total']} ({', '.join(f'{a} {n}' for a, n in entry['by_action'].items())})"
        for check, entry in aud["findings_per_check"].items()
    )
    return [*lines, "", "Findings per check: " + (found or "none"), ""]


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
    lines = ["## Cross-validated mAP (out-of-fold)", "", "| model | fold | mAP | mAP50 |", "|---|---|---|---|"]
    for name, m in models.items():
        for f in m["folds"]:
            lines.append(f"| {name} | {f['fold']} | {_num(f['mAP'])} | {_num(f['mAP50'])} |")
        cv = m["cv"]
        lines.append(
            f"| {name} | mean +- std (ddof 1) | {_num(cv['mAP']['mean'])} +- {_num(cv['mAP']['std'])} "
            f"| {_num(cv['mAP50']['mean'])} +- {_num(cv['mAP50']['std'])} |"
        )
        p = m["pooled_oof"]
        lines.append(
            f"| {name} | **pooled OOF** [95 % interval] | **{_num(p['mAP'])}** {interval(p.get('mAP_ci95'))} "
            f"| **{_num(p['mAP50'])}** {interval(p.get('mAP50_ci95'))} |"
        )
    lines += ["", "Per-class AP (pooled OOF):", "", "| model | class | AP | AP50 | GT boxes |", "|---|---|---|---|---|"]
    for name, m in models.items():
        for cls, c in m["pooled_oof"]["per_class"].items():
            lines.append(f"| {name} | {cls} | {_num(c['AP'])} | {_num(c['AP50'])} | {c['n_gt']} |")
    return lines


def summary_markdown(
    aud: Mapping[str, Any],
    fold_sizes: Mapping[int, int],
    balance: Mapping[str, Any] | None,
    models: Mapping[str, Mapping[str, Any]],
    selection: Mapping[str, Any],
    test: Mapping[str, Any] | None,
) -> str:
    """``summary.md`` from the audit's summary.json, the images per fold (by fold), the fold
    balance, each model's metrics.json, selection.json and the test metrics (None: no test set)."""
    lines = [
        "# detfold run summary",
        "",
        *_delivered(selection, test),
        *_candidates(selection, test),
        *_audit(aud),
        *_folds(fold_sizes, balance),
        *_cross_validation(models),
    ]
    return "\n".join(lines) + "\n"


def summary_json(
    aud: Mapping[str, Any],
    fold_sizes: Mapping[int, int],
    balance: Mapping[str, Any] | None,
    models: Mapping[str, Mapping[str, Any]],
    selection: Mapping[str, Any],
    test: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``summary.json``, from the same inputs as :func:`summary_markdown`."""
    return {
        "audit": aud,
        "fold_sizes": dict(fold_sizes),
        "fold_balance": balance,
        "models": {
            n: {"cv": m["cv"], "pooled_oof": {k: m["pooled_oof"][k] for k in HEADLINE_KEYS}} for n, m in models.items()
        },
        "delivered": selection["delivered"],
        "test": None
        if test is None
        else {
            "delivered": {k: test["delivered"].get(k) for k in HEADLINE_KEYS},
            "single": {n: headline(m) for n, m in test.get("single", {}).items()},
            "candidates": {n: headline(m) for n, m in test.get("candidates", {}).items()},
        },
        "stat_names": list(STAT_NAMES),
    }
