"""Training one fold's model through MMDetection's Runner (heavy imports are lazy).

detfold takes any mmdet 3.x detector config (a path, or ``mmdet::family/name.py`` from the
installed mmdet), and fills in what a K-fold run decides: the fold's annotation files and
images, the classes (and every ``num_classes`` in the model), epochs (stretching every epoch
number of the config), batch size, lr, seed and work dir. The resolved config is written beside the
checkpoint. A killed job resumes from its last epoch checkpoint when the resolved config is
unchanged (also with ``load_from``: the job's own epoch checkpoint, never the pretrained file);
a changed config starts over. Every checkpoint is read with torch's ``weights_only`` loader
(the job's own epoch checkpoints hold builtin types and tensors only, see
:func:`register_plain_state_hook`).
How a zoo config is adapted lives in :mod:`detfold.train.mmdet_config`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from detfold.core.coco import Coco, load_coco
from detfold.core.io import atomic_open, write_text
from detfold.train import mmdet_config as adapt

log = logging.getLogger(__name__)

MODEL_KEYS = (
    "config",
    "epochs",
    "batch_size",
    "lr",
    "auto_scale_lr",
    "num_workers",
    "load_from",
    "backbone_weights",
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
IMPORT_PATHS = "detfold_import_paths"  # resolved-config key: folders custom_imports are found in


def load_mmdet_config(config: str) -> Any:
    """Load an mmdet config from a file path or an ``mmdet::`` package path. The config's own
    folder is importable, so ``custom_imports`` of a module beside it work."""
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
    folder = str(Path(config).resolve().parent)
    add_import_paths([folder])
    cfg = Config.fromfile(config)
    cfg[IMPORT_PATHS] = [folder]
    return cfg


def config_file(config: str) -> str:
    """The file of a config: a path as given, ``mmdet::family/name.py`` in the installed mmdet."""
    from detfold.core.config import mmdet_config_path

    return str(mmdet_config_path(config)) if config.startswith("mmdet::") else config


def add_import_paths(paths: list[str]) -> None:
    """Put folders on ``sys.path`` (first), for the ``custom_imports`` of a config."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def load_resolved_config(path: str) -> Any:
    """A resolved config written by :func:`train_fold`, with its ``custom_imports`` importable."""
    from mmengine.config import Config
    from mmengine.utils import import_modules_from_strings

    cfg = Config.fromfile(path, import_custom_modules=False)
    add_import_paths(list(cfg.get(IMPORT_PATHS) or []))
    if cfg.get("custom_imports"):
        import_modules_from_strings(**cfg.custom_imports)
    return cfg


def _evaluator(val_json: str, **extra: Any) -> dict[str, Any]:
    return dict(type="CocoMetric", ann_file=str(Path(val_json).resolve()), metric="bbox", **extra)


def resolve_config(
    settings: dict[str, Any],
    train_json: str,
    val_json: str,
    images_dir: str,
    work_dir: str,
    seed: int,
    device: str = "cpu",
) -> Any:
    """The full mmdet config for one fold: the model's config with the fold's data filled in,
    adapted by :mod:`detfold.train.mmdet_config` and the steps below, in this order (each
    change logged)."""
    unknown = sorted(set(settings) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown}; allowed: {list(MODEL_KEYS)}")
    name = str(settings["config"])
    cfg = load_mmdet_config(name)
    coco = load_coco(train_json)
    changes = _set_fold_data(cfg, coco, train_json, val_json, images_dir, name)
    changes += _set_batches_and_schedule(cfg, settings, coco, name)
    _set_run(cfg, settings, work_dir, seed)
    changes += _set_input_size(cfg, settings, name)
    changes += _set_optim_wrapper(cfg, settings, device)
    _set_validation(cfg, settings, val_json)
    _set_visualizer(cfg, settings, work_dir)
    if settings.get("cfg_options"):
        cfg.merge_from_dict(dict(settings["cfg_options"]))
        changes.append(f"cfg_options merged: {sorted(settings['cfg_options'])}")
    # after cfg_options, so that no option can bring back a download
    changes += adapt.set_pretrained_weights(cfg.model, cfg.load_from, settings.get("backbone_weights"), name)
    for line in changes:
        log.info("config: %s", line)
    return cfg


def _set_fold_data(cfg: Any, coco: Coco, train_json: str, val_json: str, images_dir: str, name: str) -> list[str]:
    """The fold's classes (every ``num_classes`` of the model), annotation files and images in
    the train and test dataloaders; no evaluation inside training (detfold predicts and scores
    each fold itself)."""
    classes = tuple(coco.class_names)
    if adapt.set_num_classes(cfg.model, len(classes)) == 0:
        raise ValueError(f"{name}: no num_classes key in the model config")
    changes = adapt.set_fold_data(cfg.train_dataloader, train_json, images_dir, classes, train=True)
    for split in ("val", "test"):
        changes += adapt.set_fold_data(cfg[f"{split}_dataloader"], val_json, images_dir, classes, train=False)
        cfg[f"{split}_evaluator"] = _evaluator(val_json)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    return changes


def _set_batches_and_schedule(cfg: Any, settings: dict[str, Any], coco: Coco, name: str) -> list[str]:
    """Batch size, epochs (every epoch number stretched to them), data loader workers, lr and
    mmdet's linear lr scaling."""
    if "batch_size" in settings:
        cfg.train_dataloader.batch_size = int(settings["batch_size"])
    batch_size = int(cfg.train_dataloader.batch_size)
    iters_per_epoch = max(1, math.ceil(len({a["image_id"] for a in coco.annotations}) / batch_size))
    changes = adapt.set_schedule(cfg, settings.get("epochs"), iters_per_epoch, name)
    if "num_workers" in settings:
        workers = int(settings["num_workers"])
        for split in ("train", "test"):
            cfg[f"{split}_dataloader"].num_workers = workers
            cfg[f"{split}_dataloader"].persistent_workers = workers > 0
    if "lr" in settings:
        cfg.optim_wrapper.optimizer.lr = float(settings["lr"])
    return changes + adapt.scale_lr(cfg, settings, batch_size, config_file(name), name)


def _set_run(cfg: Any, settings: dict[str, Any], work_dir: str, seed: int) -> None:
    """The starting weights (``load_from``), the seed, the work dir, and how checkpoints are
    saved: every epoch, atomically, of builtin types only."""
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
    # epoch checkpoints of builtin types only: resuming reads them with weights_only (no code runs)
    cfg.custom_hooks = [*(cfg.get("custom_hooks") or []), dict(type=PLAIN_STATE_HOOK)]
    cfg.work_dir = str(Path(work_dir).resolve())
    cfg.resume = False


def _set_input_size(cfg: Any, settings: dict[str, Any], name: str) -> list[str]:
    """``img_scale`` (the network input, train and test) and ``multi_scale`` training."""
    changes: list[str] = []
    if settings.get("img_scale"):
        width, height = (int(v) for v in settings["img_scale"])
        changes += adapt.set_img_scale(cfg, (width, height), name)
    if settings.get("multi_scale"):  # each training image resized to one of these (w, h), at random
        changes += adapt.set_multi_scale(cfg, settings["multi_scale"], name)
    return changes


def _set_optim_wrapper(cfg: Any, settings: dict[str, Any], device: str) -> list[str]:
    """Gradient accumulation, and mixed precision on a GPU only (a config's own AmpOptimWrapper
    becomes a plain one on CPU)."""
    if int(settings.get("accumulate", 1)) > 1:
        cfg.optim_wrapper.accumulative_counts = int(settings["accumulate"])
    if settings.get("amp"):
        if device == "cuda":
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"
        else:
            log.warning("amp: true is ignored on CPU (mixed precision needs a GPU)")
    elif cfg.optim_wrapper.get("type") == "AmpOptimWrapper" and device != "cuda":
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("loss_scale", None)
        return ["AmpOptimWrapper -> OptimWrapper (mixed precision needs a GPU)"]
    return []


def _set_validation(cfg: Any, settings: dict[str, Any], val_json: str) -> None:
    """Validation on the fold's val images during training (bbox mAP at 100 detections), when
    ``checkpoint: best``, ``early_stopping`` or ``val_interval`` asks for it."""
    checkpoint = settings.get("checkpoint", "last")
    if checkpoint not in ("last", "best"):
        raise ValueError(f"checkpoint must be 'last' or 'best', got {checkpoint!r}")
    patience = int(settings.get("early_stopping", 0))
    val_interval = int(settings.get("val_interval", 0))  # epochs between validations, 0 = off
    if val_interval < 0:
        raise ValueError(f"val_interval must be >= 0 epochs, got {val_interval}")
    if checkpoint == "best" or patience > 0 or val_interval:  # validate on the fold's val images
        cfg.val_dataloader = copy.deepcopy(cfg.test_dataloader)
        cfg.val_evaluator = _evaluator(val_json, proposal_nums=(1, 10, 100))
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


def _set_visualizer(cfg: Any, settings: dict[str, Any], work_dir: str) -> None:
    """Where training logs go: local files, TensorBoard (default on), Weights & Biases (one
    run per fold, named model-foldK)."""
    backends: list[dict[str, Any]] = [dict(type="LocalVisBackend")]
    if settings.get("tensorboard", True):
        backends.append(dict(type="TensorboardVisBackend"))
    if settings.get("wandb"):
        run = Path(work_dir).resolve().parent  # results/train/{model}/fold{k}: one wandb run per fold
        init: dict[str, Any] = {"name": f"{run.parent.name}-{run.name}", "group": run.parent.name}
        init.update(settings["wandb"])
        backends.append(dict(type="WandbVisBackend", init_kwargs=init))
    cfg.visualizer = dict(type="DetLocalVisualizer", vis_backends=backends, name="visualizer")


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


PLAIN_STATE_HOOK = "DetfoldPlainStateHook"
HISTORY = "__history_buffer__"  # marks a message-hub HistoryBuffer stored as plain lists


def to_plain(value: Any) -> Any:
    """mmengine's training state as builtin types (tensors kept): numpy arrays -> lists, numpy
    scalars -> numbers, each message-hub HistoryBuffer -> a marked dict of lists."""
    import numpy as np
    from mmengine.logging import HistoryBuffer

    if isinstance(value, HistoryBuffer):
        history = {"log_history": value._log_history.tolist(), "count_history": value._count_history.tolist()}
        return {HISTORY: True, **history, "max_length": int(value.max_length)}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return type(value)((key, to_plain(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return type(value)(to_plain(item) for item in value)
    return value


def from_plain(value: Any) -> Any:
    """Inverse of :func:`to_plain` for the message hub: marked dicts back into HistoryBuffers."""
    from mmengine.logging import HistoryBuffer

    if isinstance(value, dict) and value.get(HISTORY):
        return HistoryBuffer(value["log_history"], value["count_history"], value["max_length"])
    if isinstance(value, dict):
        return type(value)((key, from_plain(item)) for key, item in value.items())
    return value


def register_plain_state_hook() -> None:
    """Register ``DetfoldPlainStateHook``: every checkpoint this job saves holds builtin types
    and tensors only (its message hub converted by :func:`to_plain`), so torch's default
    ``weights_only`` loader reads it back on resume (no allow-list, no full unpickler), and the
    message hub is rebuilt when it is loaded."""
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    class DetfoldPlainStateHook(Hook):
        priority = "LOWEST"  # saving: after every other hook added its state (EMA weights ...)

        def before_save_checkpoint(self, runner: Any, checkpoint: dict[str, Any]) -> None:
            for key in ("message_hub", "meta"):
                if key in checkpoint:
                    checkpoint[key] = to_plain(checkpoint[key])

        def after_load_checkpoint(self, runner: Any, checkpoint: dict[str, Any]) -> None:
            if "message_hub" in checkpoint:
                checkpoint["message_hub"] = from_plain(checkpoint["message_hub"])

    HOOKS.register_module(name=PLAIN_STATE_HOOK, module=DetfoldPlainStateHook, force=True)


def check_weights_file(path: str, key: str) -> None:
    """Raise ValueError, naming the file, when a user's checkpoint holds Python objects besides
    weights: torch's weights_only loader (what mmengine uses) would refuse it deep inside
    training; detfold never unpickles it in full."""
    import torch

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # not a torch checkpoint at all
        raise ValueError(f"{key} {path!r} is not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    if unsafe:
        raise ValueError(
            f"{key} {path!r} holds Python objects besides weights ({', '.join(sorted(unsafe)[:3])}), which "
            "detfold never unpickles; save its state_dict alone: torch.save({'state_dict': ckpt['state_dict']}, path)"
        )


def _readable_checkpoint(path: Path) -> bool:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
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
    slot (:mod:`detfold.train.gpu_slots`) while it runs."""
    from detfold.train.gpu_slots import RECORD, available_slots, gpu_slot

    with gpu_slot(available_slots(), job=str(checkpoint_out), record=RECORD):
        device = _prepare_mmdet(threads)
        work_dir = Path(checkpoint_out).parent / "work"
        cfg = resolve_config(settings, train_json, val_json, images_dir, str(work_dir), seed, device)
        resolved_text = cfg.pretty_text
        for key in ("load_from", "backbone_weights"):
            if settings.get(key) not in (None, False):
                check_weights_file(str(settings[key]), key)
        _start_or_resume(cfg, work_dir, _run_fingerprint(resolved_text, [train_json, val_json]))
        log.info("training %s on %s, %d epochs, seed %d", settings["config"], device, cfg.train_cfg.max_epochs, seed)
        _run(cfg)
        chosen = _chosen_checkpoint(work_dir, settings.get("checkpoint", "last"))
        _save_weights(chosen, checkpoint_out)
        write_text(config_out, resolved_text)
        log.info("wrote %s (from %s) and %s", checkpoint_out, chosen.name, config_out)


def _prepare_mmdet(threads: int) -> str:
    """Register mmdet's modules and detfold's checkpoint backend and hook, use ``threads`` CPU
    threads; return the device to train on (``cuda`` or ``cpu``)."""
    import torch
    from mmdet.utils import register_all_modules

    from detfold.train.mmdet_compat import patch_mmdet

    register_all_modules(init_default_scope=True)
    patch_mmdet()  # validation during training predicts too
    register_atomic_checkpoint_backend()
    register_plain_state_hook()
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    return "cuda" if torch.cuda.is_available() else "cpu"


def _start_or_resume(cfg: Any, work_dir: Path, fingerprint: str) -> None:
    """Resume from the work dir's last readable epoch checkpoint of this very config and data;
    otherwise discard the work dir and start over. Stamps the work dir with ``fingerprint``."""
    if _resumable(work_dir, fingerprint):
        own = (work_dir / "last_checkpoint").read_text().strip()
        log.info("resuming from %s", own)
        # mmengine resumes from load_from when it is set: point it at this job's own last
        # epoch checkpoint, never at the pretrained file (that one has no training state)
        cfg.resume, cfg.load_from = True, own
    elif work_dir.exists():
        log.info("discarding %s: no checkpoint of this exact config and data", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_text(work_dir / "run_fingerprint.txt", fingerprint)


def _run(cfg: Any) -> None:
    """Train with mmengine's Runner, its progress lines also in the rule's log file."""
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg)
    for handler in logging.getLogger().handlers:  # mmengine's progress lines into the rule's log too
        if isinstance(handler, logging.FileHandler):
            runner.logger.addHandler(handler)
    runner.train()  # every checkpoint it reads with torch's weights_only loader: no code runs


def _chosen_checkpoint(work_dir: Path, checkpoint: str) -> Path:
    """The epoch checkpoint that becomes the fold model: the last one, or with ``checkpoint:
    best`` the newest best one (the last one when validation gave no bbox mAP)."""
    last = Path((work_dir / "last_checkpoint").read_text().strip())
    if checkpoint == "best":
        best = sorted(work_dir.glob("best_*.pth"), key=lambda p: p.stat().st_mtime)
        if best:
            return best[-1]
        log.warning("no best checkpoint (validation produced no bbox mAP): using the last one")
    return last


def _save_weights(chosen: Path, checkpoint_out: str) -> None:
    """Write ``chosen``'s weights, classes and position to ``checkpoint_out`` (atomically).
    mmengine's meta also holds the run's time, work dir and config text, which would make two
    identical trainings differ byte for byte: only :data:`SLIM_META` of it is kept."""
    import torch

    state = torch.load(chosen, map_location="cpu", weights_only=True)
    meta = {key: state.get("meta", {})[key] for key in SLIM_META if key in state.get("meta", {})}
    slim = {"meta": meta, "state_dict": state["state_dict"]}
    with atomic_open(checkpoint_out, "wb") as handle:
        torch.save(slim, handle)
