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
from detfold.coco import Coco, Detections, load_coco, load_detections, load_detections_beside, write_coco
from detfold.io import atomic_open, read_json, read_product, write_json, write_text
from detfold.metrics import STAT_NAMES, check_detection_ids, evaluate_coco, mean_std

log = logging.getLogger(__name__)


def run_audit(
    train_annotations: str,
    train_images: str,
    test_annotations: str | None,
    test_images: str | None,
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

    An unlabelled test set (a COCO file without annotations, or a text file of image file
    names) only has its image files checked; without a test set the test file lists no image.
    """
    policy = audit.AuditPolicy.from_config(settings.get("checks"))
    decisions = audit.read_overrides(overrides)
    train = load_coco(train_annotations)
    if test_annotations is None:
        test = Coco({"images": [], "annotations": [], "categories": train.categories}, path="no test set")
    elif str(test_annotations).endswith(".txt"):
        test = audit.coco_from_image_list(test_annotations, test_images, train.categories)
    else:
        test = load_coco(test_annotations, require_annotations=False)
    before = {"train": train, "test": test}
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
    test_json: str | None,
    test_preds: Sequence[str],
    out: str,
    out_pr_curves: str | None = None,
    seed: int = 42,
) -> None:
    """Per-fold OOF metrics, mean +- std (ddof 1) over folds, pooled OOF metrics with bootstrap
    95 % intervals over the images (and per-class PR curves, also as CSV), and per-fold test
    metrics when there is a labelled test set."""
    per_fold, parts, pooled_gt = [], [], None
    for fold, (val_json, pred_json) in enumerate(zip(val_jsons, oof_preds, strict=True)):
        gt = load_coco(val_json)
        preds = read_detections(gt, pred_json)
        per_fold.append({"fold": fold, **evaluate_coco(gt, preds, pred_json)})
        parts.append(preds)
        pooled_gt = gt.data if pooled_gt is None else _merge(pooled_gt, gt.data)
    pooled_preds = Detections.concat(parts)
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
    pooled.update(_pooled_intervals(Coco(pooled_gt or {}, path="pooled OOF"), pooled_preds, seed))
    result["pooled_oof"] = pooled
    test = load_coco(test_json, require_annotations=False) if test_json else None
    if test is not None and is_labelled(test):
        result["test"] = [
            {"fold": fold, **evaluate_coco(test, read_detections(test, path), path)}
            for fold, path in enumerate(test_preds)
        ]
    write_json(out, result)
    log.info("%s: pooled OOF mAP %.4f, mAP50 %.4f", model, result["pooled_oof"]["mAP"], result["pooled_oof"]["mAP50"])


def _pooled_intervals(gt: Coco, preds: Detections, seed: int) -> dict[str, Any]:
    """Bootstrap (over images, seeded) 95 % intervals of mAP and mAP50."""
    from detfold import ensemble
    from detfold.cocoeval import BboxEvaluator

    matched = BboxEvaluator(gt.data).match_results(preds)
    counts = ensemble.bootstrap_counts(len(gt.images), ensemble.BOOTSTRAP_SAMPLES, seed)
    boot = ensemble.bootstrap_scores(matched, counts)
    return {
        "mAP_ci95": ensemble.interval(boot[:, 0]),
        "mAP50_ci95": ensemble.interval(boot[:, 1]),
        "bootstrap": {"samples": ensemble.BOOTSTRAP_SAMPLES, "seed": seed, "over": "images"},
    }


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**a, "images": a["images"] + b["images"], "annotations": a["annotations"] + b["annotations"]}


def files_by_model(models: Sequence[str], files: Sequence[str]) -> dict[str, list[str]]:
    """Split expand()'s model-major file list (each model's K fold files together) by model."""
    if not models or len(files) % len(models):
        raise ValueError(f"{len(files)} files cannot be split evenly over models {list(models)}")
    k = len(files) // len(models)
    return {m: list(files[i * k : (i + 1) * k]) for i, m in enumerate(models)}


def read_detections(gt: Coco, path: str, processes: int = 1) -> Detections:
    """A predictions file an earlier job wrote, as columns, checked (values, and ids against
    ``gt``); a corrupt file is deleted so that the next run redoes its job
    (:func:`detfold.io.read_product`). With ``processes`` > 1 it is decoded on two cores
    (:func:`detfold.coco.load_detections_beside`)."""
    if processes > 1:
        detections, _ = load_detections_beside(path, lambda: None, read=read_product)
    else:
        detections = load_detections(path, read=read_product)
    check_detection_ids(gt, detections, path)
    return detections


def _fold_predictions(gt: Coco, model_files: dict[str, list[str]], processes: int = 1) -> dict[str, list[Detections]]:
    return {name: [read_detections(gt, path, processes) for path in model_files[name]] for name in sorted(model_files)}


def _externals(
    settings: dict[str, Any], split: str, coco: Coco, id_coco: Coco | None = None
) -> tuple[dict[str, Detections], dict[str, Detections]]:
    """External models' predictions on ``coco``'s images: (those with OOF predictions, which
    take part in the choice, and the others, which join the model ensemble untuned). For the
    blend split (``split`` oof) their OOF files are read against ``id_coco`` (all training
    images) and kept on the blend images."""
    from detfold import ensemble

    chosen, untuned = {}, {}
    keep = np.asarray(coco.image_ids, dtype=np.int64)
    for spec in settings.get("external") or []:
        if split == "oof" and not spec.get("oof"):
            continue
        preds = ensemble.load_external(spec, split, id_coco or coco)
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
    from detfold import ensemble

    gt = load_coco(blend_json)
    fold_preds = _fold_predictions(gt, model_blend, processes)
    oof_external = any(spec.get("oof") for spec in settings.get("external") or [])
    external, _ = _externals(settings, "oof", gt, load_coco(train_json) if oof_external else None)
    selector = ensemble.BlendSelector(gt, fold_preds, external, settings, seed=seed, processes=processes)
    selection = ensemble.select_on_blend(
        selector, samples=int(settings.get("bootstrap_samples", ensemble.BOOTSTRAP_SAMPLES)), seed=seed
    )
    plan = ensemble.Plan.from_dict(selection["delivered"]["plan"])
    fused = selector.plan_predictions(plan)  # the search's own fusions: what apply_plan gives (test)
    if fused is None:
        fused = ensemble.apply_plan(plan, fold_preds, external, gt.images, selector.max_per_img)
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
    from detfold import ensemble

    test = load_coco(test_json, require_annotations=False)
    max_per_img = int(settings.get("max_per_img", 100))
    fold_preds = _fold_predictions(test, model_test)
    external, untuned = _externals(settings, "test", test)
    best = read_json(best_json)
    plan = ensemble.Plan.from_dict(best["plan"])
    delivered = ensemble.apply_plan(plan, fold_preds, external, test.images, max_per_img, untuned)
    write_json(out_preds, delivered.to_results())
    ensemble.write_submission(delivered, test, out_submission, settings.get("submission_label", "index"))
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
            preds = ensemble.apply_plan(
                ensemble.Plan.from_dict(cand["plan"]), fold_preds, external, test.images, max_per_img, untuned
            )
            metrics["candidates"][kind] = {
                "label": cand["label"],
                "description": cand["description"],
                **_mm(evaluate_coco(test, preds, kind)),
            }
        metrics["delivered"].update(evaluate_coco(test, delivered, out_preds))
        samples = int(settings.get("bootstrap_samples") or ensemble.BOOTSTRAP_SAMPLES)
        metrics["delivered"].update(
            _test_intervals(test, delivered, metrics["single"], fold_preds, external, seed, samples)
        )
    write_json(out_metrics, metrics)


def _mm(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("mAP", "mAP50")}


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
    from detfold import ensemble
    from detfold.cocoeval import BboxEvaluator

    ev = BboxEvaluator(test.data)
    counts = ensemble.bootstrap_counts(len(test.images), samples, seed)
    best_single = max(singles, key=lambda n: (singles[n]["mAP50"] or 0.0, singles[n]["mAP"] or 0.0))
    model, _, fold = best_single.rpartition("/fold")
    single_preds = external[best_single] if best_single in external else fold_preds[model][int(fold)]
    boot = {}
    for name, preds in (("delivered", delivered), ("single", single_preds)):
        boot[name] = ensemble.bootstrap_scores(ev.match_results(preds), counts)
    diff = boot["delivered"] - boot["single"]
    return {
        "mAP_ci95": ensemble.interval(boot["delivered"][:, 0]),
        "mAP50_ci95": ensemble.interval(boot["delivered"][:, 1]),
        "best_single_on_test": best_single,
        "vs_best_single": {"mAP_ci95": ensemble.interval(diff[:, 0]), "mAP50_ci95": ensemble.interval(diff[:, 1])},
    }


def run_summary(
    audit_summary: str,
    fold_table: str,
    model_metrics: dict[str, str],
    selection_json: str,
    out_md: str,
    out_json: str,
    fold_balance: str | None = None,
    test_metrics: str | None = None,
) -> None:
    """Headline numbers of the run as markdown (for the terminal) and JSON
    (:func:`detfold.report.summary_markdown`)."""
    from detfold.report import summary_markdown

    aud = read_json(audit_summary)
    table = folds.read_folds(fold_table)
    balance = read_json(fold_balance) if fold_balance else None
    models = {name: read_json(path) for name, path in sorted(model_metrics.items())}
    selection = read_json(selection_json)
    test = read_json(test_metrics) if test_metrics else None
    sizes = table.fold.value_counts().sort_index()
    write_text(out_md, summary_markdown(aud, sizes.tolist(), balance, models, selection, test))
    write_json(
        out_json,
        {
            "audit": aud,
            "fold_sizes": {int(k): int(v) for k, v in sizes.items()},
            "fold_balance": balance,
            "models": {
                n: {
                    "cv": m["cv"],
                    "pooled_oof": {k: m["pooled_oof"][k] for k in ("mAP", "mAP50", "mAP_ci95", "mAP50_ci95")},
                }
                for n, m in models.items()
            },
            "delivered": selection["delivered"],
            "test": None
            if test is None
            else {
                "delivered": {k: test["delivered"].get(k) for k in ("mAP", "mAP50", "mAP_ci95", "mAP50_ci95")},
                "single": {n: _mm(m) for n, m in test.get("single", {}).items()},
                "candidates": {n: _mm(m) for n, m in test.get("candidates", {}).items()},
            },
            "stat_names": list(STAT_NAMES),
        },
    )
    log.info("summary written to %s", Path(out_md))


def run_analyze(
    name: str,
    val_jsons: Sequence[str],
    oof_preds: Sequence[Sequence[str]],
    blend_json: str | None,
    blend_preds: Sequence[Sequence[str]],
    images_dir: str,
    out_dir: str,
    gallery_dir: str,
    fusion: dict[str, Any],
    max_per_img: int = 100,
) -> None:
    """Error analysis and label review (detfold.analysis) of the pooled out-of-fold predictions
    of one model or of several fused (the OOF ensemble).

    ``oof_preds``: per member (a model), its K fold files (fold f's OOF predictions cover
    ``val_jsons[f]``); with several members each fold's predictions are fused with ``fusion``
    (the untuned model fusion of config.yaml: nothing here is chosen on these images). The
    breakdown, the thresholds and the confusion matrix are those of the pooled OOF predictions;
    the blend split (no fold model trained on it; ``blend_preds``: per member its K fold files)
    measures the thresholds on other images (per fold the members fused, counts summed over the
    folds) and joins the label review (every fold model of every member fused), so that every
    training image is reviewed."""
    from detfold import analysis, ensemble

    params = {k: v for k, v in ensemble.fusion_params(fusion).items() if k != "weights"}  # untuned: equal
    parts = []
    for fold, val_json in enumerate(val_jsons):
        gt = load_coco(val_json)
        members = [read_detections(gt, files[fold]) for files in oof_preds]
        parts.append((gt.data, ensemble.fuse_members(members, gt.images, params, max_per_img).to_results()))
        log.info("%s: fold %d: %d images, %d predictions", name, fold, len(gt.images), len(parts[-1][1]))
    pooled_gt, pooled = analysis.merge_splits(parts)
    holdout, holdout_sets = None, None
    if blend_json is not None and blend_preds:
        blend = load_coco(blend_json)
        members = [[read_detections(blend, path) for path in files] for files in blend_preds]  # member x fold
        # the thresholds are measured on what they were chosen on: per fold, the members fused
        holdout_sets = [
            ensemble.fuse_members([m[fold] for m in members], blend.images, params, max_per_img).to_results()
            for fold in range(len(val_jsons))
        ]
        # the review looks at the best prediction there is: every fold model of every member fused
        every = [preds for sets in members for preds in sets]
        holdout = (blend.data, ensemble.fuse_members(every, blend.images, params, max_per_img).to_results())
        log.info("%s: blend split: %d images, %d fused predictions", name, len(blend.images), len(holdout[1]))
    analysis.write_analysis(
        pooled_gt,
        pooled,
        out_dir,
        images_dir=images_dir,
        holdout=holdout,
        holdout_sets=holdout_sets,
        gallery_dir=gallery_dir,
    )
