"""Config adaptation (detfold.train.mmdet_config) on MMDetection's own zoo configs: resolved with a
fold's data, nothing left that would download, read the wrong data or run at the zoo's scale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from detfold.core.coco import load_coco, write_coco
from detfold.train.mmdet_config import inner_datasets, loader_pipelines, pipeline_steps, pretrained_inits
from helpers.zoo_matrix import FAMILIES


@pytest.fixture()
def fold(tmp_path, bccd_dir):
    coco = load_coco(bccd_dir / "train.json")
    write_coco(coco.subset(coco.image_ids[:8]), tmp_path / "train.json")
    write_coco(coco.subset(coco.image_ids[8:12]), tmp_path / "val.json")
    (tmp_path / "coco.pth").write_bytes(b"stand-in")  # resolve_config only needs the file to exist
    return tmp_path


def resolve(fold: Path, config: str, **settings):
    from detfold.train.mmdet_train import resolve_config

    images = str(Path(__file__).parents[1] / "data/bccd/images")
    settings = {"config": config, **settings}
    return resolve_config(settings, str(fold / "train.json"), str(fold / "val.json"), images, str(fold / "w"), 42)


def sizes(cfg) -> set[int]:
    """Every number in a sizing key of the train/test pipelines."""
    found = set()
    for loader in ("train_dataloader", "test_dataloader"):
        for pipeline in loader_pipelines(cfg[loader]):
            for step in pipeline_steps(pipeline):
                for key in ("scale", "scales", "img_scale", "crop_size", "size"):
                    value = step.get(key)
                    flat = value if isinstance(value, (list, tuple)) else [value]
                    for item in flat:
                        found |= set(item) if isinstance(item, (list, tuple)) else {item}
    return {v for v in found if isinstance(v, int)}


@pytest.mark.parametrize("fam", FAMILIES, ids=[f.name for f in FAMILIES])
def test_every_zoo_family_resolves_onto_the_fold(fam, fold):
    cfg = resolve(fold, fam.config, epochs=3, batch_size=2, img_scale=[160, 160], load_from=str(fold / "coco.pth"))
    datasets = list(inner_datasets(cfg.train_dataloader.dataset)) + list(inner_datasets(cfg.test_dataloader.dataset))
    assert datasets and all(d["ann_file"].endswith(("train.json", "val.json")) for d in datasets)
    assert all(d["metainfo"]["classes"] == tuple(load_coco(fold / "train.json").class_names) for d in datasets)
    assert all(d["type"] == "CocoDataset" for d in datasets)
    remote = [key for key, owner, field, _ in pretrained_inits(cfg.model) if owner[field]]
    assert remote == [], remote  # nothing would be downloaded: load_from overwrites the model
    assert cfg.train_cfg == {"type": "EpochBasedTrainLoop", "max_epochs": 3, "val_interval": 4}
    for sched in cfg.param_scheduler:  # every scheduler still runs inside the 3 epochs
        assert sched.get("begin", 0) < sched.get("end", 10**9)
        if sched.get("by_epoch", True):
            assert sched.get("end", 3) <= 3 and max(sched.get("milestones", [0])) <= 3
    assert not sizes(cfg) & {1333, 1280, 1024, 800, 640, 608, 512, 416, 300}, sizes(cfg)  # no zoo scale left
    assert cfg.auto_scale_lr.enable is False  # detfold applies the rule itself (it knows accumulate)


def test_hooks_and_schedules_follow_epochs(fold):
    rtmdet = resolve(fold, "mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py", epochs=30, load_from=str(fold / "coco.pth"))
    switch = next(h for h in rtmdet.custom_hooks if h["type"] == "PipelineSwitchHook")
    assert switch["switch_epoch"] == 28  # 280 of 300 epochs
    cosine = next(s for s in rtmdet.param_scheduler if s["type"] == "CosineAnnealingLR")
    assert (cosine["begin"], cosine["end"], cosine["T_max"]) == (15, 30, 15)
    yolox = resolve(fold, "mmdet::yolox/yolox_tiny_8xb8-300e_coco.py", epochs=20, img_scale=[320, 320])
    mode = next(h for h in yolox.custom_hooks if h["type"] == "YOLOXModeSwitchHook")
    assert mode["num_last_epochs"] == 1  # 15 of 300
    # 5 warm-up epochs of 300 round to none of 20: dropped (begin == end would not run)
    assert [(s["type"], s["begin"], s["end"]) for s in yolox.param_scheduler] == [
        ("CosineAnnealingLR", 0, 19),
        ("ConstantLR", 19, 20),
    ]
    stage = yolox.train_dataloader.dataset  # MultiImageMixDataset: data inside, Mosaic outside
    assert stage.type == "MultiImageMixDataset" and stage.dataset.ann_file.endswith("train.json")
    steps = {s["type"]: s for s in stage.pipeline}
    assert steps["Mosaic"]["img_scale"] == (320, 320) and steps["RandomAffine"]["border"] == (-160, -160)
    resize = yolox.model.data_preprocessor.batch_augments[0]
    assert resize["type"] == "BatchSyncRandomResize" and tuple(resize["random_size_range"]) == (160, 320)
    assert {s["type"]: s for s in yolox.test_dataloader.dataset.pipeline}["Resize"]["scale"] == (320, 320)
    one = resolve(fold, "mmdet::yolox/yolox_tiny_8xb8-300e_coco.py", epochs=1, img_scale=[320, 320])
    assert [(s["type"], s["begin"], s["end"]) for s in one.param_scheduler] == [("CosineAnnealingLR", 0, 1)]


def test_detr_multi_scale_choices_scale_with_img_scale(fold):
    cfg = resolve(
        fold, "mmdet::detr/detr_r50_8xb2-150e_coco.py", img_scale=[320, 320], load_from=str(fold / "coco.pth")
    )
    choice = next(s for s in cfg.train_dataloader.dataset.pipeline if s["type"] == "RandomChoice")
    first = choice["transforms"][0][0]
    assert first["type"] == "RandomChoiceResize"
    assert first["scales"][0] == (192, 320) and first["scales"][-1] == (320, 320)  # (480 .. 800, 1333) x 0.4 / 0.24
    crop = choice["transforms"][1][1]
    assert crop["crop_type"] == "absolute_range" and tuple(crop["crop_size"]) == (154, 240)  # (384, 600) x 0.4
    test = {s["type"]: s for s in cfg.test_dataloader.dataset.pipeline}
    assert test["Resize"]["scale"] == (320, 320)


def test_a_remote_pretrained_init_without_load_from_is_one_clear_error(fold):
    with pytest.raises(ValueError) as err:
        resolve(fold, "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py")
    message = str(err.value)
    assert "model.backbone.init_cfg = 'torchvision://resnet50'" in message and "\n" not in message
    assert "load_from" in message and "backbone_weights" in message


def test_backbone_weights_replace_the_url_or_drop_it(fold):
    weights = fold / "resnet50.pth"
    weights.write_bytes(b"x")
    local = resolve(fold, "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", backbone_weights=str(weights))
    assert local.model.backbone.init_cfg == {"type": "Pretrained", "checkpoint": str(weights.resolve())}
    scratch = resolve(fold, "mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py", backbone_weights=False)
    assert scratch.model.backbone.init_cfg is None
    with pytest.raises(FileNotFoundError, match=r"backbone_weights 'nope\.pth' not found"):
        resolve(fold, "mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py", backbone_weights="nope.pth")


def test_cfg_options_cannot_bring_a_download_back(fold):
    url = {"_delete_": True, "type": "Pretrained", "checkpoint": "https://example.org/w.pth"}
    options = {"model.backbone.init_cfg": url}
    with pytest.raises(ValueError, match=r"https://example\.org/w\.pth"):
        resolve(fold, "config/models/rtmdet_tiny_cpu.py", cfg_options=options)


def test_iteration_based_config_becomes_epochs_or_asks_for_them(fold):
    config = "mmdet::retinanet/retinanet_r50_fpn_90k_coco.py"
    with pytest.raises(ValueError, match=r"iteration-based .*max_iters 90000.*set epochs"):
        resolve(fold, config, load_from=str(fold / "coco.pth"))
    cfg = resolve(fold, config, epochs=5, batch_size=2, load_from=str(fold / "coco.pth"))
    assert cfg.train_cfg.type == "EpochBasedTrainLoop" and cfg.train_cfg.max_epochs == 5
    assert cfg.train_dataloader.sampler.type == "DefaultSampler"
    multistep = next(s for s in cfg.param_scheduler if s["type"] == "MultiStepLR")
    total = 5 * 4  # 8 train images at batch 2
    assert multistep["end"] == total and multistep["milestones"] == [
        round(60000 * total / 90000),
        round(80000 * total / 90000),
    ]


def test_auto_scale_lr_follows_mmdets_linear_rule(fold):
    config = "mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py"  # 8 GPUs x 32 = 256, lr 0.004
    weights = {"load_from": str(fold / "coco.pth")}
    assert resolve(fold, config, batch_size=2, **weights).optim_wrapper.optimizer.lr == pytest.approx(0.004 * 2 / 256)
    both = resolve(fold, config, batch_size=2, accumulate=4, **weights)
    assert both.optim_wrapper.optimizer.lr == pytest.approx(0.004 * 8 / 256)
    assert resolve(fold, config, batch_size=2, lr=0.01, **weights).optim_wrapper.optimizer.lr == 0.01  # given lr: as is
    off = resolve(fold, config, batch_size=2, auto_scale_lr=False, **weights)
    assert off.optim_wrapper.optimizer.lr == pytest.approx(0.004)
    frcnn = resolve(fold, "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", batch_size=4, **weights)
    assert frcnn.optim_wrapper.optimizer.lr == pytest.approx(0.02 * 4 / 16)  # auto_scale_lr.base_batch_size 16


def test_wrappers_concat_and_class_balanced_reach_the_fold_data(fold):
    voc = resolve(fold, "mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py", load_from=str(fold / "coco.pth"))
    repeat = voc.train_dataloader.dataset
    assert repeat.type == "RepeatDataset" and repeat.dataset.type == "CocoDataset"  # ConcatDataset(VOC07, VOC12)
    assert repeat.dataset.ann_file.endswith("train.json")
    lvis = resolve(fold, "mmdet::lvis/mask-rcnn_r50_fpn_sample1e-3_ms-1x_lvis-v1.py", load_from=str(fold / "coco.pth"))
    balanced = lvis.train_dataloader.dataset
    assert balanced.type == "ClassBalancedDataset" and balanced.dataset.type == "CocoDataset"


def test_an_unknown_sizing_transform_is_named(fold, tmp_path):
    config = tmp_path / "odd.py"
    config.write_text(
        "_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'\n"
        "model = dict(backbone=dict(init_cfg=None))\n"
        "train_dataloader = dict(dataset=dict(pipeline=[dict(type='LoadImageFromFile'),"
        " dict(type='Resize', scale=(640, 640)), dict(type='MyResize', scale=(640, 640))]))\n"
    )
    with pytest.raises(ValueError, match=r"transform MyResize has scale=.*does not know how to set for img_scale"):
        resolve(fold, str(config), img_scale=[320, 320])


def test_network_blocked_zoo_config_without_load_from_fails_before_training(repo, fold):
    """Under ``unshare -n`` (no network at all): one line naming the init_cfg key and URL, and
    no training started (no work dir checkpoint)."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not permitted here")
    out = fold / "run"
    code = (
        f"import sys; sys.path.insert(0, {str(repo / 'scripts')!r})\n"
        "from detfold.core.logs import log_to; log_to(None)\n"
        "from detfold.train.mmdet_train import train_fold\n"
        f"train_fold({{'config': 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 'epochs': 1}}, "
        f"{str(fold / 'train.json')!r}, {str(fold / 'val.json')!r}, {str(repo / 'tests/data/bccd/images')!r}, "
        f"{str(out / 'model.pth')!r}, {str(out / 'config.py')!r}, 42)\n"
    )
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert result.returncode != 0
    failed = [line for line in result.stderr.splitlines() if "CRITICAL detfold: failed:" in line]
    assert len(failed) == 1, result.stderr[-2000:]
    assert "model.backbone.init_cfg = 'open-mmlab://detectron/resnet50_caffe'" in failed[0]
    assert not list(out.rglob("*.pth"))
