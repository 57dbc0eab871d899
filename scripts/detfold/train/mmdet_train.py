"""Training one fold's model through MMDetection's Runner (heavy imports are lazy).

detfold takes any mmdet 3.x detector config (a path, or ``mmdet::family/name.py`` from the
installed mmdet) and fills in what a K-fold run decides: the fold's data and classes, epochs,
batch size, lr, seed and work dir (how a zoo config is adapted: :mod:`detfold.train.mmdet_config`).
The resolved config is written beside the fold model; how a killed job resumes:
:mod:`detfold.train.checkpoints`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from detfold.core.coco import Coco, load_coco
from detfold.core.io import write_text
from detfold.train import checkpoints
from detfold.train import mmdet_config as adapt

log = logging.getLogger(__name__)

VAL_METRIC = "coco/bbox_mAP"
IMPORT_PATHS = "detfold_import_paths"  # resolved-config key: folders custom_imports are found in


def prepare_mmdet(threads: int, deterministic: bool = False) -> str:
    """Register mmdet's modules, work around known bugs of the pinned mmdet (3.3.0) where the
    installed one has them, use ``threads`` CPU threads (at most this machine's cores, except
    when ``deterministic``: then exactly ``threads``, with the CPU math pinned,
    :mod:`detfold.train.cpu_math`); return the device (``cuda`` or ``cpu``)."""
    if deterministic:
        from detfold.train.cpu_math import pin_cpu_math

        pin_cpu_math()
    import torch
    from mmdet.models.dense_heads import SSDHead
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    # open-mmlab/mmdetection#11305 (#11780; PR #11524 unmerged): BaseDenseHead's prediction reads
    # self.loss_cls, which SSDHead never sets, so every SSD predicts with AttributeError. No loss
    # object means no custom class channels: the plain softmax path, as before mmdet 3.3.
    if not hasattr(SSDHead, "loss_cls"):
        SSDHead.loss_cls = None
        log.info("mmdet work-around: SSDHead.loss_cls = None (mmdetection#11305)")
    torch.set_num_threads(max(1, threads if deterministic else min(threads, os.cpu_count() or 1)))
    log.info("CPU threads: %d (deterministic: %s)", torch.get_num_threads(), deterministic)
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_mmdet_config(config: str) -> Any:
    """Load an mmdet config from a file path or an ``mmdet::`` package path (read from the
    installed mmdet's own file: mmengine's parser refuses names such as ``gn+ws/...`` and
    ``legacy_1.x/...``). The config's own folder is importable, so ``custom_imports`` of a
    module beside it work; one of a package that is not installed is refused, naming it."""
    from mmengine.config import Config

    from detfold.core.config import mmdet_config_path

    path = mmdet_config_path(config) if config.startswith("mmdet::") else Path(config)
    if path is None or not path.is_file():
        raise FileNotFoundError(f"model config {config!r} not found (a path, or mmdet::family/name.py)")
    folder = str(path.resolve().parent)
    local = not config.startswith("mmdet::")
    if local:
        add_import_paths([folder])
    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except FileNotFoundError as err:  # a _base_ it inherits (mmdet's sort/ configs name one without .py)
        raise FileNotFoundError(f"model config {config!r} cannot be read: {err} (a file its _base_ names)") from None
    import_custom_modules(cfg, config)
    if local:
        cfg[IMPORT_PATHS] = [folder]
    return cfg


def import_custom_modules(cfg: Any, config: str) -> None:
    """Import a config's ``custom_imports``; a module whose package is not installed (the
    mmpretrain or timm backbones of some zoo configs) is refused with one line naming both."""
    from mmengine.utils import import_modules_from_strings

    custom = cfg.get("custom_imports") or {}
    if not custom:
        return
    modules = custom.get("imports") or []
    for module in [modules] if isinstance(modules, str) else modules:
        package = module.split(".")[0]
        if importlib.util.find_spec(package) is None and not custom.get("allow_failed_imports"):
            raise ValueError(
                f"{config}: custom_imports {module!r} needs the Python package {package!r}, which is not "
                f"installed in detfold's environment: install it there, or choose a config without it"
            )
    import_modules_from_strings(**custom)


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
    """The full mmdet config for one fold: the model's config (``settings``: a model's entry
    of config.yaml) adapted by the steps below, in this order (each change logged)."""
    from detfold.core.config import load_schema, model_gpus

    allowed = list(load_schema()["properties"]["models"]["additionalProperties"]["properties"])
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown}; allowed: {allowed}")
    name = str(settings["config"])
    cfg = load_mmdet_config(name)
    adapt.check_box_detector(cfg, name)
    coco = load_coco(train_json)
    changes = adapt.drop_mask_branch(cfg, name) + adapt.set_teacher_config(cfg.model, name)
    changes += adapt.set_process_norm(cfg.model, model_gpus(settings), device)
    changes += _set_fold_data(cfg, coco, train_json, val_json, images_dir, name)
    changes += _set_batches_and_schedule(cfg, settings, coco, name)
    _set_run(cfg, settings, work_dir, seed)
    if settings.get("img_scale"):  # the network input, train and test
        width, height = settings["img_scale"]
        changes += adapt.set_img_scale(cfg, (width, height), name)
    if settings.get("multi_scale"):  # each training image resized to one of these (w, h), at random
        changes += adapt.set_multi_scale(cfg, settings["multi_scale"], name)
    changes += _set_optim_wrapper(cfg, settings, device)
    _set_validation(cfg, settings, val_json)
    _set_visualizer(cfg, settings, work_dir)
    if settings.get("cfg_options"):
        cfg.merge_from_dict(dict(settings["cfg_options"]))
        changes.append(f"cfg_options merged: {sorted(settings['cfg_options'])}")
    if settings.get("img_scale"):  # after cfg_options, which may set num_queries or input sizes
        sizes = [(image.get("width"), image.get("height")) for image in coco.images]
        adapt.check_input_size(cfg, (int(settings["img_scale"][0]), int(settings["img_scale"][1])), sizes, name)
    # after cfg_options, so that no option can bring back a download
    changes += adapt.set_pretrained_weights(cfg.model, cfg.load_from, settings.get("backbone_weights"), name)
    adapt.check_builds(cfg, name)
    adapt.check_cpu_ops(cfg.model, device, name)
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
    from detfold.core.config import mmdet_config_path, model_gpus

    if "batch_size" in settings:
        cfg.train_dataloader.batch_size = int(settings["batch_size"])
    batch_size = int(cfg.train_dataloader.batch_size)  # per process (GPU), as in mmdet
    images = len({a["image_id"] for a in coco.annotations})
    iters_per_epoch = max(1, math.ceil(images / (batch_size * model_gpus(settings))))
    changes = adapt.set_schedule(cfg, settings.get("epochs"), iters_per_epoch, name)
    if "num_workers" in settings:
        workers = int(settings["num_workers"])
        for split in ("train", "test"):
            cfg[f"{split}_dataloader"].num_workers = workers
            cfg[f"{split}_dataloader"].persistent_workers = workers > 0
    if "lr" in settings:
        cfg.optim_wrapper.optimizer.lr = float(settings["lr"])
    file = str(mmdet_config_path(name)) if name.startswith("mmdet::") else name
    return changes + adapt.scale_lr(cfg, settings, batch_size, file, name)


def _set_run(cfg: Any, settings: dict[str, Any], work_dir: str, seed: int) -> None:
    """The starting weights (``load_from``), the seed, the work dir, and how checkpoints are
    saved: every epoch, atomically, of builtin types only."""
    load_from = settings.get("load_from")
    if load_from and not Path(load_from).is_file():
        raise FileNotFoundError(f"load_from checkpoint {load_from!r} not found (weights are never downloaded)")
    cfg.load_from = str(Path(load_from).resolve()) if load_from else None
    cfg.randomness = dict(seed=int(seed), deterministic=bool(settings.get("deterministic", False)))
    backend = dict(backend=checkpoints.ATOMIC_BACKEND)  # temp file + rename: a kill never leaves a torn epoch_N.pth
    cfg.default_hooks.checkpoint = dict(
        type="CheckpointHook", interval=1, max_keep_ckpts=2, save_last=True, backend_args=backend
    )
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    # epoch checkpoints of builtin types only: resuming reads them with weights_only (no code runs)
    cfg.custom_hooks = [*(cfg.get("custom_hooks") or []), dict(type=checkpoints.PLAIN_STATE_HOOK)]
    cfg.work_dir = str(Path(work_dir).resolve())
    cfg.resume = False


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
    patience = int(settings.get("early_stopping", 0))
    val_interval = int(settings.get("val_interval", 0))  # epochs between validations, 0 = off
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


def train_fold(
    settings: dict[str, Any],
    train_json: str,
    val_json: str,
    images_dir: str,
    checkpoint_out: str,
    config_out: str,
    seed: int,
    threads: int = 1,
    jobs_per_gpu: int = 1,
) -> None:
    """Train one fold; write the final weights to ``checkpoint_out`` and the resolved config
    to ``config_out`` (both atomically, only when training finished). The job holds a share of
    ``settings["gpus"]`` GPUs (:mod:`detfold.train.gpu_slots`) while it runs; with more than one
    it trains as that many distributed processes (:mod:`detfold.train.distributed`)."""
    from detfold.core.config import model_gpus
    from detfold.train.gpu_slots import RECORD, Pool, available_slots, gpu_slots

    processes = model_gpus(settings)
    with gpu_slots(Pool(available_slots(), jobs_per_gpu), str(checkpoint_out), processes, record=RECORD):
        device = prepare_mmdet(threads, bool(settings.get("deterministic", False)))
        if device == "cuda" and processes > (seen := _cuda_devices()):
            raise ValueError(f"gpus: {processes} but this job sees {seen} GPU(s) ({checkpoint_out})")
        checkpoints.register_atomic_checkpoint_backend()
        checkpoints.register_plain_state_hook()
        work_dir = Path(checkpoint_out).parent / "work"
        cfg = resolve_config(settings, train_json, val_json, images_dir, str(work_dir), seed, device)
        resolved_text = cfg.pretty_text
        for key in ("load_from", "backbone_weights"):
            if settings.get(key) not in (None, False):
                checkpoints.check_weights_file(str(settings[key]), key)
        fingerprint = hashlib.sha256(resolved_text.encode())  # a resumed run has the same config and data
        for path in (train_json, val_json):
            fingerprint.update(Path(path).read_bytes())
        checkpoints.start_or_resume(cfg, work_dir, f"{fingerprint.hexdigest()}\n")
        log.info(
            "training %s on %s (%d process(es)), %d epochs, seed %d",
            settings["config"], device, processes, cfg.train_cfg.max_epochs, seed,
        )  # fmt: skip
        if processes > 1:
            from detfold.train.distributed import launch

            launch(cfg, processes, threads, work_dir)
        else:
            _train_in_this_process(cfg)
        chosen = checkpoints.save_fold_model(work_dir, settings.get("checkpoint", "last"), checkpoint_out)
        write_text(config_out, resolved_text)
        log.info("wrote %s (from %s) and %s", checkpoint_out, chosen.name, config_out)


def _cuda_devices() -> int:
    import torch

    return int(torch.cuda.device_count())


def _train_in_this_process(cfg: Any) -> None:
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg)
    for handler in logging.getLogger().handlers:  # mmengine's progress lines into the rule's log too
        if isinstance(handler, logging.FileHandler):
            runner.logger.addHandler(handler)
    runner.train()  # every checkpoint it reads with torch's weights_only loader: no code runs
