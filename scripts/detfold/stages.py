"""One function per workflow stage: what each rule script calls (reads inputs, writes outputs).

Each function takes file paths and plain settings, so it runs the same from Snakemake, the
CLI or a test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detfold import audit, folds
from detfold.coco import Coco, load_coco, write_coco
from detfold.fusion import fuse_coco_predictions
from detfold.io import read_json, write_json, write_text
from detfold.metrics import STAT_NAMES, evaluate_coco, mean_std

log = logging.getLogger(__name__)


def run_audit(
    train_annotations: str,
    train_images: str,
    test_annotations: str,
    test_images: str,
    policy: dict[str, Any],
    out_train: str,
    out_test: str,
    out_findings: str,
    out_summary: str,
) -> None:
    """Validate both splits (structure and image files), apply the policy, write the results."""
    pol = audit.AuditPolicy(**policy)
    before = {
        "train": load_coco(train_annotations),
        "test": load_coco(test_annotations, require_annotations=False),
    }
    audit.check_image_files(before["train"], train_images)
    audit.check_image_files(before["test"], test_images)
    after: dict[str, Coco] = {}
    findings: list[audit.Finding] = []
    for split, coco in before.items():
        after[split], found = audit.audit_coco(coco, pol, split)
        findings += found
    if after["train"].class_names != after["test"].class_names:
        raise ValueError(
            f"{test_annotations}: categories {after['test'].class_names} differ from "
            f"{train_annotations}: {after['train'].class_names}"
        )
    audit.write_findings(findings, out_findings)
    audit.write_summary(audit.summarise(before, after, findings), out_summary)
    write_coco(after["test"], out_test)
    write_coco(after["train"], out_train)


def run_split(annotations: str, k: int, seed: int, out_table: str) -> None:
    table = folds.assign_folds(load_coco(annotations), k=k, seed=seed)
    folds.write_folds(table, out_table)
    log.info("fold sizes (images): %s", table.fold.value_counts().sort_index().to_dict())


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
) -> None:
    from detfold.mmdet_predict import predict_images

    coco = load_coco(annotations, require_annotations=False)
    write_json(out, predict_images(config, checkpoint, coco, images, score_thr, max_per_img, threads))


def is_labelled(coco: Coco) -> bool:
    return len(coco.annotations) > 0


def run_evaluate(
    model: str, val_jsons: Sequence[str], oof_preds: Sequence[str], test_json: str, test_preds: Sequence[str], out: str
) -> None:
    """Per-fold OOF metrics, mean +- std over folds, pooled OOF metrics, and per-fold test metrics."""
    per_fold, pooled_preds, pooled_gt = [], [], None
    for fold, (val_json, pred_json) in enumerate(zip(val_jsons, oof_preds, strict=True)):
        gt, preds = load_coco(val_json), read_json(pred_json)
        per_fold.append({"fold": fold, **evaluate_coco(gt, preds, pred_json)})
        pooled_preds += preds
        pooled_gt = gt.data if pooled_gt is None else _merge(pooled_gt, gt.data)
    result: dict[str, Any] = {"model": model, "folds": per_fold}
    result["cv"] = {name: mean_std([f[name] for f in per_fold]) for name in ("mAP", "mAP50")}
    result["pooled_oof"] = evaluate_coco(Coco(pooled_gt or {}, path="pooled OOF"), pooled_preds, "pooled OOF")
    test = load_coco(test_json, require_annotations=False)
    if is_labelled(test):
        result["test"] = [{"fold": fold, **evaluate_coco(test, read_json(p), p)} for fold, p in enumerate(test_preds)]
    write_json(out, result)
    log.info("%s: pooled OOF mAP %.4f, mAP50 %.4f", model, result["pooled_oof"]["mAP"], result["pooled_oof"]["mAP50"])


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**a, "images": a["images"] + b["images"], "annotations": a["annotations"] + b["annotations"]}


def run_ensemble(
    test_json: str,
    test_preds: dict[str, str],
    settings: dict[str, Any],
    out_preds: str,
    out_metrics: str,
) -> None:
    """Fuse the test predictions of every model x fold; score the fusion and each member."""
    test = load_coco(test_json, require_annotations=False)
    names = sorted(test_preds)
    sets = [read_json(test_preds[n]) for n in names]
    fused = fuse_coco_predictions(
        sets,
        test.images,
        method=settings.get("method", "wbf"),
        iou_thr=float(settings.get("iou_thr", 0.55)),
        skip_box_thr=float(settings.get("skip_box_thr", 0.0)),
        conf_type=settings.get("conf_type", "avg"),
        max_per_image=int(settings.get("max_per_img", 100)),
    )
    write_json(out_preds, fused)
    metrics: dict[str, Any] = {"members": names, "settings": settings, "n_predictions": len(fused)}
    if is_labelled(test):
        metrics["ensemble"] = evaluate_coco(test, fused, out_preds)
        metrics["single"] = {n: evaluate_coco(test, s, test_preds[n]) for n, s in zip(names, sets, strict=True)}
    write_json(out_metrics, metrics)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_summary(
    audit_summary: str,
    fold_table: str,
    model_metrics: dict[str, str],
    ensemble_metrics: str,
    out_md: str,
    out_json: str,
) -> None:
    """Headline numbers of the run as markdown (for the terminal) and JSON."""
    aud = read_json(audit_summary)
    table = folds.read_folds(fold_table)
    models = {name: read_json(path) for name, path in sorted(model_metrics.items())}
    ens = read_json(ensemble_metrics)
    lines = [
        "# detfold run summary",
        "",
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
                f"{check} {sum(actions.values())} ({', '.join(f'{a} {n}' for a, n in actions.items())})"
                for check, actions in aud["findings_per_check"].items()
            )
            or "none"
        ),
        "",
    ]
    sizes = table.fold.value_counts().sort_index()
    lines += ["## Folds", "", f"K = {len(sizes)}; images per fold: " + ", ".join(str(n) for n in sizes), ""]
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
    lines += ["", "## Test set", ""]
    if "ensemble" in ens:
        lines += ["| predictions | mAP | mAP50 |", "|---|---|---|"]
        for member, m in ens["single"].items():
            lines.append(f"| {member} | {_fmt(m['mAP'])} | {_fmt(m['mAP50'])} |")
        e = ens["ensemble"]
        lines.append(
            f"| **{ens['settings'].get('method', 'wbf')} ensemble of {len(ens['members'])}** "
            f"| **{_fmt(e['mAP'])}** | **{_fmt(e['mAP50'])}** |"
        )
    else:
        lines.append(f"Test set unlabelled: {ens['n_predictions']} fused predictions written, not scored.")
    write_text(out_md, "\n".join(lines) + "\n")
    write_json(
        out_json,
        {
            "audit": aud,
            "fold_sizes": {int(k): int(v) for k, v in sizes.items()},
            "models": {
                n: {"cv": m["cv"], "pooled_oof": {k: m["pooled_oof"][k] for k in ("mAP", "mAP50")}}
                for n, m in models.items()
            },
            "test": {
                "single": {n: {"mAP": m["mAP"], "mAP50": m["mAP50"]} for n, m in ens.get("single", {}).items()},
                "ensemble": {k: ens["ensemble"][k] for k in ("mAP", "mAP50")} if "ensemble" in ens else None,
            },
            "stat_names": list(STAT_NAMES),
        },
    )
    log.info("summary written to %s", Path(out_md))
