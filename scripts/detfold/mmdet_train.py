"""Training one fold's model through MMDetection's Runner (heavy imports are lazy).

detfold takes any mmdet 3.x detector config (a path, or ``mmdet::family/name.py`` from the
installed mmdet), and fills in what a K-fold run decides: the fold's annotation files and
images, the classes (and every ``num_classes`` in the model), epochs (rescaling epoch-based
LR schedules), batch size, lr, seed and work dir. The resolved config is written beside the
checkpoint. A killed job resumes from its last epoch checkpoint when the resolved config is
unchanged; a changed config starts over.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from detfold.coco import load_coco
from detfold.io import atomic_open, write_text

log = logging.getLogger(__name__)

MODEL_KEYS = (
    "config",
    "epochs",
    "batch_size",
    "lr",
    "num_workers",
    "load_from",
    "cfg_options",
    "img_scale",
    "amp",
    "accumulate",
    "checkpoint",
    "early_stopping",
    "tensorboard",
    "wandb",
    "multi_scale",
    "deterministic",
    "val_interval",
)
VAL_METRIC = "coco/bbox_mAP"
ATOMIC_BACKEND = "detfold_atomic_local"
SLIM_META = ("dataset_meta", "epoch", "iter", "seed")  # what model.pth keeps of mmengine's meta
SCALE_KEYS = {
    "Resize": "scale",
    "RandomResize": "scale",
    "RandomCrop": "crop_size",
    "Pad": "size",
    "Mosaic": "img_scale",
    "CachedMosaic": "img_scale",
    "CachedMixUp": "img_scale",
    "MixUp": "img_scale",
}


def load_mmdet_config(config: str) -> Any:
    """Load an mmdet config from a file path or an ``mmdet::`` package path."""
    from mmengine.config import Config

    if config.startswith("mmdet::"):
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
            handle.write(f"_base_ = {config!r}\n")
        try:
            return Config.fromfile(handle.name)
        finally:
            os.unlink(handle.name)
    if not Path(config).is_file():
        raise FileNotFoundError(f"model config {config!r} not found (a path, or mmdet::family/name.py)")
    return Config.fromfile(config)


def set_num_classes(node: Any, num_classes: int) -> int:
    """Set every ``num_classes`` key in a (nested) model config; return how many were set."""
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "num_classes":
                node[key] = num_classes
                count += 1
            else:
                count += set_num_classes(value, num_classes)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += set_num_classes(value, num_classes)
    return count


def rescale_epoch_schedule(param_scheduler: list[dict[str, Any]] | dict[str, Any], old: int, new: int) -> None:
    """Stretch epoch-based LR scheduler milestones from ``old`` to ``new`` epochs, in place."""
    schedulers = param_scheduler if isinstance(param_scheduler, list) else [param_scheduler]
    for sched in schedulers:
        if not sched.get("by_epoch", True):
            continue
        for key in ("begin", "end", "T_max"):
            if isinstance(sched.get(key), int):
                sched[key] = round(sched[key] * new / old)
        if isinstance(sched.get("milestones"), list):
            sched["milestones"] = [round(m * new / old) for m in sched["milestones"]]


def set_img_scale(pipeline: list[dict[str, Any]], img_scale: tuple[int, int]) -> int:
    """Set the network input size (w, h) in every sizing transform of a pipeline; return how many.

    RandomResize keeps its ratio_range around the new scale; Pad only when it pads to a size."""
    changed = 0
    for step in pipeline:
        key = SCALE_KEYS.get(step.get("type", ""))
        if key and (key != "size" or step.get("size") is not None):
            step[key] = tuple(img_scale)
            changed += 1
    return changed


def _dataset(cfg_dataset: dict[str, Any], ann_file: str, images_dir: str, classes: tuple[str, ...]) -> None:
    cfg_dataset.update(
        ann_file=str(Path(ann_file).resolve()),
        data_root="",
        data_prefix=dict(img=str(Path(images_dir).resolve()) + "/"),
        metainfo=dict(classes=classes),
    )


def resolve_config(
    settings: dict[str, Any],
    train_json: str,
    val_json: str,
    images_dir: str,
    work_dir: str,
    seed: int,
    device: str = "cpu",
) -> Any:
    """The full mmdet config for one fold: the model's config with the fold's data filled in."""
    unknown = sorted(set(settings) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown}; allowed: {list(MODEL_KEYS)}")
    cfg = load_mmdet_config(settings["config"])
    classes = tuple(load_coco(train_json).class_names)
    if set_num_classes(cfg.model, len(classes)) == 0:
        raise ValueError(f"{settings['config']}: no num_classes key in the model config")
    _dataset(cfg.train_dataloader.dataset, train_json, images_dir, classes)
    cfg.train_dataloader.dataset.filter_cfg = dict(filter_empty_gt=True, min_size=1)
    for split in ("val", "test"):
        _dataset(cfg[f"{split}_dataloader"].dataset, val_json, images_dir, classes)
        cfg[f"{split}_evaluator"] = dict(type="CocoMetric", ann_file=str(Path(val_json).resolve()), metric="bbox")
    # No evaluation inside training (detfold predicts and scores each fold itself).
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    epochs = int(settings.get("epochs", cfg.train_cfg.max_epochs))
    if cfg.get("param_scheduler"):
        rescale_epoch_schedule(cfg.param_scheduler, cfg.train_cfg.max_epochs, epochs)
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=epochs + 1)
    if "batch_size" in settings:
        cfg.train_dataloader.batch_size = int(settings["batch_size"])
    if "num_workers" in settings:
        workers = int(settings["num_workers"])
        for split in ("train", "test"):
            cfg[f"{split}_dataloader"].num_workers = workers
            cfg[f"{split}_dataloader"].persistent_workers = workers > 0
    if "lr" in settings:
        cfg.optim_wrapper.optimizer.lr = float(settings["lr"])
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=cfg.train_dataloader.batch_size)
    load_from = settings.get("load_from")
    if load_from and not Path(load_from).is_file():
        raise FileNotFoundError(f"load_from checkpoint {load_from!r} not found (weights are never downloaded)")
    cfg.load_from = str(Path(load_from).resolve()) if load_from else None
    cfg.randomness = dict(seed=int(seed), deterministic=bool(settings.get("deterministic", False)))
    cfg.default_hooks.checkpoint = dict(
        type="CheckpointHook",
        interval=1,
        max_keep_ckpts=2,
        save_last=True,
        backend_args=dict(backend=ATOMIC_BACKEND),  # temp file + rename: a kill never leaves a torn epoch_N.pth
    )
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    cfg.work_dir = str(Path(work_dir).resolve())
    cfg.resume = False
    if settings.get("img_scale"):
        scale = tuple(int(v) for v in settings["img_scale"])
        for loader in ("train", "test"):
            if not set_img_scale(cfg[f"{loader}_dataloader"].dataset.pipeline, scale):
                raise ValueError(f"{settings['config']}: no sizing transform in the {loader} pipeline for img_scale")
    if settings.get("multi_scale"):  # each training image resized to one of these (w, h), at random
        scales = [tuple(int(v) for v in scale) for scale in settings["multi_scale"]]
        pipeline = cfg.train_dataloader.dataset.pipeline
        resize = [i for i, step in enumerate(pipeline) if step.get("type") in ("Resize", "RandomResize")]
        if not resize:
            raise ValueError(f"{settings['config']}: no Resize/RandomResize in the train pipeline for multi_scale")
        pipeline[resize[0]] = dict(type="RandomChoiceResize", scales=scales, keep_ratio=True)
    if int(settings.get("accumulate", 1)) > 1:
        cfg.optim_wrapper.accumulative_counts = int(settings["accumulate"])
    if settings.get("amp"):
        if device == "cuda":
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"
        else:
            log.warning("amp: true is ignored on CPU (mixed precision needs a GPU)")
    checkpoint = settings.get("checkpoint", "last")
    if checkpoint not in ("last", "best"):
        raise ValueError(f"checkpoint must be 'last' or 'best', got {checkpoint!r}")
    patience = int(settings.get("early_stopping", 0))
    val_interval = int(settings.get("val_interval", 0))  # epochs between validations, 0 = off
    if val_interval < 0:
        raise ValueError(f"val_interval must be >= 0 epochs, got {val_interval}")
    if checkpoint == "best" or patience > 0 or val_interval:  # validate on the fold's val images
        cfg.val_dataloader = copy.deepcopy(cfg.test_dataloader)
        cfg.val_evaluator = dict(
            type="CocoMetric", ann_file=str(Path(val_json).resolve()), metric="bbox", proposal_nums=(1, 10, 100)
        )
        cfg.val_cfg = dict(type="ValLoop")
        cfg.train_cfg.val_interval = val_interval or 1
    if checkpoint == "best":
        cfg.default_hooks.checkpoint.save_best = VAL_METRIC
        cfg.default_hooks.checkpoint.rule = "greater"
    if patience > 0:
        cfg.custom_hooks = [
            *cfg.get("custom_hooks", []),
            dict(type="EarlyStoppingHook", monitor=VAL_METRIC, patience=patience, min_delta=0.001),
        ]
    backends = [dict(type="LocalVisBackend")]
    if settings.get("tensorboard", True):
        backends.append(dict(type="TensorboardVisBackend"))
    if settings.get("wandb"):
        run = Path(work_dir).resolve().parent  # results/train/{model}/fold{k}: one wandb run per fold
        init = {"name": f"{run.parent.name}-{run.name}", "group": run.parent.name, **dict(settings["wandb"])}
        backends.append(dict(type="WandbVisBackend", init_kwargs=init))
    cfg.visualizer = dict(type="DetLocalVisualizer", vis_backends=backends, name="visualizer")
    if settings.get("cfg_options"):
        cfg.merge_from_dict(dict(settings["cfg_options"]))
    return cfg


def register_atomic_checkpoint_backend() -> None:
    """Register mmengine file backend ``detfold_atomic_local``: the local disk, except that every
    write goes to a temporary file in the same folder, is fsynced, then renamed onto its name.
    The CheckpointHook of a resolved config saves through it, so ``epoch_N.pth`` either is a
    complete checkpoint or does not exist."""
    from mmengine.fileio import register_backend
    from mmengine.fileio.backends import LocalBackend

    class AtomicLocalBackend(LocalBackend):
        def put(self, obj: bytes, filepath: str | os.PathLike[str]) -> None:
            with atomic_open(filepath, "wb") as handle:
                handle.write(obj)

        def put_text(self, obj: str, filepath: str | os.PathLike[str], encoding: str = "utf-8") -> None:
            self.put(obj.encode(encoding), filepath)

    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def _run_fingerprint(resolved_text: str, data_files: list[str]) -> str:
    """What a resumable run must share with the killed one: the resolved config and the bytes
    of the fold's annotation files."""
    digest = hashlib.sha256(resolved_text.encode())
    for path in data_files:
        digest.update(Path(path).read_bytes())
    return f"{digest.hexdigest()}\n"


def _readable_checkpoint(path: Path) -> bool:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a checkpoint cut short by a kill: any unpickling error
        log.warning("checkpoint %s is unreadable (%s): not resuming from it", path, err)
        return False
    return True


def _resumable(work_dir: Path, fingerprint: str) -> bool:
    """True when ``work_dir`` holds a readable checkpoint of a run with the very same config
    and data. A corrupt latest checkpoint (killed while saving) falls back to the previous one."""
    stamp = work_dir / "run_fingerprint.txt"
    if not (stamp.is_file() and stamp.read_text() == fingerprint):
        return False
    candidates = sorted(work_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]), reverse=True)
    for candidate in candidates:
        if _readable_checkpoint(candidate):  # mmengine resumes from the file last_checkpoint names
            write_text(work_dir / "last_checkpoint", str(candidate.resolve()))
            return True
        candidate.unlink()
    return False


def train_fold(
    settings: dict[str, Any],
    train_json: str,
    val_json: str,
    images_dir: str,
    checkpoint_out: str,
    config_out: str,
    seed: int,
    threads: int = 1,
) -> None:
    """Train one fold; write the final weights to ``checkpoint_out`` and the resolved config
    to ``config_out`` (both atomically, only when training finished). The job holds one GPU
    slot (:mod:`detfold.gpu_slots`) while it runs."""
    from detfold.gpu_slots import RECORD, available_slots, gpu_slot

    with gpu_slot(available_slots(), job=str(checkpoint_out), record=RECORD):
        import torch
        from mmdet.utils import register_all_modules
        from mmengine.runner import Runner

        register_all_modules(init_default_scope=True)
        register_atomic_checkpoint_backend()
        torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
        out_dir = Path(checkpoint_out).parent
        work_dir = out_dir / "work"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg = resolve_config(settings, train_json, val_json, images_dir, str(work_dir), seed, device)
        fingerprint = _run_fingerprint(cfg.pretty_text, [train_json, val_json])
        if _resumable(work_dir, fingerprint):
            log.info("resuming from %s", (work_dir / "last_checkpoint").read_text().strip())
            cfg.resume = True
        elif work_dir.exists():
            log.info("discarding %s: no checkpoint of this exact config and data", work_dir)
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        write_text(work_dir / "run_fingerprint.txt", fingerprint)
        log.info("training %s on %s, %d epochs, seed %d", settings["config"], device, cfg.train_cfg.max_epochs, seed)
        runner = Runner.from_cfg(cfg)
        for handler in logging.getLogger().handlers:  # mmengine's progress lines into the rule's log too
            if isinstance(handler, logging.FileHandler):
                runner.logger.addHandler(handler)
        if cfg.resume:
            # Our own checkpoint from this work dir holds mmengine's training state (message hub,
            # numpy scalars), which torch's weights_only loader refuses; user checkpoints given as
            # load_from are still loaded with torch's weights_only default.
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            runner.train()
        finally:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)

        last = Path((work_dir / "last_checkpoint").read_text().strip())
        if settings.get("checkpoint", "last") == "best":
            best = sorted(work_dir.glob("best_*.pth"), key=lambda p: p.stat().st_mtime)
            if best:
                last = best[-1]
            else:
                log.warning("no best checkpoint (validation produced no bbox mAP): using the last one")
        state = torch.load(last, map_location="cpu", weights_only=False)
        # weights, classes and position only: mmengine's meta also holds the run's time, work dir
        # and config text, which would make two identical trainings differ byte for byte
        meta = {key: state.get("meta", {})[key] for key in SLIM_META if key in state.get("meta", {})}
        slim = {"meta": meta, "state_dict": state["state_dict"]}
        with atomic_open(checkpoint_out, "wb") as handle:
            torch.save(slim, handle)
        write_text(config_out, cfg.pretty_text)
        log.info("wrote %s (from %s) and %s", checkpoint_out, last.name, config_out)
