"""The model-zoo matrix: MMDetection's own configs through detfold's real rule functions.

Each family's row: a stand-in "COCO checkpoint" (the zoo config's own model, 80 classes, so the
head's shape mismatch on fine-tuning is real), then resolve -> fine-tune from it with
``load_from`` (2 epochs on a few tiny images, CPU) -> the last epoch removed as a kill would
leave it -> resume (must restart at epoch 2, from the job's own checkpoint) -> predict the fold's
val images (rule predict's function) -> score them (rule evaluate's function). Every step but
scoring runs in its own process, as in the workflow. Nothing is downloaded: each zoo config's
pretrained ``init_cfg`` is dropped by detfold because ``load_from`` is set.

    python tests/helpers/zoo_matrix.py                    # every family, a markdown table (README)
    python tests/helpers/zoo_matrix.py --family DETR      # one family
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "tests" / "data" / "bccd"
sys.path.insert(0, str(REPO / "scripts"))


@dataclass(frozen=True)
class Family:
    name: str
    config: str
    ci: bool = False  # runs in every CI run (the others: pytest -m zoo)
    settings: dict[str, Any] = field(default_factory=dict)


FAMILIES = (
    Family("RTMDet", "mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py"),
    Family("YOLOX", "mmdet::yolox/yolox_tiny_8xb8-300e_coco.py", ci=True),  # MultiImageMixDataset
    Family("YOLOv3", "mmdet::yolo/yolov3_d53_8xb8-320-273e_coco.py"),
    Family("SSD", "mmdet::ssd/ssd300_coco.py", settings={"img_scale": [320, 320]}),  # RepeatDataset
    Family("CenterNet", "mmdet::centernet/centernet_r18_8xb16-crop512-140e_coco.py"),
    Family("RetinaNet", "mmdet::retinanet/retinanet_r18_fpn_1x_coco.py"),
    Family("FCOS", "mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py"),
    Family("ATSS", "mmdet::atss/atss_r50_fpn_1x_coco.py"),
    Family("GFL", "mmdet::gfl/gfl_r50_fpn_1x_coco.py"),
    Family("TOOD", "mmdet::tood/tood_r50_fpn_1x_coco.py"),
    Family("Faster R-CNN", "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", ci=True),
    Family("Cascade R-CNN", "mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py"),
    Family("DETR", "mmdet::detr/detr_r18_8xb2-500e_coco.py", ci=True),
    Family("Deformable DETR", "mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py"),
    # DINO selects 900 queries among the encoder's tokens: at 160 px an image has ~400 of them
    Family("DINO", "mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py", settings={"img_scale": [320, 320]}),
    Family("RetinaNet 90k (iteration-based)", "mmdet::retinanet/retinanet_r50_fpn_90k_coco.py"),
    Family("Faster R-CNN LSJ (RepeatDataset, AMP)", "mmdet::faster_rcnn/faster-rcnn_r18_fpn_8xb8-amp-lsj-200e_coco.py"),
)
BASE_SETTINGS = {
    "epochs": 2,
    "batch_size": 2,
    "num_workers": 0,
    "img_scale": [160, 160],
    "tensorboard": False,
    "cfg_options": {"default_hooks.logger.interval": 1},  # mmengine's time per iteration, for s/iter
}
N_TRAIN, N_VAL = 4, 2
THREADS = 2


def family(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def fold_data(workdir: Path) -> tuple[Path, Path]:
    """A fold of the bundled data: ``N_TRAIN`` train and ``N_VAL`` val images (COCO files)."""
    from detfold.core.coco import load_coco, write_coco

    coco = load_coco(BCCD / "train.json")
    ids = coco.image_ids
    train, val = workdir / "train.json", workdir / "val.json"
    write_coco(coco.subset(ids[:N_TRAIN]), train)
    write_coco(coco.subset(ids[N_TRAIN : N_TRAIN + N_VAL]), val)
    return train, val


# ------------------------------------------------------------- steps (each in its own process)


def step_coco_checkpoint(config: str, out: str) -> dict[str, Any]:
    """Build the zoo config's model as published (80 COCO classes, initialised as its config
    says but without pretrained weights: nothing can be downloaded) and save it as a
    checkpoint; return its parameter count."""
    import torch
    from detfold.train.mmdet_config import pretrained_inits
    from detfold.train.mmdet_train import load_mmdet_config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    cfg = load_mmdet_config(config)
    for _, owner, key, _ in list(pretrained_inits(cfg.model)):
        owner[key] = None
    model = MODELS.build(cfg.model)
    model.init_weights()  # the config's own initialisation, as training starts it (L2Norm, heads, ...)
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": ("coco",) * 80}}}, out)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def step_train(settings: dict[str, Any], train: str, val: str, out: str, log: str) -> dict[str, Any]:
    """Rule train's function; the resolved config's adaptations as the log lists them."""
    from detfold.core.logs import log_to
    from detfold.train.mmdet_train import train_fold

    log_to(log)
    train_fold(settings, train, val, str(BCCD / "images"), f"{out}/model.pth", f"{out}/config.py", 42, THREADS)
    return {}


def step_predict(out: str, val: str, preds: str) -> dict[str, Any]:
    """Rule predict's function on the fold's val images; the score key the model reads."""
    from detfold.predict.mmdet_predict import set_test_thresholds
    from detfold.predict.stage import run_predict
    from detfold.train.mmdet_train import load_resolved_config

    run_predict(f"{out}/config.py", f"{out}/model.pth", val, str(BCCD / "images"), 0.0, 100, preds, THREADS)
    key = set_test_thresholds(load_resolved_config(f"{out}/config.py").model.test_cfg, 0.0, 100)
    return {"score_key": key}


STEPS = {"coco_checkpoint": step_coco_checkpoint, "train": step_train, "predict": step_predict}


def run_step(name: str, timeout: float = 1800, **kwargs: Any) -> dict[str, Any]:
    """One step in a fresh process; its return value, or RuntimeError with the error's last line."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from helpers import zoo_matrix as z; "
        f"print('ZOO-RESULT ' + json.dumps(z.STEPS[{name!r}](**json.loads(sys.argv[1]))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("ZOO-RESULT ")]
    if result.returncode != 0 or not lines:
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        reason = next((line for line in reversed(errors) if re.match(r"^\w*(Error|Exception)\b", line)), None)
        raise RuntimeError(f"{name}: {reason or (errors[-1] if errors else 'exit ' + str(result.returncode))}")
    return json.loads(lines[-1][len("ZOO-RESULT ") :])


# ------------------------------------------------------------------------------ one row


def iteration_seconds(work_dir: Path) -> float | None:
    """Mean of mmengine's per-iteration ``time`` after the first iteration of each run."""
    times = []
    for scalars in work_dir.rglob("scalars.json"):
        rows = [json.loads(line) for line in scalars.read_text().splitlines() if line.strip()]
        times += [r["time"] for r in rows if "time" in r][1:]
    return sum(times) / len(times) if times else None


def adaptations(log: Path) -> list[str]:
    """The ``config: ...`` lines resolve_config logged."""
    return [line.split("config: ", 1)[1] for line in log.read_text().splitlines() if " config: " in line]


def run_family(fam: Family, workdir: Path) -> dict[str, Any]:
    """One matrix row; ``status`` is ``ok`` or the step that failed and why."""
    import torch
    from detfold.evaluate.stage import run_evaluate

    workdir.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"family": fam.name, "config": fam.config.removeprefix("mmdet::"), "status": "ok"}
    step = "coco checkpoint"
    started = time.time()
    try:
        train, val = fold_data(workdir)
        coco_ckpt = workdir / "coco.pth"
        row.update(run_step("coco_checkpoint", config=fam.config, out=str(coco_ckpt)))
        settings = {"config": fam.config, **BASE_SETTINGS, **fam.settings, "load_from": str(coco_ckpt)}
        out = workdir / "fold0"
        step = "train"
        run_step("train", settings=settings, train=str(train), val=str(val), out=str(out), log=str(workdir / "a.log"))
        row["adapted"] = adaptations(workdir / "a.log")
        row["s_per_iter"] = iteration_seconds(out / "work")
        step = "resume"
        # what a kill during epoch 2 leaves: epoch 1's checkpoint, no epoch 2, no model.pth
        (out / "model.pth").unlink()
        (out / "work" / "epoch_2.pth").unlink()
        (out / "work" / "last_checkpoint").write_text(str((out / "work" / "epoch_1.pth").resolve()))
        run_step("train", settings=settings, train=str(train), val=str(val), out=str(out), log=str(workdir / "b.log"))
        resumed = (workdir / "b.log").read_text()
        if "resumed epoch: 1" not in resumed or "Epoch(train) [1]" in resumed:
            raise RuntimeError("resume: did not restart at epoch 2 from its own epoch_1.pth")
        epoch = torch.load(out / "model.pth", map_location="cpu", weights_only=True)["meta"]["epoch"]
        if epoch != 2:
            raise RuntimeError(f"resume: final model is from epoch {epoch}, not 2")
        row["resumed"] = "epoch 1 -> 2"
        step = "predict"
        preds = workdir / "oof.json"
        row.update(run_step("predict", out=str(out), val=str(val), preds=str(preds)))
        row["predictions"] = len(json.loads(preds.read_text()))
        step = "score"
        metrics = workdir / "metrics.json"
        run_evaluate(fam.name, [0], [str(val)], [str(preds)], None, [], str(metrics), out_pr_curves=None, seed=42)
        row["oof_mAP50"] = json.loads(metrics.read_text())["pooled_oof"]["mAP50"]
    except Exception as err:  # a failure is a row that says why
        message = str(err) if isinstance(err, RuntimeError) else "".join(traceback.format_exception_only(err)).strip()
        row["status"] = f"failed at {step}: {message}"
    row["wall_s"] = round(time.time() - started, 1)
    return row


def adapted_summary(lines: list[str]) -> str:
    """The table's short form of the ``config: ...`` lines (the log has them in full)."""
    out, sizing = [], 0
    for line in lines:
        if line.startswith(("train pipeline", "test pipeline", "data_preprocessor", "PipelineSwitchHook")):
            sizing += 1
        elif line.startswith("cfg_options merged"):
            continue  # the matrix's own logger interval
        elif "dropped: load_from" in line:
            out.append(line.split(" (", 1)[1].split(")", 1)[0] + " init dropped")
        elif "stretched from" in line:
            out.append(line.replace("-based schedulers stretched from ", " schedulers ").replace(" to ", " -> "))
        elif line.startswith("auto_scale_lr"):
            out.append("lr " + line.split(" x ", 1)[1].split(" ->", 1)[0].replace(" ", ""))
        else:
            out.append(line)
    if sizing:
        out.append(f"{sizing} sizing transforms")
    return "; ".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int) and value > 10_000:
        return f"{value / 1e6:.1f} M"
    return str(value).replace("|", "/")


def table(rows: list[dict[str, Any]]) -> str:
    """The README's markdown table."""
    head = "| family | config | status | s/iter (CPU) | parameters | predictions | score key | adapted |"
    lines = [head, "|" + "---|" * 8]
    for row in rows:
        adapted = adapted_summary(row.get("adapted", [])) or "-"
        cells = [row["family"], f"`{row['config']}`", row["status"], row.get("s_per_iter"), row.get("parameters")]
        cells += [row.get("predictions"), row.get("score_key"), adapted]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", help="a family name (default: all)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    chosen = [family(name) for name in args.family] if args.family else list(FAMILIES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in chosen:
            rows.append(run_family(fam, Path(tmp) / slug(fam.name)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    ok = sum(row["status"] == "ok" for row in rows)
    print(f"\n{ok} of {len(rows)} families passed resolve -> train -> resume -> predict -> score")


if __name__ == "__main__":
    main()
