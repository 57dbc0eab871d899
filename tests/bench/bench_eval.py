"""Benchmark: COCO bbox evaluation from the two JSON files to the 12 stats, one run.

    .venv/bin/python tests/bench/bench_eval.py [--images 5000]

Issue 17's set: 5,000 synthetic images, about 40,000 ground-truth boxes and 280,000 detections
(tests/bench/bench_analysis.py's generator, seed 0), written as COCO JSON files. Each evaluator
runs in its own fresh process, timed in-process from reading the two files to the 12 stats
(library import included); ``detfold evaluate`` is also timed as a whole process, interpreter
start included. The goal: detfold in-process within 1.2x hotcoco's own in-process time. Every
evaluator's 12 stats are compared with pycocotools' bit for bit. Evaluators that are not
installed are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


def run_pycocotools(gt: dict, preds: list[dict], module: str) -> np.ndarray:
    if module == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Eval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Eval
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = copy.deepcopy(gt)
        api.createIndex()
        ev = Eval(api, api.loadRes(copy.deepcopy(preds)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


IN_PROCESS = {
    "pycocotools": "from pycocotools.coco import COCO\nfrom pycocotools.cocoeval import COCOeval",
    "faster-coco-eval": "from faster_coco_eval import COCO\nfrom faster_coco_eval import COCOeval_faster as COCOeval",
    "hotcoco": "from hotcoco import COCO, COCOeval",
    "ultrafast-pycocotools": "from ultrafast_pycocotools import COCO, COCOeval",
}
TIMED = """
import contextlib, io, json, sys, time
start = time.perf_counter()
{imports}
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    gt = COCO(sys.argv[1])
    ev = COCOeval(gt, gt.loadRes(sys.argv[2]), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
print(json.dumps({{"seconds": time.perf_counter() - start, "stats": [float(v).hex() for v in ev.stats]}}))
"""
DETFOLD_IN_PROCESS = """
import json, sys, time
start = time.perf_counter()
from detfold.core.coco import load_coco, load_detections
from detfold.evaluate.cocoeval import evaluate_bbox
gt, det = load_coco(sys.argv[1]), load_detections(sys.argv[2])
result = evaluate_bbox(gt.data, det)
print(json.dumps({"seconds": time.perf_counter() - start, "stats": [float(v).hex() for v in result.stats]}))
"""


def _run(code: str, gt: Path, pred: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(gt), str(pred)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    from bench_analysis import synthetic as issue17_set

    gt, preds = issue17_set(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = Path(tmp) / "gt.json", Path(tmp) / "pred.json"
        gt_path.write_text(json.dumps(gt))
        pred_path.write_text(json.dumps(preds))
        modules = {"pycocotools": "pycocotools", "faster-coco-eval": "faster_coco_eval", "hotcoco": "hotcoco"}
        modules["ultrafast-pycocotools"] = "ultrafast_pycocotools"
        rows = {}
        for name, module in modules.items():
            if _installed(module):
                rows[name] = _run(TIMED.format(imports=IN_PROCESS[name]), gt_path, pred_path)
        rows["detfold (load_detections + evaluate_bbox)"] = _run(DETFOLD_IN_PROCESS, gt_path, pred_path)
        detfold = Path(sys.executable).with_name("detfold")
        start = time.perf_counter()
        out = subprocess.run([str(detfold), "evaluate", "--gt", gt_path, "--pred", pred_path], capture_output=True)
        whole = time.perf_counter() - start
        assert out.returncode == 0, out.stderr.decode()
    reference = rows["pycocotools"]
    print(
        f"COCO bbox evaluation: {len(gt['images'])} images, {len(gt['annotations'])} GT boxes, {len(preds)} detections"
    )
    print()
    print("| evaluator | seconds | x pycocotools | 12 stats equal pycocotools |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        same = "bit-identical" if row["stats"] == reference["stats"] else "NO"
        print(f"| {name} | {row['seconds']:.2f} | {reference['seconds'] / row['seconds']:.1f} | {same} |")
    ratio = reference["seconds"] / whole
    label = "`detfold evaluate`, whole process (interpreter start, files, checks, printing)"
    print(f"| {label} | {whole:.2f} | {ratio:.1f} | (the same evaluator) |")
    if "hotcoco" in rows:
        share = rows["detfold (load_detections + evaluate_bbox)"]["seconds"] / rows["hotcoco"]["seconds"]
        verdict = "met" if share <= 1.2 else "NOT met"
        print()
        print(f"goal: detfold in-process <= 1.2x hotcoco in-process: {share:.2f}x, {verdict}")


if __name__ == "__main__":
    main()
