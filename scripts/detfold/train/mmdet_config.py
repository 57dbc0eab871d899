"""Adapting an MMDetection config (a zoo config or the user's own) to one fold of a run.

Each function changes one concern the way mmdet itself would, finds its targets by walking the
tree instead of assuming where they sit, and returns a line per change (``resolve_config`` logs
them); a shape it does not understand stops with an error naming the key. Works on plain dicts
and on mmengine's ``Config`` / ``ConfigDict`` (dict subclasses); nothing here imports torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONTAINERS = ("RandomChoice", "TestTimeAug", "RandomApply", "RandomOrder", "MultiScaleFlipAug")
SIZE_KEYS = ("scale", "scales", "img_scale", "crop_size", "size", "width", "height")
EPOCH_KEY = re.compile(r"(^|_)epochs?$")  # switch_epoch, begin_epoch, num_last_epochs, ...
BATCH_NAME = re.compile(r"(\d+)xb(\d+)")  # mmdet's config names: 8xb32 = 8 GPUs x 32 images


def _type(step: dict[str, Any]) -> str:
    """A transform's or dataset's type without its registry scope (``mmdet.Resize`` -> ``Resize``)."""
    kind = step.get("type", "")
    return kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


# ---------------------------------------------------------------------------------- data


def inner_datasets(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The real datasets under a dataloader's ``dataset``, through RepeatDataset,
    ClassBalancedDataset, MultiImageMixDataset (``dataset``) and ConcatDataset (``datasets``)."""
    if "datasets" in node:
        for child in node["datasets"]:
            yield from inner_datasets(child)
    elif "dataset" in node:
        yield from inner_datasets(node["dataset"])
    else:
        yield node


def dataset_chain(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every dataset node under ``node``, wrappers first, then what they wrap."""
    yield node
    for child in node.get("datasets", []) or []:
        yield from dataset_chain(child)
    if isinstance(node.get("dataset"), dict):
        yield from dataset_chain(node["dataset"])


def _one_dataset(parent: dict[str, Any], key: str) -> list[str]:
    """Replace every ConcatDataset under ``parent[key]`` by its first member: a fold is one COCO file."""
    node = parent[key]
    if _type(node) == "ConcatDataset":
        members = node.get("datasets") or []
        if not members:
            raise ValueError(f"{key}: ConcatDataset without datasets")
        parent[key] = members[0]
        return [f"ConcatDataset of {len(members)} datasets -> the fold's one COCO file", *_one_dataset(parent, key)]
    if isinstance(node.get("dataset"), dict):
        return _one_dataset(node, "dataset")
    return []


def _reads_coco(kind: str) -> bool:
    """Whether the registered dataset type reads a COCO file as CocoDataset does (it, or a
    subclass that keeps its loader and its arguments: not LVIS, which needs the lvis package,
    nor VOC, nor V3Det, which reads its class names from a file of its own)."""
    from mmdet.datasets import CocoDataset
    from mmdet.registry import DATASETS

    cls = DATASETS.get(kind)
    if not (isinstance(cls, type) and issubclass(cls, CocoDataset)):
        return False
    return cls.load_data_list is CocoDataset.load_data_list and cls.__init__ is CocoDataset.__init__  # type: ignore[attr-defined,misc]  # mypy types cls as a bare type


def _coco_dataset_keys() -> set[str]:
    """The arguments CocoDataset takes (its own and its base classes')."""
    import inspect

    from mmdet.datasets import CocoDataset

    classes = [cls for cls in CocoDataset.__mro__ if "__init__" in vars(cls)]
    return {name for cls in classes for name in inspect.signature(cls.__init__).parameters} - {"self", "args", "kwargs"}


def set_fold_data(
    loader: dict[str, Any], ann_file: str, images_dir: str, classes: tuple[str, ...], train: bool
) -> list[str]:
    """Point every real dataset of a dataloader at the fold's COCO file and images, with the
    run's classes. Wrappers stay (their pipelines and repeat counts are the config's); a
    ConcatDataset becomes its first member; a dataset type that does not read COCO files
    as CocoDataset does (VOC, LVIS) becomes CocoDataset."""
    changes = _one_dataset(loader, "dataset")
    for dataset in inner_datasets(loader["dataset"]):
        kind = _type(dataset)
        if kind and not _reads_coco(kind):
            foreign = sorted(set(dataset) - _coco_dataset_keys() - {"type"})  # DSDL's specific_key_path ...
            for key in foreign:
                dataset.pop(key)
            dropped = f"; its {', '.join(foreign)} dropped" if foreign else ""
            changes.append(f"dataset type {kind} -> CocoDataset (the fold files are COCO){dropped}")
            dataset["type"] = "CocoDataset"
        # item by item: ConfigDict.update would merge into the config's own data_prefix and metainfo
        dataset["ann_file"] = str(Path(ann_file).resolve())
        dataset["data_root"] = ""
        dataset["data_prefix"] = dict(img=str(Path(images_dir).resolve()) + "/")
        dataset["metainfo"] = dict(classes=classes)
        if train:
            dataset["filter_cfg"] = dict(filter_empty_gt=True, min_size=1)
    for wrapper in dataset_chain(loader["dataset"]):
        if _type(wrapper) == "RepeatDataset":
            changes.append(f"RepeatDataset kept: each epoch is {wrapper.get('times')} passes over the fold's images")
    return changes


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


# ------------------------------------------------------------------------------ img_scale


def pipeline_steps(pipeline: list[Any]) -> Iterator[dict[str, Any]]:
    """Every transform of a pipeline, also those nested in RandomChoice / TestTimeAug /
    RandomApply (``transforms``: a list of transforms, or a list of such lists)."""
    for step in pipeline or []:
        if isinstance(step, (list, tuple)):
            yield from pipeline_steps(list(step))
        elif isinstance(step, dict):
            yield step
            if isinstance(step.get("transforms"), (list, tuple)) and _type(step) != "Albu":
                yield from pipeline_steps(list(step["transforms"]))


def _pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)


def _pixels(value: Any) -> bool:
    """A (w, h) size in pixels, not a range of factors (InstaBoost's ``scale=(0.8, 1.2)``)."""
    return _pair(value) and all(v >= 1 for v in value)


def reference_size(pipeline: list[Any]) -> tuple[int, int] | None:
    """The pipeline's own input size: the first transform that sizes to one (w, h)."""
    for step in pipeline_steps(pipeline):
        kind = _type(step)
        if kind == "FixShapeResize" and step.get("width") and step.get("height"):
            return int(step["width"]), int(step["height"])
        for key in ("scale", "img_scale", "crop_size", "size"):
            relative = kind == "RandomCrop" and step.get("crop_type", "absolute") != "absolute"
            if _pixels(step.get(key)) and not relative:
                return int(step[key][0]), int(step[key][1])
    return None


class ScaleMap:
    """Maps the config's sizes onto ``img_scale``: its reference size becomes exactly
    ``img_scale``; exact sizes scale per axis, keep-ratio scales by long/short side, ranges by
    one factor."""

    def __init__(self, reference: tuple[int, int], img_scale: tuple[int, int]) -> None:
        self.ref, self.img = reference, img_scale
        self.long = max(img_scale) / max(reference)
        self.short = min(img_scale) / min(reference)

    def exact(self, value: Any) -> tuple[int, int]:
        (w, h), (img_w, img_h), (ref_w, ref_h) = value, self.img, self.ref
        return max(1, round(w * img_w / ref_w)), max(1, round(h * img_h / ref_h))

    def keep_ratio(self, value: Any) -> tuple[int, int]:
        a, b = value
        fa, fb = (self.long, self.short) if a >= b else (self.short, self.long)
        return max(1, round(a * fa)), max(1, round(b * fb))

    def range(self, value: Any, factor: float) -> tuple[int, int]:
        w, h = value
        return max(1, round(w * factor)), max(1, round(h * factor))


def _scale_step(step: dict[str, Any], scale: ScaleMap, where: str) -> str | None:
    """Set one transform's sizes through ``scale``; its change line, or None when it has none.
    Raises on a transform with a size key detfold does not know how to set."""
    kind = _type(step)
    before = {key: step.get(key) for key in SIZE_KEYS if step.get(key) is not None}
    if kind in ("Resize", "RandomResize"):
        value = step.get("scale")
        if _pair(value):
            step["scale"] = scale.keep_ratio(value) if step.get("keep_ratio", False) else scale.exact(value)
        elif isinstance(value, (list, tuple)) and all(_pair(v) for v in value):  # a range of scales
            step["scale"] = [scale.keep_ratio(v) for v in value]
    elif kind == "RandomChoiceResize":
        step["scales"] = [scale.keep_ratio(v) for v in step["scales"]]
    elif kind == "RandomCrop":
        crop_type = step.get("crop_type", "absolute")
        if crop_type == "absolute":
            step["crop_size"] = scale.exact(step["crop_size"])
        elif crop_type == "absolute_range":
            step["crop_size"] = scale.range(step["crop_size"], scale.short)
    elif kind in ("Pad", "RandomCenterCropPad"):
        for key in ("size", "crop_size"):
            if _pair(step.get(key)):
                step[key] = scale.exact(step[key])
    elif kind in ("Mosaic", "CachedMosaic", "MixUp", "CachedMixUp"):
        step["img_scale"] = scale.exact(step["img_scale"])
    elif kind == "FixShapeResize":
        step["width"], step["height"] = scale.exact((step["width"], step["height"]))
    elif kind in CONTAINERS or kind == "Albu":
        return None
    elif before:
        key = next(iter(before))
        raise ValueError(
            f"{where}: transform {kind} has {key}={before[key]!r}, which detfold does not know how to "
            "set for img_scale; set its size in your config (or cfg_options) and leave img_scale out"
        )
    if kind == "RandomAffine" and _pair(step.get("border")) and any(step["border"]):
        step["border"] = tuple(round(b * i / r) for b, i, r in zip(step["border"], scale.img, scale.ref, strict=True))
        return f"{where}: RandomAffine border -> {step['border']}"
    after = {key: step.get(key) for key in before}
    if after == before:
        return None
    return f"{where}: {kind} " + ", ".join(f"{k} {before[k]} -> {after[k]}" for k in before if after[k] != before[k])


def scale_pipeline(pipeline: list[Any], scale: ScaleMap, where: str) -> list[str]:
    return [line for step in pipeline_steps(pipeline) if (line := _scale_step(step, scale, where))]


def loader_pipelines(loader: dict[str, Any]) -> Iterator[list[Any]]:
    """The pipelines of a dataloader: the wrappers' (e.g. MultiImageMixDataset's Mosaic), then
    the inner datasets'."""
    for node in dataset_chain(loader["dataset"]):
        if node.get("pipeline"):
            yield node["pipeline"]


def set_img_scale(cfg: dict[str, Any], img_scale: tuple[int, int], name: str) -> list[str]:
    """Make ``img_scale`` (w, h) the network input of training and prediction: every sizing
    transform of the train and test pipelines (nested ones too), the train pipeline a
    PipelineSwitchHook switches to, and the data preprocessor's batch resizes and pads. Each
    pipeline's reference size (its first fixed size) becomes exactly ``img_scale``; other sizes
    scale with it. Raises when the train pipelines have no sizing transform at all."""
    img_scale = (int(img_scale[0]), int(img_scale[1]))
    test = list(loader_pipelines(cfg["test_dataloader"]))
    test_ref = next((ref for p in test if (ref := reference_size(p))), None)
    changes: list[str] = []
    train_ref = None
    pipelines = [("train pipeline", p) for p in loader_pipelines(cfg["train_dataloader"])]
    pipelines += [
        (f"{_type(hook)} switch_pipeline", hook["switch_pipeline"])
        for hook in cfg.get("custom_hooks") or []
        if isinstance(hook.get("switch_pipeline"), list)
    ]
    for where, pipeline in pipelines:
        ref = reference_size(pipeline) or test_ref
        if ref is None:
            continue
        train_ref = train_ref or ref
        changes += scale_pipeline(pipeline, ScaleMap(ref, img_scale), where)
    if not any(line.startswith("train pipeline") for line in changes) and not any(
        reference_size(p) for _, p in pipelines
    ):
        raise ValueError(
            f"{name}: no sizing transform in the train pipeline for img_scale; leave img_scale out, or add a "
            "Resize to the config"
        )
    for pipeline in test:
        ref = reference_size(pipeline)
        if ref is not None:
            changes += scale_pipeline(pipeline, ScaleMap(ref, img_scale), "test pipeline")
    if test_ref is None:
        changes.append("test pipeline has no sizing transform: images are predicted at their own size")
    preprocessor = (cfg.get("model") or {}).get("data_preprocessor") or {}
    for augment in preprocessor.get("batch_augments") or []:
        kind = _type(augment)
        if kind == "BatchSyncRandomResize" and train_ref:
            old = augment["random_size_range"]
            augment["random_size_range"] = ScaleMap(train_ref, img_scale).range(old, max(img_scale) / max(train_ref))
            changes.append(f"data_preprocessor {kind} random_size_range {old} -> {augment['random_size_range']}")
        elif kind == "BatchFixedSizePad" and _pair(augment.get("size")) and train_ref:
            old = augment["size"]
            # a multiple of the padding divisor, as the config's was (NAS-FPN/FPG: 128, every level halves)
            divisor = int(preprocessor.get("pad_size_divisor") or 1)
            size = ScaleMap(train_ref, img_scale).exact(old)
            augment["size"] = tuple(math.ceil(v / divisor) * divisor for v in size)
            changes.append(f"data_preprocessor {kind} size {old} -> {augment['size']}")
    return changes


def set_multi_scale(cfg: dict[str, Any], scales: list[Any], name: str) -> list[str]:
    """Replace the first Resize/RandomResize of the train pipelines by a RandomChoiceResize
    over ``scales`` ([w, h] each)."""
    sizes = [tuple(int(v) for v in scale) for scale in scales]
    for pipeline in loader_pipelines(cfg["train_dataloader"]):
        for i, step in enumerate(pipeline):
            if isinstance(step, dict) and _type(step) in ("Resize", "RandomResize"):
                pipeline[i] = dict(type="RandomChoiceResize", scales=sizes, keep_ratio=True)
                return [f"multi_scale: {_type(step)} -> RandomChoiceResize over {sizes}"]
    raise ValueError(f"{name}: no Resize/RandomResize in the train pipeline for multi_scale")


# ------------------------------------------------------------------------------ schedule


def stretch_schedulers(param_scheduler: Any, old: int, new: int, unit: str = "epoch") -> tuple[list[Any], list[str]]:
    """Stretch LR/momentum schedulers of one unit (``epoch``: those with ``by_epoch`` true;
    ``iter``: the others) from ``old`` to ``new`` units. A scheduler left with nothing to run
    (end <= begin, or T_max 0) is dropped. Returns the schedulers and the change lines."""
    schedulers = list(param_scheduler) if isinstance(param_scheduler, (list, tuple)) else [param_scheduler]
    kept, changes = [], []
    for sched in schedulers:
        if bool(sched.get("by_epoch", True)) != (unit == "epoch"):
            kept.append(sched)
            continue
        for key in ("begin", "end", "T_max"):
            if isinstance(sched.get(key), int):
                sched[key] = round(sched[key] * new / old)
        if isinstance(sched.get("milestones"), list):
            sched["milestones"] = [round(m * new / old) for m in sched["milestones"]]
        begin, end = sched.get("begin", 0), sched.get("end", math.inf)
        if end <= begin or sched.get("T_max", 1) == 0:
            changes.append(f"{_type(sched)} dropped: nothing left of it in {new} {unit}s")
            continue
        kept.append(sched)
    if old != new:
        changes.insert(0, f"{unit}-based schedulers stretched from {old} to {new} {unit}s")
    return kept, changes


def stretch_epoch_hooks(hooks: list[dict[str, Any]], old: int, new: int) -> list[str]:
    """Stretch every epoch number of the custom hooks (PipelineSwitchHook.switch_epoch,
    YOLOXModeSwitchHook.num_last_epochs, EMAHook.begin_epoch, ...) from ``old`` to ``new``."""
    changes = []
    for hook in hooks:
        for key, value in list(hook.items()):
            if EPOCH_KEY.search(key) and isinstance(value, int) and not isinstance(value, bool):
                hook[key] = round(value * new / old)
                if hook[key] != value:
                    changes.append(f"{_type(hook)}.{key} {value} -> {hook[key]}")
    return changes


def set_schedule(cfg: dict[str, Any], epochs: int | None, iters_per_epoch: int, name: str) -> list[str]:
    """An epoch-based training loop of ``epochs`` (default: the config's own), every epoch
    number stretched to it. An iteration-based config (IterBasedTrainLoop) becomes epoch-based:
    ``epochs`` is then required, and its iteration schedulers are stretched from ``max_iters``
    to ``epochs x iters_per_epoch``."""
    train_cfg = cfg.get("train_cfg") or {}
    changes: list[str] = []
    if _type(train_cfg) == "IterBasedTrainLoop" or "max_iters" in train_cfg:
        if not epochs:
            raise ValueError(
                f"{name}: the config is iteration-based (IterBasedTrainLoop, max_iters "
                f"{train_cfg.get('max_iters')}); set epochs for detfold's epoch-based folds"
            )
        old_iters, new_iters = int(train_cfg["max_iters"]), int(epochs) * iters_per_epoch
        cfg["param_scheduler"], lines = stretch_schedulers(
            cfg.get("param_scheduler") or [], old_iters, new_iters, "iter"
        )
        changes += [f"IterBasedTrainLoop ({old_iters} iterations) -> {epochs} epochs of {iters_per_epoch}", *lines]
        sampler = cfg["train_dataloader"].get("sampler") or {}
        if _type(sampler) == "InfiniteSampler":
            cfg["train_dataloader"]["sampler"] = dict(type="DefaultSampler", shuffle=True)
            changes.append("InfiniteSampler -> DefaultSampler (epochs end)")
        cfg["log_processor"] = {**(cfg.get("log_processor") or {}), "by_epoch": True}
    else:
        old = int(train_cfg.get("max_epochs", epochs or 1))
        epochs = int(epochs or old)
        if cfg.get("param_scheduler"):
            cfg["param_scheduler"], lines = stretch_schedulers(cfg["param_scheduler"], old, epochs)
            changes += lines
        changes += stretch_epoch_hooks(cfg.get("custom_hooks") or [], old, epochs)
    cfg["train_cfg"] = dict(type="EpochBasedTrainLoop", max_epochs=int(epochs), val_interval=int(epochs) + 1)
    return changes


def base_batch_size(cfg: dict[str, Any], config_file: str) -> int | None:
    """The total batch the config's lr was set for: ``auto_scale_lr.base_batch_size`` when the
    config file itself sets it; else the ``NxbM`` (N GPUs x M images) of its name or of the
    names in its ``_base_`` (mmdet's naming: RTMDet's configs inherit a generic base batch of
    16 but were trained at 8xb32); else an inherited ``auto_scale_lr.base_batch_size``; None
    when nothing says."""
    base = (cfg.get("auto_scale_lr") or {}).get("base_batch_size")
    text = Path(config_file).read_text(encoding="utf-8") if Path(config_file).is_file() else ""
    if base and re.search(r"^auto_scale_lr\b", text, re.MULTILINE):
        return int(base)
    bases = re.findall(r"""['"]([^'"]+)['"]""", "".join(re.findall(r"^_base_\s*=.*?(?:\n\S|\Z)", text, re.S | re.M)))
    for name in [Path(config_file).name, *bases]:
        if match := BATCH_NAME.search(Path(name).name):
            return int(match[1]) * int(match[2])
    return int(base) if base else None


def scale_lr(cfg: dict[str, Any], settings: dict[str, Any], batch_size: int, config_file: str, name: str) -> list[str]:
    """mmdet's linear rule: lr x (gpus x batch_size x accumulate) / base batch (``batch_size``
    is per GPU, as in mmdet). Default on when the model's settings give no ``lr`` and the
    config states its base batch; ``auto_scale_lr: true`` without a base batch is an error.
    detfold applies it itself (mmengine's own scaling stays off, it ignores gradient
    accumulation)."""
    from detfold.core.config import model_gpus

    enable = settings.get("auto_scale_lr")
    base = base_batch_size(cfg, config_file)
    cfg["auto_scale_lr"] = dict(enable=False, base_batch_size=base or batch_size)
    if enable is None:
        enable = "lr" not in settings and base is not None
    if not enable:
        return []
    if base is None:
        raise ValueError(
            f"{name}: auto_scale_lr is true but the config states no base batch size "
            "(auto_scale_lr.base_batch_size, or NxbM in its name); set it, or set lr"
        )
    gpus, accumulate = model_gpus(settings), int(settings.get("accumulate", 1))
    effective = gpus * batch_size * accumulate
    optimizer = cfg["optim_wrapper"]["optimizer"]
    old = float(optimizer["lr"])
    optimizer["lr"] = old * effective / base
    factors = f"{gpus} GPUs x {batch_size} x {accumulate} = " if gpus > 1 else ""
    return [f"auto_scale_lr: lr {old:g} x {factors}{effective}/{base} -> {optimizer['lr']:g}"]


# ------------------------------------------------------------------------------- weights


def pretrained_inits(node: Any, key: str = "model") -> Iterator[tuple[str, dict[str, Any], str, dict[str, Any] | None]]:
    """(key, owner, field, init) of every pretrained-weights reference in a model config:
    ``owner[field]`` is an ``init_cfg`` of type Pretrained or one naming a ``checkpoint``
    without a type (PVT reads it so) (``init``), or a list holding one (``init``: that item), or
    a ``pretrained`` path or ``pretrained=True`` (timm's download) (``init`` None)."""
    if isinstance(node, dict):
        for name, value in node.items():
            here = f"{key}.{name}"
            if name == "init_cfg":
                for i, init in enumerate(value if isinstance(value, list) else [value]):
                    if _is_pretrained(init):
                        yield (f"{here}[{i}]" if isinstance(value, list) else here), node, name, init
            elif name == "pretrained" and (isinstance(value, str) or value is True):
                yield here, node, name, None
            else:
                yield from pretrained_inits(value, here)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from pretrained_inits(value, f"{key}[{i}]")


def _is_pretrained(init: Any) -> bool:
    return isinstance(init, dict) and (_type(init) == "Pretrained" or (not init.get("type") and "checkpoint" in init))


def _drop(owner: dict[str, Any], field: str) -> None:
    value = owner[field]
    if isinstance(value, list):
        owner[field] = [init for init in value if not _is_pretrained(init)] or None
    else:
        owner[field] = False if value is True else None


def set_pretrained_weights(model: dict[str, Any], load_from: str | None, backbone_weights: Any, name: str) -> list[str]:
    """Make sure no pretrained weights are fetched at training start. With ``load_from`` every
    pretrained ``init_cfg`` is dropped (the checkpoint overwrites the model); with
    ``backbone_weights: PATH`` the backbone's reads that local file; ``backbone_weights: false``
    drops them all (from scratch). A remote one left otherwise is an error naming key and URL.
    Local files the config itself names are kept."""
    changes: list[str] = []
    if backbone_weights not in (None, False):
        if not Path(str(backbone_weights)).is_file():
            raise FileNotFoundError(
                f"{name}: backbone_weights {backbone_weights!r} not found (weights are never downloaded)"
            )
        if load_from:
            changes.append(f"backbone_weights {backbone_weights} not used: load_from overwrites the whole model")
    remote = []
    for key, owner, field, init in list(pretrained_inits(model)):
        checkpoint = str((owner[field] if init is None else init.get("checkpoint")) or "")
        if not checkpoint or ("://" not in checkpoint and Path(checkpoint).is_file()):
            continue  # none, or a local file the config itself names
        if load_from or backbone_weights is False:
            _drop(owner, field)
            why = "load_from overwrites it" if load_from else "backbone_weights: false, from scratch"
            changes.append(f"{key} ({checkpoint}) dropped: {why}")
        elif backbone_weights is not None and key.startswith("model.backbone.") and checkpoint != "True":
            local = str(Path(str(backbone_weights)).resolve())
            if init is None:
                owner[field] = local
            else:
                init["checkpoint"] = local
            changes.append(f"{key}: {checkpoint} -> {local} (backbone_weights)")
        else:
            remote.append((key, checkpoint))
    if remote:
        key, url = remote[0]
        more = f" (and {len(remote) - 1} more)" if len(remote) > 1 else ""
        raise ValueError(
            f"{name}: {key} = {url!r}{more} would be downloaded at training start, and weights are never "
            "downloaded: set load_from (a local COCO checkpoint), backbone_weights (a local file) or "
            "backbone_weights: false (train from scratch)"
        )
    return changes + check_teacher_weights(model, name) + _no_remote_left(model, name)


def _no_remote_left(node: Any, name: str, key: str = "model") -> list[str]:
    """Any URL left anywhere in the model config, whatever key names it: an error naming it."""
    if isinstance(node, dict):
        for field, value in node.items():
            _no_remote_left(value, name, f"{key}.{field}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _no_remote_left(value, name, f"{key}[{i}]")
    elif isinstance(node, str) and re.match(r"^[a-z][a-z0-9+.-]*://", node):
        raise ValueError(
            f"{name}: {key} = {node!r} would be fetched from the network, and nothing is downloaded "
            "at run time: set it to a local file with cfg_options, or choose a config without it"
        )
    return []


def set_teacher_config(model: dict[str, Any], name: str) -> list[str]:
    """Knowledge distillation (LD): a teacher config named by a path relative to MMDetection's
    source tree (``configs/gfl/...``) is read from the installed mmdet, and put into the model
    config itself, so that its classes are the fold's and its pretrained weights are handled
    as the student's (nothing of it is downloaded)."""
    teacher = model.get("teacher_config")
    if not isinstance(teacher, (str, Path)):
        return []
    from mmengine.config import Config

    path = Path(teacher)
    if not path.is_file():
        installed = mmdet_configs_root() / Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else None
        if installed is None or not installed.is_file():
            raise FileNotFoundError(
                f"{name}: model.teacher_config {str(teacher)!r} not found: set it to a teacher config file "
                "with cfg_options (model.teacher_config)"
            )
        path = installed
    model["teacher_config"] = {"model": Config.fromfile(str(path)).model.to_dict()}
    return [f"model.teacher_config {str(teacher)!r} -> the model of {path} (its classes: the fold's)"]


def check_teacher_weights(model: dict[str, Any], name: str) -> list[str]:
    """A distillation teacher's checkpoint (``teacher_ckpt``, loaded when the model is built,
    whatever ``load_from`` says) must be a local file: never downloaded."""
    if "teacher_ckpt" not in model:
        return []
    checkpoint = model["teacher_ckpt"]
    if checkpoint is not None and "://" not in str(checkpoint) and Path(str(checkpoint)).is_file():
        return []
    why = "would be downloaded when the model is built" if "://" in str(checkpoint) else "is not a local file"
    raise ValueError(
        f"{name}: model.teacher_ckpt = {checkpoint!r} {why}, and weights are never downloaded: knowledge "
        "distillation needs its teacher's weights: set cfg_options {model.teacher_ckpt: /path/teacher.pth} "
        "(a teacher trained on your classes)"
    )


# ---------------------------------------------------------------------------- model kind


def mmdet_configs_root() -> Path:
    import mmdet

    return Path(mmdet.__file__).parent / ".mim" / "configs"


#: model base classes that detect no boxes from box annotations, and why (the first match says)
TRACKING = "a tracking or video model: it links detections across video frames; use the config of its detector"
GROUNDING = "a text-conditioned (grounding) detector: it needs a language model and text prompts"
NOT_BOX_DETECTORS = (
    ("BaseMOTModel", TRACKING),
    ("BaseReID", "a re-identification model: it embeds crops of people, it detects nothing"),
    (
        "SemiBaseDetector",
        "a semi-supervised teacher-student model: it trains on unlabelled images too; use its detector's config",
    ),
    ("TwoStagePanopticSegmentor", "a panoptic segmentation model: it is trained on masks and stuff regions"),
    ("MaskFormer", "a panoptic/instance segmentation model: its boxes come from the masks it is trained on"),
    (
        "RPN",
        "a region proposal network: it proposes class-agnostic regions; use a detector that classifies them "
        "(e.g. mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py)",
    ),
    ("GLIP", GROUNDING),
    ("GroundingDINO", GROUNDING),
)


def check_box_detector(cfg: dict[str, Any], name: str) -> None:
    """detfold trains box detectors: a config without a model, or whose model is no box
    detector (tracking, re-identification, panoptic, proposal-only, text-conditioned,
    semi-supervised), is refused with the reason, naming ``model.type``."""
    import mmdet.models  # noqa: F401  # registers mmdet's models
    from mmdet.registry import MODELS

    model = cfg.get("model")
    if not isinstance(model, dict) or not model.get("type"):
        raise ValueError(
            f"{name}: no model (no model.type): this config holds settings other configs inherit "
            "(a dataset, a schedule); detfold trains a box detector: choose a model config"
        )
    kind = model["type"]
    cls = MODELS.get(kind) if isinstance(kind, str) else kind
    if not isinstance(cls, type):
        raise ValueError(f"{name}: model.type {kind!r} is not a model registered in mmdet (a missing custom_imports?)")
    for base, why in NOT_BOX_DETECTORS:
        if any(klass.__name__ == base for klass in cls.__mro__):
            raise ValueError(f"{name}: detfold trains box detectors, and model.type {_type(model)!r} is {why}")
    if model.get("language_model"):
        raise ValueError(
            f"{name}: model.type {_type(model)!r} is text-conditioned (model.language_model): detfold "
            "trains box detectors"
        )
    for pipeline in loader_pipelines(cfg.get("train_dataloader") or {"dataset": {}}):
        if any(_type(step) == "LoadProposals" for step in pipeline_steps(pipeline)):
            raise ValueError(
                f"{name}: the train pipeline's LoadProposals reads region proposals precomputed for each image "
                "(dataset proposal_file), which detfold's folds do not have: choose a detector with its own "
                "RPN (e.g. mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py)"
            )


#: RoI heads that assert their mask branch (the rest run without one)
MASK_REQUIRED_ROI_HEADS = ("SCNetRoIHead", "PointRendRoIHead", "MaskScoringRoIHead")
#: the mask and segmentation parts of an RoI head
MASK_PARTS = (
    *("mask_roi_extractor", "mask_head"),
    *("semantic_roi_extractor", "semantic_head", "glbctx_head", "feat_relay_head"),
)
#: train transforms that work on instance masks
MASK_TRANSFORMS = ("InstaBoost", "CopyPaste")


def drop_mask_branch(cfg: dict[str, Any], name: str) -> list[str]:
    """detfold trains and scores boxes from box annotations: a model that also trains masks
    (its train pipeline loads them) loses its RoI head's mask and segmentation parts and no
    pipeline loads masks; a model whose boxes need its masks (no RoI head, or one that asserts
    its mask head) and a train transform that works on masks are refused, naming them."""
    pipelines = [p for p in loader_pipelines(cfg["train_dataloader"])]
    steps = [step for pipeline in pipelines for step in pipeline_steps(pipeline)]
    for step in steps:
        if _type(step) in MASK_TRANSFORMS:
            raise ValueError(
                f"{name}: train transform {_type(step)} works on instance masks, and detfold trains on box "
                "annotations: remove it from the train pipeline (or choose a config without it)"
            )
    loads = [s for s in steps if _type(s) == "LoadAnnotations" and (s.get("with_mask") or s.get("with_seg"))]
    if not loads:
        return []
    roi = cfg["model"].get("roi_head")
    if not isinstance(roi, dict) or not roi.get("mask_head") or _type(roi) in MASK_REQUIRED_ROI_HEADS:
        where = f"model.type {_type(cfg['model'])!r}"
        if isinstance(roi, dict):
            where = f"model.roi_head.type {_type(roi)!r}"
        raise ValueError(
            f"{name}: {where} trains on instance masks and cannot train without them (train pipeline "
            "LoadAnnotations with_mask=True); detfold trains box detectors on box annotations: choose the "
            "family's box config"
        )
    dropped = [part for part in MASK_PARTS if roi.get(part)]
    for part in dropped:
        roi[part] = None
    for loader in ("train_dataloader", "test_dataloader"):
        for pipeline in loader_pipelines(cfg[loader]):
            for step in pipeline_steps(pipeline):
                if _type(step) == "LoadAnnotations":
                    step.update(with_mask=False, with_seg=False)
    return [f"model.roi_head {', '.join(dropped)} dropped, no masks loaded: detfold trains boxes"]


def _encoder_tokens(width: int, height: int, levels: int) -> int:
    """The tokens of a DETR encoder over a ``width`` x ``height`` input: feature levels at
    strides 8, 16, 32, ... (ResNet's C3-C5 and one more, as mmdet's DETR configs build them)."""
    return sum(math.ceil(width / 2**i / 8) * math.ceil(height / 2**i / 8) for i in range(levels))


def check_input_size(cfg: dict[str, Any], img_scale: tuple[int, int], image_sizes: list[Any], name: str) -> None:
    """An input size the model cannot take is refused before training: SSD's anchors and its
    VGG's extra layers are built for ``SSDAnchorGenerator.input_size`` (300, 512), and a smaller
    input leaves a feature map smaller than its last convolution (a keep-ratio resize makes the
    short side of the fold's ``image_sizes``, (w, h), smaller than ``img_scale``); a two-stage
    DETR needs as many encoder tokens as queries (:func:`check_query_count`)."""
    model = cfg["model"]
    keep_ratio = any(
        _type(step) in ("Resize", "RandomResize") and step.get("keep_ratio")
        for pipeline in loader_pipelines(cfg["train_dataloader"])
        for step in pipeline_steps(pipeline)
    )
    aspect = max((max(w, h) / min(w, h) for w, h in image_sizes if w and h), default=1.0) if keep_ratio else 1.0
    short = min(min(img_scale), math.floor(max(img_scale) / aspect))
    for key, kind in _types(model, "model"):
        size = _at(model, key).get("input_size")
        if kind in ("SSDAnchorGenerator", "LegacySSDAnchorGenerator") and isinstance(size, int) and short < size:
            side = math.ceil(size * aspect)
            shape = f" (a keep-ratio resize of images {aspect:.2f} times wider than high)" if aspect > 1 else ""
            raise ValueError(
                f"{name}: img_scale {list(img_scale)} gives inputs whose short side is {short}{shape}, smaller "
                f"than {key}.input_size {size}, the input SSD's anchors and extra layers are built for: set "
                f"img_scale to at least [{side}, {side}]"
            )
    check_query_count(model, img_scale, name)


def _at(node: Any, key: str) -> Any:
    """The part of a config at ``key`` (``model.a.b[0].c``, as :func:`_types` names it)."""
    for part in re.findall(r"\.(\w+)|\[(\d+)\]", key[key.index(".") :] if "." in key else ""):
        node = node[part[0]] if part[0] else node[int(part[1])]
    return node


def check_query_count(model: dict[str, Any], img_scale: tuple[int, int], name: str) -> None:
    """A two-stage DETR (DINO, DDQ, Deformable DETR's two-stage) selects its queries among
    the encoder's tokens: an ``img_scale`` with fewer tokens than queries fails in training
    (torch's ``selected index k out of range``); it is refused, naming the size that fits."""
    if not model.get("as_two_stage") or not model.get("num_queries"):
        return
    queries, key = int(model["num_queries"]), "model.num_queries"
    if model.get("dense_topk_ratio"):  # DDQ's dense queries
        queries, key = math.ceil(queries * float(model["dense_topk_ratio"])), f"{key} x dense_topk_ratio"
    levels = int(model.get("num_feature_levels", 4))
    tokens = _encoder_tokens(*img_scale, levels)
    if tokens >= queries:
        return
    side = next(s for s in range(32, 4096, 32) if _encoder_tokens(s, s, levels) >= queries)
    raise ValueError(
        f"{name}: img_scale {list(img_scale)} gives the encoder at most {tokens} tokens, fewer than the "
        f"{queries} queries ({key}) it selects among them: set img_scale to at least "
        f"[{side}, {side}] (more for images that are not square), or fewer queries with cfg_options"
    )


def check_builds(cfg: dict[str, Any], name: str) -> None:
    """Every transform of the train and test pipelines and the model's data preprocessor are
    built once, so that one that cannot be built with the installed packages (an albumentations
    transform renamed since the config was written, BoxInst's preprocessor without
    scikit-image) stops before training with one line naming it, not in the data loader."""
    import copy

    import mmdet.datasets  # registers mmdet's transforms
    import mmdet.models  # noqa: F401
    from mmdet.registry import MODELS, TRANSFORMS
    from mmengine.registry import DefaultScope

    parts = [
        (f"{split} pipeline transform {_type(step)}", TRANSFORMS, step)
        for split in ("train", "test")
        for pipeline in loader_pipelines(cfg[f"{split}_dataloader"])
        for step in pipeline
        if isinstance(step, dict)
    ]
    if isinstance(cfg["model"].get("data_preprocessor"), dict):
        preprocessor = cfg["model"]["data_preprocessor"]
        parts.append((f"model.data_preprocessor {_type(preprocessor)}", MODELS, preprocessor))
    for where, registry, part in parts:
        try:
            with DefaultScope.overwrite_default_scope("mmdet"):  # nested transforms (RandomChoice) too
                registry.build(copy.deepcopy(part))
        except Exception as err:  # any library error, reported as one line of detfold's
            why = " ".join(f"{type(err).__name__}: {err}".split())
            raise ValueError(f"{name}: {where} cannot be built with the installed packages ({why})") from None


#: model parts that run an mmcv operation with no CPU implementation (mmcv's csrc/pytorch/cpu)
GPU_ONLY = {
    "carafe": "CARAFE upsampling",
    "CARAFEPack": "CARAFE upsampling",
    "RoIPool": "RoI pooling (roi_pool)",
    "DeformRoIPoolPack": "deformable RoI pooling",
    "ModulatedDeformRoIPoolPack": "modulated deformable RoI pooling",
    "GARetinaHead": "masked convolution (masked_conv2d) when it predicts",
    "GARPNHead": "masked convolution (masked_conv2d) when it predicts",
}


def _types(node: Any, key: str) -> Iterator[tuple[str, str]]:
    """(key, type) of every part of a config with a string ``type``."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield key, _type(node)
        for field, value in node.items():
            yield from _types(value, f"{key}.{field}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _types(value, f"{key}[{i}]")


def check_cpu_ops(model: dict[str, Any], device: str, name: str) -> None:
    """On a machine without a GPU, a model part whose mmcv operation has no CPU implementation
    (CARAFE, RoIPool, deformable RoI pooling, guided anchoring's masked convolution) is refused
    before training, naming it (mmcv fails with ``implementation for device cpu not found``)."""
    if device != "cpu":
        return
    for key, kind in _types(model, "model"):
        if kind in GPU_ONLY:
            raise ValueError(
                f"{name}: {key}.type {kind!r} runs mmcv's {GPU_ONLY[kind]}, which has no CPU implementation, "
                "and this job has no GPU: train it where a GPU is, or choose a config without it"
            )


def set_process_norm(model: dict[str, Any], processes: int, device: str) -> list[str]:
    """Synchronised batch norm as the processes allow. One process: mmcv's ``MMSyncBN`` (which
    asks for a process group when it is built) becomes ``SyncBN`` (PyTorch's), which mmengine
    turns into plain BatchNorm outside distributed training, as every other SyncBN of a config.
    Several CPU processes: every SyncBN becomes ``BN`` (PyTorch's SyncBatchNorm runs on GPUs
    only), so each process normalises its own batch, and RTMDet's own conversion of its norms
    to SyncBN in distributed runs (``use_syncbn``) is turned off. Several GPUs: unchanged."""
    if processes > 1 and device == "cuda":
        return []
    kinds, new = ({"MMSyncBN"}, "SyncBN") if processes == 1 else ({"MMSyncBN", "SyncBN"}, "BN")
    changes = []
    if processes > 1 and _type(model) == "RTMDet" and model.get("use_syncbn", True):
        model["use_syncbn"] = False
        changes.append(f"model.use_syncbn: False ({processes} CPU processes)")
    keys = [key for key, kind in _types(model, "model") if kind in kinds]
    for key in keys:
        norm = _at(model, key)
        norm["type"] = new
        for only_mmcv in ("group", "stats_mode"):
            norm.pop(only_mmcv, None)
    why = "one process; mmengine makes it BatchNorm" if processes == 1 else f"{processes} CPU processes"
    return changes + ([f"{'/'.join(sorted(kinds))} -> {new} ({why}): {len(keys)} norm layers"] if keys else [])
