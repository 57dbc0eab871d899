"""The ``detfold`` command: the library's stages outside Snakemake.

    detfold audit ANNOTATIONS --images DIR --out DIR [--overrides CSV] [--check tiny=4:drop_box]
    detfold import voc|yolo SOURCE [--images DIR] [--classes FILE] --out COCO.json
    detfold split ANNOTATIONS --k 5 --seed 42 --method balanced [--group-by auto --images DIR] --out folds.csv
    detfold evaluate --gt GT.json --pred PRED.json [--json OUT]
    detfold fuse --gt GT.json --pred A.json B.json [--method wbf ...] --out FUSED.json   (alias: detfold ensemble)
    detfold analyze --gt GT.json --pred PRED.json [--images DIR] --out DIR

Bad input ends with one ``detfold: error: ...`` line naming the file and value (exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from detfold import __version__

log = logging.getLogger("detfold")


def _audit(args: argparse.Namespace) -> None:
    from detfold.audit import checks
    from detfold.audit.stage import audit_splits, write_audit
    from detfold.core.coco import load_coco, write_coco

    coco = load_coco(args.annotations)
    policy = checks.AuditPolicy.from_config(_parse_checks(args.check))
    decisions = checks.read_overrides(args.overrides)
    before, images, out = {"train": coco}, {"train": args.images}, Path(args.out)
    after, findings = audit_splits(before, images, policy, decisions)
    write_coco(after["train"], out / "annotations.json")
    write_audit(before, after, findings, images, out / "findings.csv", out / "summary.json", out / "gallery")
    dropped = len(coco.annotations) - len(after["train"].annotations)
    print(f"{len(findings)} findings; {dropped} boxes dropped; wrote {out}/")


def _parse_checks(specs: list[str] | None) -> dict[str, dict[str, str | float]]:
    """``name=threshold`` or ``name=threshold:action`` or ``name=:action`` -> policy config."""
    checks: dict[str, dict[str, str | float]] = {}
    for spec in specs or []:
        name, _, value = spec.partition("=")
        threshold, _, action = value.partition(":")
        try:
            checks[name] = {"threshold": float(threshold)} if threshold else {}
        except ValueError:
            raise ValueError(f"--check {spec!r}: threshold must be a number, got {threshold!r}") from None
        if action:
            checks[name]["action"] = action
    return checks


def _import(args: argparse.Namespace) -> None:
    from detfold.audit.stage import run_import

    if args.format == "yolo" and not (args.images and args.classes):
        raise ValueError("import yolo needs --images DIR and --classes FILE")
    if args.format == "yolo" and args.difficult is not None:
        raise ValueError(f"--difficult {args.difficult}: YOLO labels have no difficult flag (the option is for voc)")
    run_import(args.format, args.source, args.images, args.classes, args.out, args.difficult or "ignore")
    print(f"imported {args.source}: {args.out}")


def _split(args: argparse.Namespace) -> None:
    from detfold.core.config import schema_defaults
    from detfold.folds.stage import run_split

    folds = schema_defaults()["folds"]  # the settings the command has no option for
    out = Path(args.out)
    summary = run_split(
        args.annotations,
        k=args.k,
        seed=args.seed,
        method=args.method,
        group_by=args.group_by,
        weights=folds["weights"],
        images=args.images,
        near_duplicate_distance=folds["near_duplicate_distance"],
        blend_share=0.0,  # no blend split: every image goes to a fold
        out_table=str(out),
        out_balance=str(out.with_name(out.stem + ".balance.csv")),
    )
    print(f"wrote {out} and {out.stem}.balance.csv: images per fold {summary['fold_images']}")
    print(
        f"max deviation from 1/K: box share {summary['max_box_share_deviation']:.4f}, "
        f"image share {summary['max_image_share_deviation']:.4f}"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from detfold.core.coco import load_coco
    from detfold.core.io import read_json, write_json
    from detfold.evaluate.stage import evaluate_file

    _, result = evaluate_file(load_coco(args.gt), args.pred, read=read_json)  # a user's file: never deleted
    if args.json:
        write_json(args.json, result)
    rows = list(result["stats"].items()) + [(f"AP[{n}]", c["AP"]) for n, c in result["per_class"].items()]
    for name, value in rows:
        print(f"{name:12s} {'n/a' if value is None else format(value, '.4f')}")


def _fuse(args: argparse.Namespace) -> None:
    from detfold.core.coco import check_detection_ids, load_coco, load_detections
    from detfold.core.io import write_json
    from detfold.ensemble.fusion import fuse_members, fusion_params

    check_fusion_args(args)
    gt = load_coco(args.gt, require_annotations=False, require_sizes=True)
    members = [load_detections(path) for path in args.pred]
    for path, member in zip(args.pred, members, strict=True):
        check_detection_ids(gt, member, path)
    fused = fuse_members(members, gt.images, fusion_params(vars(args)), args.max_per_img)
    write_json(args.out, fused.to_results())
    print(f"fused {len(args.pred)} prediction files into {len(fused)} boxes: {args.out}")


def _analyze(args: argparse.Namespace) -> None:
    from detfold.analyze.analysis import write_analysis
    from detfold.analyze.tide import ERROR_TYPES
    from detfold.core.coco import check_detection_ids, load_coco, load_detections

    gt = load_coco(args.gt)
    preds = load_detections(args.pred)
    check_detection_ids(gt, preds, args.pred)
    if args.images is not None and not Path(args.images).is_dir():
        raise ValueError(f"--images {args.images}: no such folder")
    result = write_analysis(gt.data, preds, args.out, images_dir=args.images)
    print(f"TIDE mAP50 {result['mAP']:.4f}; dAP " + " ".join(f"{k} {result['main'][k]:.4f}" for k in ERROR_TYPES))
    galleries = ", gallery/" if args.images is not None else ""
    print(f"wrote {args.out}/ (tide.json, thresholds.json, confusion.csv, review.csv{galleries})")


def check_fusion_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the option whose value cannot make sense for a fusion. In the
    alias ``detfold ensemble``, ``--images`` still names the COCO file (with a warning)."""
    from detfold.ensemble.fusion import check_fusion

    if args.images is not None:
        if args.command != "ensemble":
            raise ValueError(
                f"--images {args.images}: give the COCO file of the images as --gt (--images is an image folder)"
            )
        log.warning("--images %s: use --gt for the COCO file (--images is an image folder)", args.images)
        args.gt = args.images
    if args.gt is None:
        raise ValueError("--gt GT.json is required: the COCO file whose images and categories are fused")
    check_fusion(args.method, args.conf_type, f"detfold {args.command}")
    if args.max_per_img < 1:
        raise ValueError(f"--max-per-img must be >= 1, got {args.max_per_img}")
    for name in ("iou_thr", "skip_box_thr"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if args.weights is not None:
        if len(args.weights) != len(args.pred):
            raise ValueError(f"--weights: {len(args.weights)} weights for {len(args.pred)} prediction files")
        bad = [w for w in args.weights if not w > 0 or w == float("inf")]
        if bad:
            raise ValueError(f"--weights must be finite numbers > 0, got {args.weights}")


def parser() -> argparse.ArgumentParser:
    from detfold.core.config import load_schema

    p = argparse.ArgumentParser(prog="detfold", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"detfold {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("audit", help="check a COCO file's boxes and images; write cleaned file and findings")
    a.add_argument("annotations")
    a.add_argument("--images", required=True, help="folder the file_name entries are relative to")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--overrides", help="CSV of a person's decisions: ann_id,image_id,decision(keep|drop),note")
    a.add_argument(
        "--check",
        action="append",
        metavar="NAME=THRESHOLD[:ACTION]",
        help="change one check, e.g. tiny=4 or duplicate=0.7:drop_box (repeatable)",
    )
    a.set_defaults(func=_audit)

    i = sub.add_parser("import", help="convert Pascal VOC XML or YOLO txt annotations to COCO")
    i.add_argument("format", choices=["voc", "yolo"])
    i.add_argument("source", help="folder of VOC .xml files, or of YOLO .txt label files")
    i.add_argument("--images", help="image folder (YOLO: required; VOC: to read sizes missing from the XML)")
    i.add_argument(
        "--classes",
        help="class names: one per line, 'N: name' lines, or a YOLO data.yaml (YOLO: required; VOC: fixes the order)",
    )
    i.add_argument(
        "--difficult",
        choices=["ignore", "keep", "drop"],
        help="VOC boxes marked <difficult>1</difficult>: ignore (default: kept with iscrowd 1, ignored in "
        "training and evaluation), keep (ordinary boxes) or drop",
    )
    i.add_argument("--out", required=True, help="COCO JSON to write")
    i.set_defaults(func=_import)

    schema = load_schema()["properties"]  # the config's defaults and choices
    folds = schema["folds"]["properties"]
    s = sub.add_parser("split", help="class-stratified K-fold assignment of images")
    s.add_argument("annotations")
    s.add_argument("--k", type=int, default=folds["k"]["default"], help="default: %(default)s")
    s.add_argument("--seed", type=int, default=schema["seed"]["default"], help="default: %(default)s")
    s.add_argument("--method", default=folds["method"]["default"], choices=folds["method"]["enum"])
    s.add_argument("--group-by", help="regex:PATTERN | field:NAME | csv:PATH | auto (near-duplicate images)")
    s.add_argument("--images", help="image folder (needed by --group-by auto)")
    s.add_argument("--out", required=True, help="CSV: image_id,file_name,fold (a .balance.csv is written beside it)")
    s.set_defaults(func=_split)

    e = sub.add_parser("evaluate", help="COCO bbox metrics of predictions against ground truth")
    e.add_argument("--gt", required=True)
    e.add_argument("--pred", required=True, help="COCO results JSON")
    e.add_argument("--json", help="also write all metrics to this JSON file")
    e.set_defaults(func=_evaluate)

    fusion = schema["ensemble"]["properties"]  # the model fusion's defaults
    methods, conf_types = " | ".join(fusion["method"]["enum"]), " | ".join(fusion["conf_type"]["enum"])
    f = sub.add_parser("fuse", aliases=["ensemble"], help="fuse several COCO results files (WBF, NMS, soft-NMS, NMW)")
    f.add_argument("--gt", help="COCO file of the images (id, width, height) and categories the predictions are of")
    f.add_argument("--images", help=argparse.SUPPRESS)  # `detfold ensemble`'s old name of --gt
    f.add_argument("--pred", required=True, nargs="+", help="COCO results files, one per model")
    f.add_argument("--method", default=fusion["method"]["default"], help=f"{methods}; default: %(default)s")
    f.add_argument("--iou-thr", type=float, default=fusion["iou_thr"]["default"], help="default: %(default)s")
    f.add_argument("--skip-box-thr", type=float, default=fusion["skip_box_thr"]["default"], help="default: %(default)s")
    f.add_argument(
        "--conf-type", default=fusion["conf_type"]["default"], help=f"wbf: {conf_types}; default: %(default)s"
    )
    f.add_argument("--weights", type=float, nargs="+", help="one weight per --pred file (default: equal)")
    f.add_argument("--max-per-img", type=int, default=fusion["max_per_img"]["default"], help="default: %(default)s")
    f.add_argument("--class-agnostic", action="store_true", help="fuse boxes across classes")
    f.add_argument("--out", required=True)
    f.set_defaults(func=_fuse)

    n = sub.add_parser("analyze", help="TIDE error breakdown, best-F1 thresholds, confusion matrix, label review")
    n.add_argument("--gt", required=True)
    n.add_argument("--pred", required=True, help="COCO results JSON (out-of-fold predictions, of any tool)")
    n.add_argument("--images", help="folder the file_name entries are relative to: galleries in OUT/gallery/")
    n.add_argument("--out", required=True, help="folder for tide.json, thresholds.json, confusion.csv, review.csv")
    n.set_defaults(func=_analyze)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        msg = str(err).replace("\n", "\n  ")
        print(f"detfold: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
