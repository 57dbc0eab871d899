"""One function per workflow stage: what each rule script calls (reads inputs, writes outputs).

Each function takes file paths and plain settings, so it runs the same from Snakemake, the
CLI or a test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detfold import audit, folds
from detfold.coco import Coco, load_coco, write_coco
from detfold.io import atomic_open, read_json, read_product, write_json, write_text
from detfold.metrics import STAT_NAMES, check_predictions, evaluate_coco, mean_std

log = logging.getLogger(__name__)


def run_audit(
    train_annotations: str,
    train_images: str,
    test_annotations: str,
    test_images: str,
    settings: dict[str, Any],
    overrides: str | None,
    out_train: str,
    out_test: str,
    out_findings: str,
    out_summary: str,
    out_gallery: str,
) -> None:
    """Validate both splits (structure and image files), run the checks, apply the policy and a
    person's overrides, and write the cleaned files, findings, summary and gallery.

    An unlabelled test set (no annotations) only has its image files checked.
    """
    policy = audit.AuditPolicy.from_config(settings.get("checks"))
    decisions = audit.read_overrides(overrides)
    before = {
        "train": load_coco(train_annotations),
        "test": load_coco(test_annotations, require_annotations=False),
    }
    audit.check_image_files(before["train"], train_images)
    audit.check_image_files(before["test"], test_images)
    if before["train"].class_names != before["test"].class_names and is_labelled(before["test"]):
        raise ValueError(
            f"{test_annotations}: categories {before['test'].class_names} differ from "
            f"{train_annotations}: {before['train'].class_names}"
        )
    after: dict[str, Coco] = {}
    findings: list[audit.Finding] = []
    for split, coco in before.items():
        if split == "test" and not is_labelled(coco):
            after[split] = coco.subset(coco.image_ids)
            continue
        after[split], found = audit.audit_coco(coco, policy, split, decisions)
        findings += found
    audit.write_gallery(findings, before, {"train": train_images, "test": test_images}, out_gallery)
    audit.write_findings(findings, out_findings)
    audit.write_summary(audit.summarise(before, after, findings), out_summary)
    write_coco(after["test"], out_test)
    write_coco(after["train"], out_train)


def run_import(fmt: str, source: str, images: str, class_names: str | None, out: str) -> None:
    """Convert VOC or YOLO annotations into a checked COCO file (``fmt`` is voc or yolo)."""
    from detfold import convert
    from detfold.coco import validate_coco

    names = convert.read_class_names(class_names, by_line=fmt == "yolo") if class_names else None
    if fmt == "voc":
        data = convert.voc_to_coco(source, images, names)
    elif fmt == "yolo":
        if names is None:
            raise ValueError("data.class_names is needed for YOLO labels (one class name per line)")
        data = convert.yolo_to_coco(source, images, names)
    else:
        raise ValueError(f"data.format must be coco, voc or yolo, got {fmt!r}")
    problems = validate_coco(data, out)
    if problems:
        raise ValueError("\n".join(problems))
    write_coco(data, out)
    log.info("imported %s: %d images, %d boxes", source, len(data["images"]), len(data["annotations"]))


def run_split(
    annotations: str,
    k: int,
    seed: int,
    out_table: str,
    method: str = "balanced",
    group_by: str | None = None,
    weights: dict[str, float] | None = None,
    images: str | None = None,
    near_duplicate_distance: int = 4,
    out_balance: str | None = None,
    out_plot: str | None = None,
    out_summary: str | None = None,
    out_near_duplicates: str | None = None,
    blend_share: float = 0.0,
    out_blend: str | None = None,
) -> dict[str, Any]:
    """Assign folds; write the table and (when paths are given) the balance report and the
    near-duplicate pairs. ``group_by: auto`` keeps near-duplicate images in one fold.

    With ``blend_share`` > 0 a balanced share of the images is first set aside as the blend
    split (``out_blend``, a COCO file): no fold trains on it, every fold model predicts it,
    and the ensembles are chosen there; the K folds split the other images."""
    coco = load_coco(annotations)
    mapping = None
    pairs = None
    if images is not None and (out_near_duplicates or group_by == "auto"):
        found, pairs = folds.near_duplicate_groups(coco, images, near_duplicate_distance)
        log.info("near-duplicate image pairs (dHash distance <= %d): %d", near_duplicate_distance, len(pairs))
        mapping = found if group_by == "auto" else None
    elif group_by == "auto":
        raise ValueError("folds.group_by: auto needs the image folder to hash the images")
    if group_by and group_by.startswith("csv:"):
        mapping = folds.read_group_csv(group_by[4:])
    groups = folds.groups_from(coco, group_by, mapping)
    balance_weights = folds.BalanceWeights.from_config(weights)
    blend_ids: list[int] = []
    if blend_share:
        blend_ids = folds.split_blend(coco, blend_share, seed, method, groups, balance_weights)
        in_blend = set(blend_ids)
        keep = np.array([im["id"] not in in_blend for im in coco.images])
        blend, coco, groups = coco.subset(blend_ids), coco.subset(np.array(coco.image_ids)[keep].tolist()), groups[keep]
        log.info(
            "blend split (share %s): %d images, %d boxes that no fold model trains on",
            blend_share,
            len(blend.images),
            len(blend.annotations),
        )
        if out_blend:
            write_coco(blend, out_blend)
    table = folds.assign_folds(coco, k=k, seed=seed, method=method, groups=groups, weights=balance_weights)
    summary = {
        "method": method,
        "k": k,
        "seed": seed,
        "group_by": group_by,
        "blend_share": blend_share,
        "blend_images": len(blend_ids),
        "groups_of_several_images": int(sum(1 for n in pd.Series(groups).value_counts() if n > 1)),
        "fold_images": table.fold.value_counts().sort_index().astype(int).tolist(),
        **folds.balance_summary(coco, table),
    }
    if pairs is not None and out_near_duplicates:
        with atomic_open(out_near_duplicates) as handle:
            pairs.to_csv(handle, index=False, lineterminator="\n")
    if out_balance or out_plot:
        balance = folds.balance_table(coco, table)
        if out_balance:
            with atomic_open(out_balance) as handle:
                balance.to_csv(handle, index=False, lineterminator="\n")
        if out_plot:
            folds.plot_balance(balance, out_plot)
    if out_summary:
        write_json(out_summary, summary)
    folds.write_folds(table, out_table)
    log.info("folds (%s, k=%d, seed %d): images per fold %s", method, k, seed, summary["fold_images"])
    log.info(
        "max deviation from 1/K: box share %.4f, image share %.4f",
        summary["max_box_share_deviation"],
        summary["max_image_share_deviation"],
    )
    return summary


def run_fold_files(annotations: str, table: str, fold: int, out_train: str, out_val: str) -> None:
    folds.write_fold_split(load_coco(annotations), folds.read_folds(table), fold, out_train, out_val)


def run_predict(
    config: str,
    checkpoint: str,
    annotations: str,
    images: str,
    score_thr: float,
    max_per_img: int,
    out: str,
    threads: int,
    tta: dict[str, Any] | None = None,
) -> None:
    """Predict with one fold model (``tta``: the ``predict.tta`` settings, None for plain)."""
    from detfold.gpu_slots import RECORD, available_slots, gpu_slot
    from detfold.mmdet_predict import TTA, predict_images

    coco = load_coco(annotations, require_annotations=False)
    augment = TTA.from_config(tta)
    with gpu_slot(available_slots(), job=out, record=RECORD):
        write_json(out, predict_images(config, checkpoint, coco, images, score_thr, max_per_img, threads, augment))


def is_labelled(coco: Coco) -> bool:
    return len(coco.annotations) > 0


def run_evaluate(
    model: str,
    val_jsons: Sequence[str],
    oof_preds: Sequence[str],
    test_json: str,
    test_preds: Sequence[str],
    out: str,
    out_pr_curves: str | None = None,
) -> None:
    """Per-fold OOF metrics, mean +- std over folds, pooled OOF metrics (with per-class PR
    curves, also as CSV), and per-fold test metrics."""
    per_fold, pooled_preds, pooled_gt = [], [], None
    for fold, (val_json, pred_json) in enumerate(zip(val_jsons, oof_preds, strict=True)):
        gt, preds = load_coco(val_json), read_product(pred_json)
        per_fold.append({"fold": fold, **evaluate_coco(gt, preds, pred_json)})
        pooled_preds += preds
        pooled_gt = gt.data if pooled_gt is None else _merge(pooled_gt, gt.data)
    result: dict[str, Any] = {"model": model, "folds": per_fold}
    result["cv"] = {name: mean_std([f[name] for f in per_fold]) for name in ("mAP", "mAP50")}
    pooled = evaluate_coco(Coco(pooled_gt or {}, path="pooled OOF"), pooled_preds, "pooled OOF", pr_curves=True)
    if out_pr_curves:
        rows = [
            {"class": name, "recall": r, "precision_iou50": p50, "precision_iou50_95": pm}
            for name, c in pooled["per_class"].items()
            for r, p50, pm in zip(
                *(c["pr_curve"][k] for k in ("recall", "precision_iou50", "precision_iou50_95")), strict=True
            )
        ]
        with atomic_open(out_pr_curves) as handle:
            pd.DataFrame(rows).to_csv(handle, index=False, lineterminator="\n")
    result["pooled_oof"] = pooled
    test = load_coco(test_json, require_annotations=False)
    if is_labelled(test):
        result["test"] = [
            {"fold": fold, **evaluate_coco(test, read_product(path), path)} for fold, path in enumerate(test_preds)
        ]
    write_json(out, result)
    log.info("%s: pooled OOF mAP %.4f, mAP50 %.4f", model, result["pooled_oof"]["mAP"], result["pooled_oof"]["mAP50"])


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**a, "images": a["images"] + b["images"], "annotations": a["annotations"] + b["annotations"]}


DEFAULT_FOLD_FUSION = {"method": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"}


def files_by_model(models: Sequence[str], files: Sequence[str]) -> dict[str, list[str]]:
    """Split expand()'s model-major file list (each model's K fold files together) by model."""
    if not models or len(files) % len(models):
        raise ValueError(f"{len(files)} files cannot be split evenly over models {list(models)}")
    k = len(files) // len(models)
    return {m: list(files[i * k : (i + 1) * k]) for i, m in enumerate(models)}


def _pooled(paths: Sequence[str]) -> list[dict[str, Any]]:
    return [p for path in paths for p in read_product(path)]


def run_ensemble_oof(
    gt_json: str,
    model_oof: dict[str, list[str]],
    settings: dict[str, Any],
    out_search: str,
    out_best: str,
    out_oof: str,
    out_metrics: str,
) -> None:
    """Choose the fusion parameters on out-of-fold predictions.

    Members: each model's pooled OOF predictions (every training image predicted by the fold
    model that did not see it) and each external model's OOF file. Every combination of
    ``settings['search']`` is scored on the pooled OOF mAP/mAP50; the best is written to
    ``out_best`` and its fused OOF predictions to ``out_oof``.
    """
    from detfold import ensemble

    gt = load_coco(gt_json)
    names = sorted(model_oof)
    members = [_pooled(model_oof[n]) for n in names]
    for spec in settings.get("external") or []:
        if spec.get("oof"):  # an external model without OOF predictions joins only the test fusion
            names.append(spec["name"])
            members.append(ensemble.load_external(spec, "oof", gt))
    for name, preds in zip(names, members, strict=True):
        check_predictions(gt, preds, f"OOF predictions of {name}")
    default = ensemble.fusion_params(settings)
    search = settings.get("search") or {}
    agnostic = {"class_agnostic": True} if settings.get("class_agnostic") else {}
    combos = [default] + [{**c, **agnostic} for c in (ensemble.grid(search, len(members)) if search else [])]
    metric = search.get("metric", "mAP50")
    table = ensemble.search(members, gt, combos, metric)
    with atomic_open(out_search) as handle:
        table.to_csv(handle, index=False, lineterminator="\n")
    best = {**ensemble.params_from_row(table.iloc[0].to_dict()), **agnostic}
    max_per_img = int(settings.get("max_per_img", 100))
    fused = ensemble.fuse_members(members, gt.images, best, max_per_img)
    write_json(out_oof, fused)
    metrics = {
        "metric": metric,
        "members": names,
        "best_params": best,
        "default_params": default,
        "combinations_tried": len(table),
        "single": {n: evaluate_coco(gt, m, n) for n, m in zip(names, members, strict=True)},
        "default": evaluate_coco(gt, ensemble.fuse_members(members, gt.images, default, max_per_img), "default"),
        "tuned": evaluate_coco(gt, fused, out_oof),
    }
    write_json(out_best, {"params": best, "metric": metric, "value": float(table.iloc[0][metric])})
    write_json(out_metrics, metrics)
    log.info(
        "OOF ensemble: best %s -> %s %.4f (default %.4f)",
        best,
        metric,
        metrics["tuned"][metric],
        metrics["default"][metric],
    )


def run_ensemble_test(
    test_json: str,
    model_test: dict[str, list[str]],
    settings: dict[str, Any],
    best_json: str,
    out_preds: str,
    out_default: str,
    out_metrics: str,
    out_submission: str,
) -> None:
    """Fuse test predictions in two steps: each model's K fold models (``fold_fusion``), then
    the models (and external ones) with the OOF-tuned parameters; also with the untuned
    default. Scores every single fold model, fold ensemble and both ensembles when labelled."""
    from detfold import ensemble

    test = load_coco(test_json, require_annotations=False)
    max_per_img = int(settings.get("max_per_img", 100))
    fold_params = ensemble.fusion_params({**DEFAULT_FOLD_FUSION, **(settings.get("fold_fusion") or {})})
    names, members, singles = [], [], {}
    for name in sorted(model_test):
        folds_preds = [read_product(p) for p in model_test[name]]
        for k, preds in enumerate(folds_preds):
            check_predictions(test, preds, model_test[name][k])
            singles[f"{name}/fold{k}"] = preds
        names.append(name)
        members.append(ensemble.fuse_members(folds_preds, test.images, fold_params, max_per_img))
    externals = sorted(settings.get("external") or [], key=lambda spec: not spec.get("oof"))  # as in the search
    for spec in externals:
        names.append(spec["name"])
        members.append(ensemble.load_external(spec, "test", test))
    best = read_json(best_json)["params"]
    if "weights" in best:  # members without OOF predictions were not tuned: weight 1
        best = {**best, "weights": best["weights"] + [1.0] * (len(members) - len(best["weights"]))}
    default = ensemble.fusion_params(settings)
    tuned = ensemble.fuse_members(members, test.images, best, max_per_img)
    untuned = ensemble.fuse_members(members, test.images, default, max_per_img)
    write_json(out_default, untuned)
    write_json(out_preds, tuned)
    ensemble.write_submission(tuned, test, out_submission, settings.get("submission_label", "index"))
    metrics: dict[str, Any] = {
        "members": names,
        "fold_fusion": fold_params,
        "default_params": default,
        "tuned_params": best,
        "n_predictions": len(tuned),
    }
    if is_labelled(test):
        metrics["single"] = {n: evaluate_coco(test, p, n) for n, p in singles.items()}
        metrics["fold_ensemble"] = {n: evaluate_coco(test, m, n) for n, m in zip(names, members, strict=True)}
        metrics["default"] = evaluate_coco(test, untuned, out_default)
        metrics["ensemble"] = evaluate_coco(test, tuned, out_preds)
    write_json(out_metrics, metrics)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _headline(models: dict[str, Any], oof: dict[str, Any], ens: dict[str, Any]) -> list[str]:
    """Markdown table: per model the fold mean +- std and pooled OOF score; single models vs fold
    ensembles vs model ensemble vs OOF-tuned ensemble, OOF and test (as the report's table)."""
    from detfold.report import ensemble_rows

    rows = ensemble_rows(oof, ens)
    lines = [
        "## Headline",
        "",
        "| predictions | what | mAP50 per fold, mean +- std | OOF mAP | OOF mAP50 | test mAP | test mAP50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows[rows.kind != "single fold model"].itertuples(index=False):
        cv = models[row.predictions]["cv"]["mAP50"] if row.predictions in models else None
        spread = f"{_fmt(cv['mean'])} +- {_fmt(cv['std'])}" if cv else ""
        name = f"**{row.predictions}**" if row.predictions == "tuned ensemble" else row.predictions
        scores = " | ".join(_fmt(v) for v in row[2:])
        lines.append(f"| {name} | {row.kind} | {spread} | {scores} |")
    return [*lines, "", "OOF: pooled out-of-fold predictions (the cross-validated estimate); n/a: no such score.", ""]


def run_summary(
    audit_summary: str,
    fold_table: str,
    model_metrics: dict[str, str],
    ensemble_metrics: str,
    out_md: str,
    out_json: str,
    fold_balance: str | None = None,
    oof_ensemble: str | None = None,
) -> None:
    """Headline numbers of the run as markdown (for the terminal) and JSON."""
    aud = read_json(audit_summary)
    table = folds.read_folds(fold_table)
    balance = read_json(fold_balance) if fold_balance else None
    models = {name: read_json(path) for name, path in sorted(model_metrics.items())}
    ens = read_json(ensemble_metrics)
    headline = _headline(models, read_json(oof_ensemble), ens) if oof_ensemble else []
    lines = [
        "# detfold run summary",
        "",
        *headline,
        "## Audit",
        "",
        "| split | images | boxes before | boxes after |",
        "|---|---|---|---|",
    ]
    for split, s in aud["splits"].items():
        lines.append(f"| {split} | {s['images_after']} | {s['boxes_before']} | {s['boxes_after']} |")
    lines += [
        "",
        "Findings per check: "
        + (
            ", ".join(
                f"{check} {entry['total']} ({', '.join(f'{a} {n}' for a, n in entry['by_action'].items())})"
                for check, entry in aud["findings_per_check"].items()
            )
            or "none"
        ),
        "",
    ]
    sizes = table.fold.value_counts().sort_index()
    lines += ["## Folds", "", f"K = {len(sizes)}; images per fold: " + ", ".join(str(n) for n in sizes), ""]
    if balance:
        lines += [
            f"Method {balance['method']}, seed {balance['seed']}, group_by {balance['group_by']} "
            f"({balance['groups_of_several_images']} groups of several images). Max deviation from 1/K: "
            f"box share {balance['max_box_share_deviation']:.4f}, "
            f"image share {balance['max_image_share_deviation']:.4f}.",
            "",
        ]
    lines += ["## Cross-validated mAP (out-of-fold)", "", "| model | fold | mAP | mAP50 |", "|---|---|---|---|"]
    for name, m in models.items():
        for f in m["folds"]:
            lines.append(f"| {name} | {f['fold']} | {_fmt(f['mAP'])} | {_fmt(f['mAP50'])} |")
        cv = m["cv"]
        lines.append(
            f"| {name} | mean +- std | {_fmt(cv['mAP']['mean'])} +- {_fmt(cv['mAP']['std'])} "
            f"| {_fmt(cv['mAP50']['mean'])} +- {_fmt(cv['mAP50']['std'])} |"
        )
        lines.append(
            f"| {name} | **pooled OOF** | **{_fmt(m['pooled_oof']['mAP'])}** | **{_fmt(m['pooled_oof']['mAP50'])}** |"
        )
    lines += ["", "Per-class AP (pooled OOF):", "", "| model | class | AP | AP50 | GT boxes |", "|---|---|---|---|---|"]
    for name, m in models.items():
        for cls, c in m["pooled_oof"]["per_class"].items():
            lines.append(f"| {name} | {cls} | {_fmt(c['AP'])} | {_fmt(c['AP50'])} | {c['n_gt']} |")
    if oof_ensemble:
        oof = read_json(oof_ensemble)
        lines += ["", "## Ensemble, chosen on out-of-fold predictions", ""]
        lines += [
            f"{oof['combinations_tried']} parameter combinations scored on pooled OOF {oof['metric']}; "
            f"best: {oof['best_params']}.",
            "",
            "| OOF predictions | mAP | mAP50 |",
            "|---|---|---|",
        ]
        for member, m in oof["single"].items():
            lines.append(f"| {member} | {_fmt(m['mAP'])} | {_fmt(m['mAP50'])} |")
        lines.append(
            f"| default fusion {oof['default_params']} | {_fmt(oof['default']['mAP'])} "
            f"| {_fmt(oof['default']['mAP50'])} |"
        )
        lines.append(f"| **tuned fusion** | **{_fmt(oof['tuned']['mAP'])}** | **{_fmt(oof['tuned']['mAP50'])}** |")
    lines += ["", "## Test set", ""]
    if "ensemble" in ens:
        lines += ["| predictions | mAP | mAP50 |", "|---|---|---|"]
        for member, m in ens["single"].items():
            lines.append(f"| {member} | {_fmt(m['mAP'])} | {_fmt(m['mAP50'])} |")
        for member, m in ens["fold_ensemble"].items():
            lines.append(
                f"| {member}: fold ensemble ({ens['fold_fusion']['method']}) | {_fmt(m['mAP'])} | {_fmt(m['mAP50'])} |"
            )
        lines.append(
            f"| untuned ensemble {ens['default_params']} | {_fmt(ens['default']['mAP'])} "
            f"| {_fmt(ens['default']['mAP50'])} |"
        )
        e = ens["ensemble"]
        lines.append(
            f"| **OOF-tuned ensemble** {ens['tuned_params']} | **{_fmt(e['mAP'])}** | **{_fmt(e['mAP50'])}** |"
        )
    else:
        lines.append(f"Test set unlabelled: {ens['n_predictions']} fused predictions written, not scored.")
    write_text(out_md, "\n".join(lines) + "\n")
    write_json(
        out_json,
        {
            "audit": aud,
            "fold_sizes": {int(k): int(v) for k, v in sizes.items()},
            "fold_balance": balance,
            "models": {
                n: {"cv": m["cv"], "pooled_oof": {k: m["pooled_oof"][k] for k in ("mAP", "mAP50")}}
                for n, m in models.items()
            },
            "test": {
                name: {n: {"mAP": m["mAP"], "mAP50": m["mAP50"]} for n, m in ens.get(name, {}).items()}
                for name in ("single", "fold_ensemble")
            }
            | {name: {k: ens[name][k] for k in ("mAP", "mAP50")} for name in ("default", "ensemble") if name in ens},
            "stat_names": list(STAT_NAMES),
        },
    )
    log.info("summary written to %s", Path(out_md))
