"""Benchmark: evaluation and fusion at full load, each workflow stage in its own process.

    .venv/bin/python tests/bench/bench_load.py [--images 20000] [--models 5] [--boxes 100] [--folds 5]
        [--test-images 4000] [--search config|small] [--stop-gb 14] [--workdir DIR] [--stages NAME ...]

Synthetic but realistic files, written once (not timed) as the workflow writes them
(``detfold.core.io.write_json``): a 640x480 training set of ``--images`` images with 5-15 ground-truth
boxes each (10 classes), split into ``--folds`` val.json files; per model and fold its
out-of-fold predictions (``--boxes`` per image: each object found about three times with
jitter, a few with the wrong class, the rest false positives; scores >= 0.05, sorted, rounded
as mmdet_predict writes them); and a labelled test set of ``--test-images`` images predicted by
every model's ``--folds`` fold models. At the defaults that is 10 M out-of-fold boxes and 10 M
test boxes.

Then detfold's real stage functions run on those files as the rule scripts call them
(scripts/evaluate.py, ensemble_select.py, ensemble_test.py), with the ``ensemble`` settings of
config/config.yaml completed by the schema defaults: ``run_evaluate`` for one model (per-fold
and pooled OOF metrics with bootstrap intervals, test metrics per fold; the workflow runs one
such job per model), ``run_ensemble_select`` (both fusion steps searched on the blend split,
1 / (K + 1) of the training images predicted by every fold model of every model, with nested
selection and bootstrap intervals) and ``run_ensemble_test`` (the chosen plan on the test set,
every candidate scored, intervals). Each runs in a fresh
Python process; the table gives its wall time, its CPU time (user + system, its worker
processes included: the honest number on a busy machine) and its peak memory: the
proportional set size (PSS) of the stage and its forked workers together, sampled twice a
second (pages the workers share copy-on-write counted once; the sum of their RSS would count
them per process). A stage whose memory passes ``--stop-gb`` is killed (the machine is shared). ``--search small``
replaces the grid by 4 combinations. The numba kernels are compiled (or loaded from their disk
cache) before timing, as after a workflow's first job. With ``--workdir`` the files stay, and a
later run of the same sizes reuses the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from detfold.core.io import read_json, write_json  # noqa: E402
from detfold.ensemble.plan import grid  # noqa: E402

WIDTH, HEIGHT, N_CLASSES = 640, 480, 10
SMALL_SEARCH = {"method": ["wbf", "nms"], "iou_thr": [0.5, 0.6], "skip_box_thr": [0.0], "conf_type": ["avg"]}
CHILD = (
    "import json, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "import importlib\n"
    "from detfold.core.logs import log_to\n"
    "log_to(sys.argv[3])\n"
    "name = sys.argv[2]  # run_<stage>[_...], in detfold.<stage>.stage\n"
    "stage = importlib.import_module('detfold.' + name.split('_')[1] + '.stage')\n"
    "getattr(stage, name)(**json.loads(sys.argv[4]))\n"
)


def ground_truth(n_images: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Flat GT arrays: image position, category id (1..10), xywh boxes inside the image."""
    per_image = rng.integers(5, 16, n_images)
    image = np.repeat(np.arange(n_images), per_image)
    wh = np.exp(rng.uniform(np.log(8), np.log(250), (len(image), 2)))  # small, medium and large
    wh = np.minimum(wh, [WIDTH - 1, HEIGHT - 1])
    xy = rng.uniform(0, 1, (len(image), 2)) * ([WIDTH, HEIGHT] - wh)
    return {"image": image, "cat": rng.integers(1, N_CLASSES + 1, len(image)), "box": np.hstack([xy, wh])}


def coco_gt(gt: dict[str, np.ndarray], ids: np.ndarray, keep: np.ndarray | None = None) -> dict[str, Any]:
    """A COCO dict of the images at positions ``keep`` (all when None), ids ``ids[pos]``."""
    positions = np.arange(len(ids)) if keep is None else np.sort(keep)
    rows = np.flatnonzero(np.isin(gt["image"], positions))
    images = [
        {"id": int(ids[p]), "file_name": f"{int(ids[p]):06d}.jpg", "width": WIDTH, "height": HEIGHT} for p in positions
    ]
    annotations = [
        {
            "id": int(r) + 1,
            "image_id": int(ids[gt["image"][r]]),
            "category_id": int(gt["cat"][r]),
            "bbox": [round(float(v), 2) for v in gt["box"][r]],
            "area": round(float(gt["box"][r, 2] * gt["box"][r, 3]), 2),
            "iscrowd": 0,
        }
        for r in rows
    ]
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, N_CLASSES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def predictions(
    gt: dict[str, np.ndarray], ids: np.ndarray, positions: np.ndarray, n_boxes: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Exactly ``n_boxes`` COCO results per image at ``positions``: every object detected three
    times (jittered, 5% with the wrong class), the rest false positives; by image, score desc."""
    rows = np.flatnonzero(np.isin(gt["image"], positions))
    hits = np.repeat(rows, 3)
    size = np.repeat(gt["box"][rows, 2:], 3, axis=0)
    box = gt["box"][hits] + rng.normal(0, 1, (len(hits), 4)) * np.hstack([size, size]) * rng.choice(
        [0.04, 0.15], (len(hits), 1)
    )
    cat = np.where(rng.random(len(hits)) < 0.05, rng.integers(1, N_CLASSES + 1, len(hits)), gt["cat"][hits])
    score = np.clip(rng.beta(4, 2, len(hits)), 0.05, 1.0)
    image = gt["image"][hits]
    n_hits = np.bincount(image, minlength=len(ids))[positions]
    n_fp = n_boxes - n_hits
    if (n_fp < 0).any():
        raise ValueError(f"--boxes {n_boxes} is less than three per ground-truth box (up to 45)")
    fp_image = np.repeat(positions, n_fp)
    fp_wh = np.exp(rng.uniform(np.log(8), np.log(250), (len(fp_image), 2)))
    fp_xy = rng.uniform(0, 1, (len(fp_image), 2)) * ([WIDTH, HEIGHT] - np.minimum(fp_wh, [WIDTH - 1, HEIGHT - 1]))
    image = np.concatenate([image, fp_image])
    box = np.vstack([box, np.hstack([fp_xy, fp_wh])])
    cat = np.concatenate([cat, rng.integers(1, N_CLASSES + 1, len(fp_image))])
    score = np.concatenate([score, rng.uniform(0.05, 0.6, len(fp_image))])
    x1 = np.clip(box[:, 0], 0, WIDTH - 1)  # clipped to the image, at least 1 px, as mmdet_predict writes
    y1 = np.clip(box[:, 1], 0, HEIGHT - 1)
    x2 = np.clip(box[:, 0] + np.abs(box[:, 2]), x1 + 1, WIDTH)
    y2 = np.clip(box[:, 1] + np.abs(box[:, 3]), y1 + 1, HEIGHT)
    xywh = np.round(np.column_stack([x1, y1, x2 - x1, y2 - y1]), 3)
    score = np.round(score, 6)
    order = np.lexsort((-score, image))
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": b, "score": s}
        for i, c, b, s in zip(
            ids[image[order]].tolist(), cat[order].tolist(), xywh[order].tolist(), score[order].tolist(), strict=True
        )
    ]


def generate(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write every input file under ``root``; return the paths and counts (also written last,
    as files.json: a later run with the same sizes reuses the files)."""
    sizes = {k: getattr(args, k) for k in ("images", "models", "boxes", "folds", "test_images")}
    if (root / "files.json").exists() and read_json(root / "files.json")["sizes"] == sizes:
        return read_json(root / "files.json")
    rng = np.random.default_rng(0)
    models = [f"model{m}" for m in range(args.models)]
    train_ids = np.arange(1, args.images + 1)
    test_ids = np.arange(1, args.test_images + 1)
    train, test = ground_truth(args.images, rng), ground_truth(args.test_images, rng)
    write_json(root / "annotations.json", coco_gt(train, train_ids))
    write_json(root / "test.json", coco_gt(test, test_ids))
    fold_of = rng.permutation(args.images) % (args.folds + 1)  # fold K: the blend split (1 / (K + 1))
    blend = np.flatnonzero(fold_of == args.folds)
    write_json(root / "blend.json", coco_gt(train, train_ids, blend))
    files: dict[str, Any] = {
        "sizes": sizes,
        "val": [],
        **{s: {m: [] for m in models} for s in ("oof", "test", "blend")},
    }
    for fold in range(args.folds):
        val = np.flatnonzero(fold_of == fold)
        files["val"].append(str(root / f"fold{fold}/val.json"))
        write_json(files["val"][-1], coco_gt(train, train_ids, val))
        for m in models:
            for split, gt, ids, positions in (
                ("oof", train, train_ids, val),
                ("blend", train, train_ids, blend),
                ("test", test, test_ids, np.arange(args.test_images)),
            ):
                path = root / f"predict/{m}/fold{fold}/{split}.json"
                write_json(path, predictions(gt, ids, positions, args.boxes, rng))
                files[split][m].append(str(path))
    files["n_gt"] = len(train["image"])
    files["n_blend"] = len(blend)
    write_json(root / "files.json", files)
    return files


def ensemble_settings(search: str) -> dict[str, Any]:
    """config/config.yaml's ensemble settings with the schema defaults filled in, as Snakemake
    validates them; ``search='small'`` swaps in a 4-combination grid."""
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"), set_default=True)
    settings = dict(config["ensemble"])
    if search == "small":
        settings["search"] = {**settings["search"], **SMALL_SEARCH}
    return settings


def warm_kernels() -> None:
    """Compile (or load from numba's disk cache) the fusion and matching kernels."""
    from detfold.ensemble.fusion import METHODS, fuse_members
    from detfold.evaluate.cocoeval import evaluate_bbox

    gt = ground_truth(3, np.random.default_rng(1))
    ids = np.arange(1, 4)
    data, preds = coco_gt(gt, ids), predictions(gt, ids, np.arange(3), 60, np.random.default_rng(2))
    evaluate_bbox(data, preds)
    for method in METHODS:
        fuse_members([preds, preds], data["images"], {"method": method}, max_per_img=100)


def _tree_pss_kb(pid: int) -> int:
    """Proportional set size (KiB) of ``pid`` and all its descendants (forked workers share
    pages copy-on-write: the sum of their RSS would count those pages once per process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in rollup if line.startswith("Pss:")), 0)
    return total


def run_stage(name: str, kwargs: dict[str, Any], log: Path, stop_gb: float) -> tuple[float, float, float, str]:
    """Run ``detfold.<stage>.stage.<name>(**kwargs)``  in a new process: (wall s, CPU s of it and its
    workers, peak memory GB (PSS of it and its workers, sampled twice a second), status)."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO / "scripts"), name, str(log), json.dumps(kwargs)],
        stderr=subprocess.DEVNULL,
    )
    stopped = threading.Event()
    peak_kb = [0]

    def watch() -> None:  # memory of the process tree, twice a second; kill past the limit
        while proc.returncode is None:
            kb = _tree_pss_kb(proc.pid)
            peak_kb[0] = max(peak_kb[0], kb)
            if kb > stop_gb * 1024**2:
                stopped.set()
                proc.kill()
                return
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    _, code, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(code)
    wall = time.perf_counter() - t
    cpu = usage.ru_utime + usage.ru_stime  # the workers it waited for included
    peak = max(peak_kb[0], usage.ru_maxrss) / 1024**2  # KiB on Linux
    if stopped.is_set():
        return wall, cpu, peak, f"stopped above {stop_gb:g} GB"
    return wall, cpu, peak, "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode}, see {log})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000, help="training images (all out-of-fold)")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--boxes", type=int, default=100, help="detections per image and prediction file")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--test-images", type=int, default=4000)
    parser.add_argument("--search", choices=("config", "small"), default="config", help="the search grid")
    parser.add_argument("--processes", type=int, default=2, help="processes of the ensemble search (rule: threads)")
    parser.add_argument("--stop-gb", type=float, default=14.0, help="kill a stage whose RSS passes this")
    parser.add_argument("--limit-gb", type=float, default=24.0, help="the memory budget of the verdict")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=("run_evaluate", "run_ensemble_select", "run_ensemble_test"),
        help="run only these stages (run_ensemble_test needs run_ensemble_select's outputs in --workdir)",
    )
    parser.add_argument(
        "--workdir", help="keep the files here, reuse inputs of the same sizes (default: a temporary folder)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        t = time.perf_counter()
        files = generate(root / "inputs", args)
        generated = time.perf_counter() - t
        settings = ensemble_settings(args.search)
        warm_kernels()
        out, logs = root / "results", root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        first = sorted(files["oof"])[0]
        n_oof, n_test = args.images * args.boxes, args.test_images * args.boxes
        test_json = str(root / "inputs/test.json")
        combos = len(grid(settings["search"], args.models)) + 1  # the default first
        n_blend = files["n_blend"] * args.boxes
        stages = [
            (
                "run_evaluate",
                f"1 model: {args.folds} val + {args.folds} OOF files ({n_oof:,} boxes), "
                f"{args.folds} test files ({args.folds * n_test:,} boxes)",
                {
                    "model": first,
                    "folds": list(range(args.folds)),
                    "val_jsons": files["val"],
                    "oof_preds": files["oof"][first],
                    "test_json": test_json,
                    "test_preds": files["test"][first],
                    "out": str(out / f"eval/{first}/metrics.json"),
                    "out_pr_curves": str(out / f"eval/{first}/pr_curves.csv"),
                    "seed": 42,
                },
            ),
            (
                "run_ensemble_select",
                f"{args.models} models x {args.folds} folds x {files['n_blend']:,} blend images "
                f"({args.models * args.folds * n_blend:,} boxes), {combos} combinations per step, nested",
                {
                    "blend_json": str(root / "inputs/blend.json"),
                    "train_json": str(root / "inputs/annotations.json"),
                    "model_blend": files["blend"],
                    "settings": settings,
                    "seed": 42,
                    "out_search": str(out / "ensemble/search.csv"),
                    "out_best": str(out / "ensemble/best.json"),
                    "out_selection": str(out / "ensemble/selection.json"),
                    "out_blend": str(out / "ensemble/blend_predictions.json"),
                    "processes": args.processes,
                },
            ),
            (
                "run_ensemble_test",
                f"{args.models} models x {args.folds} folds x {args.test_images:,} test images "
                f"({args.models * args.folds * n_test:,} boxes)",
                {
                    "test_json": test_json,
                    "model_test": files["test"],
                    "settings": settings,
                    "best_json": str(out / "ensemble/best.json"),
                    "selection_json": str(out / "ensemble/selection.json"),
                    "seed": 42,
                    "out_preds": str(out / "ensemble/test.json"),
                    "out_metrics": str(out / "ensemble/metrics.json"),
                    "out_submission": str(out / "ensemble/submission.csv"),
                },
            ),
        ]
        rows = []
        stages = [s for s in stages if not args.stages or s[0] in args.stages]
        for name, inputs, kwargs in stages:
            wall, cpu, peak, status = run_stage(name, kwargs, logs / f"{name}.log", args.stop_gb)
            rows.append((name, inputs, wall, cpu, peak, status))
            if status != "ok":
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    print(
        f"load: {args.images:,} training images ({files['n_gt']:,} GT boxes, {args.folds} folds) x {args.models} "
        f"models x {args.boxes} boxes; test {args.test_images:,} images; search grid: {args.search}"
    )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPU cores, {mem_gb:.1f} GB RAM, load average at the end {load} (1/5/15 min)")
    print(f"input files generated or reused in {generated:.0f} s (not counted)")
    print()
    print("| stage | inputs | wall s | CPU s | peak memory GB (PSS, with workers) | status |")
    print("|---|---|---|---|---|---|")
    for name, inputs, wall, cpu, peak, status in rows:
        print(f"| {name} | {inputs} | {wall:.1f} | {cpu:.1f} | {peak:.2f} | {status} |")
    print()
    peak = max(r[4] for r in rows)
    ok = len(rows) == len(stages) and all(r[5] == "ok" for r in rows) and peak < args.limit_gb
    total = sum(r[2] for r in rows)
    verdict = "PASS" if ok else "FAIL"
    print(
        f"verdict: {verdict}: every stage {'completed' if ok else 'did not complete'}, highest peak {peak:.2f} GB "
        f"{'<' if peak < args.limit_gb else '>='} {args.limit_gb:g} GB, {total:.0f} s in all"
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
