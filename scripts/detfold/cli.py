"""The ``detfold`` command: the library's stages outside Snakemake.

    detfold audit ANNOTATIONS --images DIR --out DIR [--overrides CSV] [--check tiny=4:drop_box]
    detfold import voc|yolo SOURCE [--images DIR] [--classes FILE] --out COCO.json
    detfold split ANNOTATIONS --k 5 --seed 42 --method balanced [--group-by auto --images DIR] --out folds.csv
    detfold evaluate --gt GT.json --pred PRED.json [--json OUT]
    detfold fuse --gt GT.json --pred A.json B.json [--method wbf ...] --out FUSED.json   (alias: detfold ensemble)
    detfold analyze --gt GT.json --pred PRED.json [--images DIR] --out DIR

Bad input ends with one ``detfold: error: ...`` line naming the file or option and the value
(exit 2): a bad option value, an option that would do nothing, an input that is missing, a folder
or empty, an output that would overwrite an input or cannot be written. Nothing is written then.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detfold import __version__

if TYPE_CHECKING:
    from detfold.audit.checks import AuditPolicy
    from detfold.core.coco import Coco

log = logging.getLogger("detfold")


class UsageError(ValueError):
    """A command line argparse refuses (an unknown option, a value of the wrong type)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are detfold's one line naming the option (see ``main``)."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper limit when ``high`` is None)."""
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {text!r}")
        return value

    return parse


def _same_file(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _check_output(option: str, path: str, writes: Iterable[str | Path], inputs: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming ``option`` when ``path`` cannot be the output: one of the
    files it ``writes`` is an input (``inputs``: option -> path or paths), a folder stands where
    a file is written, a file where a folder should be, or the folder it goes into is not
    writable. Missing folders are created when the output is written."""
    for name, given in inputs.items():
        for other in [given] if isinstance(given, str | Path) else given or []:
            if any(_same_file(written, other) for written in writes):
                raise ValueError(f"{option} {path} would overwrite {other}, given as {name}: give another path")
    for written in writes:
        target = Path(written)
        if target.is_dir():
            raise ValueError(f"{option} {path}: {target} is a folder; give the path of the file to write")
        for parent in target.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise ValueError(f"{option} {path}: the folder {parent} is not writable")
                break


def _check_folder(option: str, path: str | None) -> None:
    """An input folder (``--images``) that is missing or a file: ``ValueError`` naming ``option``."""
    if path is not None and not Path(path).is_dir():
        raise ValueError(f"{option} {path}: {'not a folder' if Path(path).exists() else 'no such folder'}")


def _ground_truth(path: str, purpose: str, boxes: bool = True, sizes: bool = False) -> Coco:
    """``--gt``: a checked COCO file with images (and, ``boxes``, annotations): an empty one
    would give an empty or undefined result, so it is refused naming what ``purpose`` needs."""
    from detfold.core.coco import load_coco, require_content

    return require_content(
        load_coco(path, require_annotations=boxes, require_sizes=sizes), purpose, boxes, f"--gt {path}"
    )


def _audit(args: argparse.Namespace) -> None:
    from detfold.audit import checks
    from detfold.audit.stage import audit_splits, write_audit
    from detfold.core.coco import load_coco, write_coco

    out = Path(args.out)
    names = ("annotations.json", "findings.csv", "summary.json", "gallery")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give the folder to write {', '.join(names)} into")
    _check_output("--out", args.out, [out / n for n in names[:3]], {"ANNOTATIONS": args.annotations})
    _check_folder("--images", args.images)
    policy = _parse_checks(args.check)
    coco = load_coco(args.annotations)
    decisions = checks.read_overrides(args.overrides)
    before, images = {"train": coco}, {"train": args.images}
    after, findings = audit_splits(before, images, policy, decisions)
    write_coco(after["train"], out / "annotations.json")
    write_audit(before, after, findings, images, out / "findings.csv", out / "summary.json", out / "gallery")
    dropped = len(coco.annotations) - len(after["train"].annotations)
    print(f"{len(findings)} findings; {dropped} boxes dropped; wrote {out}/")


def _parse_checks(specs: list[str] | None) -> AuditPolicy:
    """``name=threshold``, ``name=threshold:action`` or ``name=:action`` -> the audit policy;
    each ``--check`` checked by :func:`detfold.audit.checks.check_rule`, named as given."""
    from detfold.audit import checks

    policy = checks.AuditPolicy()
    given: set[str] = set()
    for spec in specs or []:
        option = f"--check {spec!r}"
        name, _, value = spec.partition("=")
        threshold, _, action = value.partition(":")
        if not threshold and not action:
            raise ValueError(
                f"{option} changes nothing: give NAME=THRESHOLD, NAME=:ACTION or NAME=THRESHOLD:ACTION "
                "(e.g. tiny=4, empty_image=:drop_image, duplicate=0.7:drop_box)"
            )
        if name in given:
            raise ValueError(f"{option}: check {name!r} is given twice; give each check once")
        given.add(name)
        rule: dict[str, Any] = {"action": action} if action else {}
        if threshold:
            try:
                rule["threshold"] = float(threshold)
            except ValueError:
                raise ValueError(f"{option}: threshold must be a number, got {threshold!r}") from None
        policy.rules[name] = checks.check_rule(name, rule, option)
    return policy


def _import(args: argparse.Namespace) -> None:
    from detfold.audit.stage import run_import

    if args.format == "yolo" and not (args.images and args.classes):
        raise ValueError("import yolo needs --images DIR and --classes FILE")
    if args.format == "yolo" and args.difficult is not None:
        raise ValueError(f"--difficult {args.difficult}: YOLO labels have no difficult flag (the option is for voc)")
    run_import(args.format, args.source, args.images, args.classes, args.out, args.difficult or "ignore")
    print(f"imported {args.source}: {args.out}")


#: the config keys in the library's messages, as ``detfold split`` names them
SPLIT_OPTIONS = {"folds.group_by": "--group-by", "folds.k=": "--k ", "folds.k": "--k", "folds.method": "--method"}


def _split(args: argparse.Namespace) -> None:
    from detfold.core.config import schema_defaults
    from detfold.folds.stage import run_split

    if args.images is not None and args.group_by != "auto":
        raise ValueError(f"--images {args.images} does nothing without --group-by auto (it hashes the images)")
    if args.group_by == "auto" and args.images is None:
        raise ValueError("--group-by auto needs --images DIR: the images are hashed to find near-duplicates")
    _check_folder("--images", args.images)
    out = Path(args.out)
    if out.is_dir() or not out.name:
        raise ValueError(f"--out {args.out}: is a folder; give the CSV file to write (e.g. {out / 'folds.csv'})")
    balance = out.with_name(out.stem + ".balance.csv")
    group_csv = args.group_by[4:] if (args.group_by or "").startswith("csv:") else None
    _check_output("--out", args.out, [out, balance], {"ANNOTATIONS": args.annotations, "--group-by": group_csv})
    folds = schema_defaults()["folds"]  # the settings the command has no option for
    try:
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
            out_balance=str(balance),
        )
    except ValueError as err:  # the library names config keys: name the options instead
        message = str(err)
        for key, option in SPLIT_OPTIONS.items():
            message = message.replace(key, option)
        raise ValueError(message) from None
    print(f"wrote {out} and {balance.name}: images per fold {summary['fold_images']}")
    print(
        f"max deviation from 1/K: box share {summary['max_box_share_deviation']:.4f}, "
        f"image share {summary['max_image_share_deviation']:.4f}"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from detfold.core.io import read_json, write_json
    from detfold.evaluate.stage import evaluate_file

    if args.json is not None:
        _check_output("--json", args.json, [args.json], {"--gt": args.gt, "--pred": args.pred})
    gt = _ground_truth(args.gt, "to score the predictions against")
    _, result = evaluate_file(gt, args.pred, read=read_json)  # a user's file: never deleted
    if args.json:
        write_json(args.json, result)
    rows = list(result["stats"].items()) + [(f"AP[{n}]", c["AP"]) for n, c in result["per_class"].items()]
    for name, value in rows:
        print(f"{name:12s} {'n/a' if value is None else format(value, '.4f')}")


def _fuse(args: argparse.Namespace) -> None:
    from detfold.core.coco import check_detection_ids, load_detections
    from detfold.core.io import write_json
    from detfold.ensemble.fusion import fuse_members, fusion_params

    check_fusion_args(args)
    _check_output("--out", args.out, [args.out], {"--gt": args.gt, "--pred": args.pred})
    gt = _ground_truth(args.gt, "to fuse the predictions on", boxes=False, sizes=True)
    members = [load_detections(path) for path in args.pred]
    for path, member in zip(args.pred, members, strict=True):
        check_detection_ids(gt, member, path)
    if len(members) == 1:
        log.warning("one --pred file (%s): nothing to fuse, written as it is", args.pred[0])
    fused = fuse_members(members, gt.images, fusion_params(vars(args)), args.max_per_img)
    write_json(args.out, fused.to_results())
    print(f"fused {len(args.pred)} prediction files into {len(fused)} boxes: {args.out}")


def _analyze(args: argparse.Namespace) -> None:
    from detfold.analyze.analysis import write_analysis
    from detfold.analyze.tide import ERROR_TYPES
    from detfold.core.coco import check_detection_ids, load_detections

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give the folder to write the analysis into")
    names = ("tide.json", "thresholds.json", "confusion.csv", "review.csv")
    _check_output("--out", args.out, [out / n for n in names], {"--gt": args.gt, "--pred": args.pred})
    _check_folder("--images", args.images)
    gt = _ground_truth(args.gt, "to analyse the predictions against")
    preds = load_detections(args.pred)
    check_detection_ids(gt, preds, args.pred)
    result = write_analysis(gt.data, preds, args.out, images_dir=args.images)
    print(f"TIDE mAP50 {result['mAP']:.4f}; dAP " + " ".join(f"{k} {result['main'][k]:.4f}" for k in ERROR_TYPES))
    galleries = ", gallery/" if args.images is not None else ""
    print(f"wrote {args.out}/ (tide.json, thresholds.json, confusion.csv, review.csv{galleries})")


#: ``detfold fuse``'s options that set the fusion (None: not given; the config's default then)
FUSION_OPTIONS = ("method", "iou_thr", "skip_box_thr", "conf_type", "weights", "max_per_img", "class_agnostic")


def check_fusion_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the option whose value cannot make sense for a fusion, or that
    would do nothing (an option the method ignores; any fusion option with one ``--pred``
    file, which is written as it is); then fill in the defaults of the options not given. In
    the alias ``detfold ensemble``, ``--images`` still names the COCO file (with a warning)."""
    from detfold.core.config import schema_defaults
    from detfold.ensemble.fusion import IGNORED_BECAUSE, check_fusion, ignored_params

    if args.images is not None:
        if args.command != "ensemble":
            raise ValueError(
                f"--images {args.images}: give the COCO file of the images as --gt (--images is an image folder)"
            )
        log.warning("--images %s: use --gt for the COCO file (--images is an image folder)", args.images)
        args.gt = args.images
    if args.gt is None:
        raise ValueError("--gt GT.json is required: the COCO file whose images and categories are fused")
    given = [name for name in FUSION_OPTIONS if getattr(args, name) not in (None, False)]
    defaults = schema_defaults()["ensemble"]
    for name in FUSION_OPTIONS:
        if getattr(args, name) is None and name != "weights":
            setattr(args, name, defaults[name])
    check_fusion(args.method, args.conf_type, f"detfold {args.command}")
    options = {name: "--" + name.replace("_", "-") for name in FUSION_OPTIONS}
    if args.max_per_img < 1:
        raise ValueError(f"--max-per-img must be >= 1, got {args.max_per_img}")
    for name in ("iou_thr", "skip_box_thr"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise ValueError(f"{options[name]} must be in [0, 1], got {value}")
    if args.weights is not None:
        if len(args.weights) != len(args.pred):
            raise ValueError(f"--weights: {len(args.weights)} weights for {len(args.pred)} prediction files")
        bad = [w for w in args.weights if not w > 0 or w == float("inf")]
        if bad:
            raise ValueError(f"--weights must be finite numbers > 0, got {args.weights}")
    if len(args.pred) == 1 and given:
        raise ValueError(
            f"{options[given[0]]} does nothing with one --pred file ({args.pred[0]}), which is written as it is: "
            "give two or more files to fuse"
        )
    ignored = ignored_params(args.method, given)
    if ignored:
        name = ignored[0]
        value = getattr(args, name)
        raise ValueError(f"{options[name]} {value} does nothing with --method {args.method}: {IGNORED_BECAUSE[name]}")


def _add_fuse(sub: Any, fusion: dict[str, Any]) -> None:
    """The ``fuse`` command (alias ``ensemble``); its defaults and choices are the schema's
    ``ensemble`` section's (``fusion``)."""

    def default(name: str) -> str:
        return f"default: {fusion[name]['default']}"

    methods, conf_types = " | ".join(fusion["method"]["enum"]), " | ".join(fusion["conf_type"]["enum"])
    f = sub.add_parser("fuse", aliases=["ensemble"], help="fuse several COCO results files (WBF, NMS, soft-NMS, NMW)")
    f.add_argument("--gt", help="COCO file of the images (id, width, height) and categories the predictions are of")
    f.add_argument("--images", help=argparse.SUPPRESS)  # `detfold ensemble`'s old name of --gt
    f.add_argument("--pred", required=True, nargs="+", help="COCO results files, one per model")
    f.add_argument("--method", help=f"{methods}; {default('method')}")
    f.add_argument("--iou-thr", type=float, help=f"wbf, nmw, nms (not soft_nms: Gaussian); {default('iou_thr')}")
    f.add_argument("--skip-box-thr", type=float, help=default("skip_box_thr"))
    f.add_argument("--conf-type", help=f"wbf only: {conf_types}; {default('conf_type')}")
    f.add_argument("--weights", type=float, nargs="+", help="one weight per --pred file (default: equal)")
    f.add_argument("--max-per-img", type=int, help=default("max_per_img"))
    f.add_argument("--class-agnostic", action="store_true", help="fuse boxes across classes")
    f.add_argument("--out", required=True)
    f.set_defaults(func=_fuse)


def parser() -> argparse.ArgumentParser:
    from detfold.core.config import load_schema
    from detfold.folds.assign import MAX_SEED

    p = _Parser(prog="detfold", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"detfold {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    schema = load_schema()["properties"]  # the config's defaults and choices

    a = sub.add_parser("audit", help="check a COCO file's boxes and images; write cleaned file and findings")
    a.add_argument("annotations")
    a.add_argument("--images", required=True, help="folder the file_name entries are relative to")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--overrides", help="CSV of a person's decisions: ann_id,image_id,decision(keep|drop),note")
    a.add_argument(
        "--check",
        action="append",
        metavar="NAME=THRESHOLD[:ACTION]",
        help="change one check, e.g. tiny=4, empty_image=:drop_image or duplicate=0.7:drop_box (repeatable)",
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
        choices=schema["data"]["properties"]["difficult"]["enum"],
        help="VOC boxes marked <difficult>1</difficult>: ignore (default: kept with iscrowd 1, ignored in "
        "training and evaluation), keep (ordinary boxes) or drop",
    )
    i.add_argument("--out", required=True, help="COCO JSON to write")
    i.set_defaults(func=_import)

    folds = schema["folds"]["properties"]
    s = sub.add_parser("split", help="class-stratified K-fold assignment of images")
    s.add_argument("annotations")
    s.add_argument("--k", type=_integer(2), default=folds["k"]["default"], help="default: %(default)s")
    seed = _integer(0, MAX_SEED)
    s.add_argument("--seed", type=seed, default=schema["seed"]["default"], help="default: %(default)s")
    s.add_argument("--method", default=folds["method"]["default"], choices=folds["method"]["enum"])
    s.add_argument("--group-by", help="regex:PATTERN | field:NAME | csv:PATH | auto (near-duplicate images)")
    s.add_argument("--images", help="image folder (needed by --group-by auto, and only used by it)")
    s.add_argument("--out", required=True, help="CSV: image_id,file_name,fold (a .balance.csv is written beside it)")
    s.set_defaults(func=_split)

    e = sub.add_parser("evaluate", help="COCO bbox metrics of predictions against ground truth")
    e.add_argument("--gt", required=True)
    e.add_argument("--pred", required=True, help="COCO results JSON")
    e.add_argument("--json", help="also write all metrics to this JSON file")
    e.set_defaults(func=_evaluate)

    _add_fuse(sub, schema["ensemble"]["properties"])

    n = sub.add_parser("analyze", help="TIDE error breakdown, best-F1 thresholds, confusion matrix, label review")
    n.add_argument("--gt", required=True)
    n.add_argument("--pred", required=True, help="COCO results JSON (out-of-fold predictions, of any tool)")
    n.add_argument("--images", help="folder the file_name entries are relative to: galleries in OUT/gallery/")
    n.add_argument("--out", required=True, help="folder for tide.json, thresholds.json, confusion.csv, review.csv")
    n.set_defaults(func=_analyze)
    return p


def _message(err: Exception) -> str:
    """The text of ``err`` for the one error line: an ``OSError`` without its ``[Errno N]``."""
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return str(err)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
        args.func(args)
    except (ValueError, OSError) as err:
        msg = _message(err).replace("\n", "\n  ")
        print(f"detfold: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
