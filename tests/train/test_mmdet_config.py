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
    settings = {"img_scale": [160, 160], **fam.settings}  # DINO at 320: its queries need the tokens
    cfg = resolve(fold, fam.config, epochs=3, batch_size=2, load_from=str(fold / "coco.pth"), **settings)
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
    # batch_size is per GPU: gpus: 2 doubles the effective batch, hence the lr
    two = resolve(fold, config, batch_size=2, accumulate=4, gpus=2, **weights)
    assert two.optim_wrapper.optimizer.lr == pytest.approx(0.004 * 2 * 2 * 4 / 256)
    assert two.train_dataloader.batch_size == 2
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


# ------------------------------------------------------ zoo configs: refused in one line, or adapted


def one_line_error(kind, fold: Path, config: str, **settings) -> str:
    with pytest.raises(kind) as err:
        resolve(fold, config, **settings)
    message = str(err.value)
    assert "\n" not in message and config in message
    return message


def test_pvt_init_cfg_without_type_is_dropped_with_load_from_or_named_without(fold):
    config = "mmdet::pvt/retinanet_pvt-t_fpn_1x_coco.py"  # init_cfg=dict(checkpoint=URL): PVT fetches it
    cfg = resolve(fold, config, load_from=str(fold / "coco.pth"))
    assert cfg.model.backbone.init_cfg is None
    message = one_line_error(ValueError, fold, config)
    assert "model.backbone.init_cfg = 'https://github.com/whai362/PVT/" in message and "load_from" in message


def test_timm_pretrained_true_is_a_download_too():
    from detfold.train.mmdet_config import set_pretrained_weights

    model = {"backbone": {"type": "mmpretrain.TIMMBackbone", "model_name": "resnet50", "pretrained": True}}
    assert "True" in set_pretrained_weights(model, "coco.pth", None, "timm.py")[0]
    assert model["backbone"]["pretrained"] is False
    with pytest.raises(ValueError, match=r"timm\.py: model\.backbone\.pretrained = 'True' would be downloaded"):
        set_pretrained_weights({"backbone": {"pretrained": True}}, None, None, "timm.py")


def test_any_url_left_in_the_model_is_named(fold):
    config = "mmdet::misc/d2_retinanet_r50-caffe_fpn_ms-90k_coco.py"  # Detectron2's weights, under model.detector
    message = one_line_error(ValueError, fold, config, epochs=1, load_from=str(fold / "coco.pth"))
    assert "model.detector.weights = 'detectron2://ImageNetPretrained/MSRA/R-50.pkl'" in message


def test_distillation_teacher_checkpoint_must_be_local(fold):
    ld = "mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py"
    message = one_line_error(ValueError, fold, ld, load_from=str(fold / "coco.pth"))
    assert "model.teacher_ckpt = 'https://download.openmmlab.com/mmdetection/v2.0/gfl/" in message
    assert "cfg_options {model.teacher_ckpt: " in message
    lad = "mmdet::lad/lad_r101-paa-r50_fpn_2xb8_coco_1x.py"
    message = one_line_error(
        ValueError, fold, lad, load_from=str(fold / "coco.pth"), cfg_options={"model.teacher_ckpt": "no.pth"}
    )
    assert "model.teacher_ckpt = 'no.pth' is not a local file" in message


def test_ld_teacher_config_is_read_from_the_installed_mmdet_with_the_folds_classes(fold):
    teacher = fold / "teacher.pth"
    teacher.write_bytes(b"stand-in")
    cfg = resolve(
        fold,
        "mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py",
        load_from=str(fold / "coco.pth"),
        cfg_options={"model.teacher_ckpt": str(teacher)},
    )
    model = cfg.model.teacher_config["model"]  # was 'configs/gfl/gfl_r101_fpn_ms-2x_coco.py'
    assert model["type"] == "GFL" and model["backbone"]["depth"] == 101
    assert model["bbox_head"]["num_classes"] == len(load_coco(fold / "train.json").class_names)
    assert model["backbone"]["init_cfg"] is None  # its torchvision://resnet101: not fetched


@pytest.mark.parametrize(
    "config", ["mmdet::gn+ws/faster-rcnn_r50_fpn_gn-ws-all_1x_coco.py", "mmdet::legacy_1.x/ssd300_coco_v1.py"]
)
def test_zoo_names_mmengines_parser_refuses_load(fold, config):
    cfg = resolve(fold, config, load_from=str(fold / "coco.pth"), img_scale=[400, 400])
    assert cfg.train_dataloader.dataset.get("ann_file", "").endswith("train.json") or any(
        d["ann_file"].endswith("train.json") for d in inner_datasets(cfg.train_dataloader.dataset)
    )


def test_a_missing_base_file_is_named(fold):
    config = "mmdet::sort/faster-rcnn_r50_fpn_8xb2-4e_mot17train_test-mot17train.py"  # _base_ without .py in mmdet
    message = one_line_error(FileNotFoundError, fold, config)
    assert 'faster-rcnn_r50_fpn_8xb2-4e_mot17halftrain_test-mot17halfval" does not exist' in message
    assert "_base_" in message


def test_custom_imports_of_a_package_not_installed_are_named(fold, tmp_path):
    message = one_line_error(ValueError, fold, "mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py")
    assert "custom_imports 'mmpretrain.models' needs the Python package 'mmpretrain'" in message
    config = tmp_path / "mine.py"
    config.write_text(
        "_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['timm_not_here.models'], allow_failed_imports=False)\n"
    )
    message = one_line_error(ValueError, fold, str(config))
    assert "'timm_not_here.models'" in message and "package 'timm_not_here'" in message


@pytest.mark.parametrize(
    ("config", "kind", "why"),
    [
        ("deepsort/deepsort_faster-rcnn_r50_fpn_8xb2-4e_mot17train_test-mot17test.py", "DeepSORT", "tracking"),
        ("qdtrack/qdtrack_faster-rcnn_r50_fpn_4e_base.py", "QDTrack", "use the config of its detector"),
        ("reid/reid_r50_8xb32-6e_mot15train80_test-mot15val20.py", "BaseReID", "re-identification"),
        ("rpn/rpn_r50_fpn_1x_coco.py", "RPN", "region proposal network"),
        ("cascade_rpn/cascade-rpn_r50-caffe_fpn_1x_coco.py", "RPN", "class-agnostic"),
        ("panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py", "PanopticFPN", "panoptic"),
        ("mask2former/mask2former_r50_8xb2-lsj-50e_coco.py", "Mask2Former", "masks"),
        ("glip/glip_atss_swin-t_a_fpn_dyhead_pretrain_obj365.py", "GLIP", "text-conditioned"),
        ("grounding_dino/grounding_dino_r50_scratch_8xb2_1x_coco.py", "GroundingDINO", "language model"),
        ("soft_teacher/soft-teacher_faster-rcnn_r50-caffe_fpn_180k_semi-0.1-coco.py", "SoftTeacher", "semi-supervised"),
    ],
)
def test_a_model_that_is_no_box_detector_is_refused_naming_its_type(fold, config, kind, why):
    message = one_line_error(ValueError, fold, f"mmdet::{config}", load_from=str(fold / "coco.pth"))
    assert f"detfold trains box detectors, and model.type {kind!r} is " in message and why in message


def test_a_config_without_a_model_is_refused(fold):
    message = one_line_error(ValueError, fold, "mmdet::common/ms_3x_coco.py")
    assert "no model (no model.type)" in message and "choose a model config" in message


def test_an_roi_heads_mask_branch_is_dropped_and_no_masks_are_loaded(fold):
    for config in ("mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py", "mmdet::htc/htc_r50_fpn_1x_coco.py"):
        cfg = resolve(fold, config, load_from=str(fold / "coco.pth"))
        roi = cfg.model.roi_head
        assert roi.mask_head is None and roi.mask_roi_extractor is None and roi.get("semantic_head") is None
        assert roi.bbox_head  # the box part stays
        loads = [
            step
            for loader in ("train_dataloader", "test_dataloader")
            for pipeline in loader_pipelines(cfg[loader])
            for step in pipeline_steps(pipeline)
            if step["type"] == "LoadAnnotations"
        ]
        assert loads and not any(step.get("with_mask") or step.get("with_seg") for step in loads)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("solo/solo_r50_fpn_1x_coco.py", "model.type 'SOLO'"),
        ("yolact/yolact_r50_1xb8-55e_coco.py", "model.type 'YOLACT'"),
        ("point_rend/point-rend_r50-caffe_fpn_ms-1x_coco.py", "model.roi_head.type 'PointRendRoIHead'"),
        ("scnet/scnet_r50_fpn_1x_coco.py", "model.roi_head.type 'SCNetRoIHead'"),
    ],
)
def test_a_model_whose_boxes_need_masks_is_refused(fold, config, named):
    message = one_line_error(ValueError, fold, f"mmdet::{config}", load_from=str(fold / "coco.pth"))
    assert f"{named} trains on instance masks" in message and "with_mask=True" in message


def test_a_transform_that_needs_masks_is_refused_and_its_scale_factors_are_no_size(fold):
    from detfold.train.mmdet_config import reference_size

    config = "mmdet::instaboost/mask-rcnn_r50_fpn_instaboost-4x_coco.py"
    message = one_line_error(ValueError, fold, config, load_from=str(fold / "coco.pth"), img_scale=[160, 160])
    assert "train transform InstaBoost works on instance masks" in message
    pipeline = [{"type": "InstaBoost", "scale": (0.8, 1.2)}, {"type": "Resize", "scale": (1333, 800)}]
    assert reference_size(pipeline) == (1333, 800)


def test_a_two_stage_detr_needs_an_img_scale_with_enough_encoder_tokens(fold):
    config = "mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py"  # selects 900 queries among the encoder's tokens
    message = one_line_error(ValueError, fold, config, load_from=str(fold / "coco.pth"), img_scale=[160, 160])
    assert "img_scale [160, 160] gives the encoder at most 534 tokens" in message
    assert "900 queries (model.num_queries)" in message and "at least [224, 224]" in message
    assert resolve(fold, config, load_from=str(fold / "coco.pth"), img_scale=[320, 320]).model.num_queries == 900
    fewer = resolve(
        fold, config, load_from=str(fold / "coco.pth"), img_scale=[160, 160], cfg_options={"model.num_queries": 300}
    )
    assert fewer.model.num_queries == 300


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("albu_example/mask-rcnn_r50_fpn_albu-1x_coco.py", "train pipeline transform Albu"),
        ("boxinst/boxinst_r50_fpn_ms-90k_coco.py", "model.data_preprocessor BoxInstDataPreprocessor"),
    ],
)
def test_a_part_the_installed_packages_cannot_build_is_named_before_training(fold, config, named, monkeypatch):
    import albumentations
    import mmdet.models.data_preprocessors.data_preprocessor as preprocessors

    monkeypatch.delattr(albumentations, "JpegCompression", raising=False)  # renamed in newer albumentations
    monkeypatch.setattr(preprocessors, "skimage", None, raising=False)  # scikit-image not installed
    message = one_line_error(ValueError, fold, f"mmdet::{config}", epochs=1, load_from=str(fold / "coco.pth"))
    assert f"{named} cannot be built with the installed packages" in message


def test_an_mmcv_operation_without_cpu_kernel_is_refused_on_cpu_only(fold):
    from detfold.train.mmdet_train import resolve_config

    config = "mmdet::dcn/faster-rcnn_r50_fpn_dpool_1x_coco.py"
    message = one_line_error(ValueError, fold, config, load_from=str(fold / "coco.pth"))
    assert "model.roi_head.bbox_roi_extractor.roi_layer.type 'DeformRoIPoolPack'" in message
    assert "no CPU implementation" in message and "this job has no GPU" in message
    images = str(Path(__file__).parents[1] / "data/bccd/images")
    settings = {"config": config, "load_from": str(fold / "coco.pth")}
    cfg = resolve_config(
        settings, str(fold / "train.json"), str(fold / "val.json"), images, str(fold / "w"), 42, "cuda"
    )
    assert cfg.model.roi_head.bbox_roi_extractor.roi_layer.type == "DeformRoIPoolPack"


def test_a_config_that_reads_precomputed_proposals_is_refused(fold):
    message = one_line_error(ValueError, fold, "mmdet::fast_rcnn/fast-rcnn_r50_fpn_1x_coco.py")
    assert "LoadProposals" in message and "proposal_file" in message and "faster_rcnn" in message


def test_a_foreign_dataset_becomes_coco_without_its_own_arguments(fold):
    cfg = resolve(fold, "mmdet::dsdl/coco.py", load_from=str(fold / "coco.pth"))  # DSDLDetDataset
    dataset = cfg.train_dataloader.dataset
    assert dataset.type == "CocoDataset" and "specific_key_path" not in dataset
    assert dataset.ann_file.endswith("train.json") and set(dataset.data_prefix) == {"img"}


def test_a_fixed_batch_pad_stays_a_multiple_of_the_padding_divisor(fold):
    cfg = resolve(
        fold, "mmdet::fpg/retinanet_r50_fpg_crop640_50e_coco.py", load_from=str(fold / "coco.pth"), img_scale=[160, 160]
    )
    preprocessor = cfg.model.data_preprocessor
    assert preprocessor.pad_size_divisor == 128  # every level of the FPG halves exactly
    assert tuple(preprocessor.batch_augments[0]["size"]) == (256, 256)  # 160 up to a multiple of 128


def test_an_img_scale_smaller_than_ssds_input_size_is_refused(fold):
    message = one_line_error(
        ValueError, fold, "mmdet::ssd/ssd300_coco.py", load_from=str(fold / "coco.pth"), img_scale=[160, 160]
    )
    assert "img_scale [160, 160] gives inputs whose short side is 160, smaller than" in message
    assert "model.bbox_head.anchor_generator.input_size 300" in message and "at least [300, 300]" in message
    # the legacy config resizes keeping the ratio: 320 x 320 makes BCCD's 640 x 480 images 320 x 240
    legacy = "mmdet::legacy_1.x/ssd300_coco_v1.py"
    message = one_line_error(ValueError, fold, legacy, load_from=str(fold / "coco.pth"), img_scale=[320, 320])
    assert "short side is 240 (a keep-ratio resize of images 1.33 times wider than high)" in message
    assert "at least [400, 400]" in message
    assert resolve(fold, legacy, load_from=str(fold / "coco.pth"), img_scale=[400, 400]).model.bbox_head


def test_mmcv_syncbn_becomes_torch_syncbn_for_one_process(fold):
    config = "mmdet::strong_baselines/mask-rcnn_r50_fpn_rpn-2conv_4conv1fc_syncbn-all_lsj-100e_coco.py"
    cfg = resolve(fold, config, epochs=1, load_from=str(fold / "coco.pth"))  # MMSyncBN needs a process group
    assert cfg.model.roi_head.bbox_head.norm_cfg.type == "SyncBN" and "MMSyncBN" not in str(cfg.model)


def test_a_coco_subclass_with_arguments_of_its_own_becomes_coco(fold):
    config = "mmdet::v3det/dino-4scale_r50_8xb2_sample1e-3_v3det_36e.py"  # V3Det reads a class-name file
    cfg = resolve(fold, config, epochs=1, load_from=str(fold / "coco.pth"), img_scale=[320, 320])
    for dataset in [*inner_datasets(cfg.train_dataloader.dataset), *inner_datasets(cfg.test_dataloader.dataset)]:
        assert dataset.type == "CocoDataset" and "label_file" not in dataset


def test_norms_follow_the_processes_and_their_device(fold):
    """Several CPU processes: no SyncBN anywhere (PyTorch's runs on GPUs only) and RTMDet's
    own switch to it off; several GPUs: the config's SyncBN stays."""
    from detfold.train.mmdet_config import set_process_norm

    config = "mmdet::strong_baselines/mask-rcnn_r50_fpn_rpn-2conv_4conv1fc_syncbn-all_lsj-100e_coco.py"
    cpu = resolve(fold, config, epochs=1, gpus=2, load_from=str(fold / "coco.pth"))
    assert cpu.model.roi_head.bbox_head.norm_cfg.type == "BN" and "SyncBN" not in str(cpu.model)
    rtmdet = resolve(fold, "mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py", gpus=2, load_from=str(fold / "coco.pth"))
    assert rtmdet.model.use_syncbn is False and "SyncBN" not in str(rtmdet.model)
    gpu = {"type": "RTMDet", "backbone": {"norm_cfg": {"type": "SyncBN"}}}
    assert set_process_norm(gpu, 2, "cuda") == [] and gpu["backbone"]["norm_cfg"]["type"] == "SyncBN"
