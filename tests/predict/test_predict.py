"""Prediction: test-time augmentation (flip / multi-scale) and atomic checkpoint writing."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detfold.core.coco import load_coco, write_coco
from detfold.core.config import load_schema, schema_problems, with_defaults
from detfold.predict.mmdet_predict import TTA, merge_views, scaled_test_pipeline

RTMDET_TEST_PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(320, 320), keep_ratio=True),
    dict(type="Pad", size=(320, 320), pad_val=dict(img=(114, 114, 114))),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]


def resolved_tta(tta):
    """``predict.tta`` as the config gate hands it on: checked, defaults filled in."""
    config = {"predict": {"tta": tta}}
    assert [p for p in schema_problems(config, load_schema()) if p.startswith("predict")] == []
    return with_defaults(config)["predict"]["tta"]


def test_tta_views_and_plain_is_none():
    assert TTA.from_config(None) is None
    assert TTA.from_config(resolved_tta({"flip": False, "scales": [1.0]})) is None  # one plain view: no TTA
    tta = TTA.from_config(resolved_tta({"flip": True, "scales": [0.8, 1.2]}))
    assert tta.views() == [(0.8, False), (0.8, True), (1.2, False), (1.2, True)]
    assert (tta.merge, tta.iou_thr) == ("nms", 0.6)


@pytest.mark.parametrize(
    ("tta", "message"),
    [
        ({"flip": True, "scale": [1.0]}, "unknown key 'predict.tta.scale'; did you mean 'scales'?"),
        ({"scales": [0.0, 1.0]}, "predict.tta.scales.0 = 0.0 is out of range: must be >= 0.1"),
        ({"scales": [1.0, 1.0], "flip": True}, "predict.tta.scales = [1.0, 1.0]: [1.0, 1.0] has non-unique elements"),
        ({"flip": True, "merge": "mean"}, "predict.tta.merge = 'mean' is not allowed (allowed values: nms, wbf)"),
        ({"flip": True, "iou_thr": 1.5}, "predict.tta.iou_thr = 1.5 is out of range: must be <= 1"),
    ],
)
def test_bad_tta_settings_name_the_value(tta, message):
    """The config gate refuses them (the library takes resolved settings)."""
    problems = schema_problems({"predict": {"tta": tta}}, load_schema())
    assert any(message in problem for problem in problems), problems


def test_scaled_pipeline_resizes_real_images(bccd_dir):
    from mmcv.transforms import Compose
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    import mmcv

    pixels = mmcv.imread(str(bccd_dir / "images" / load_coco(bccd_dir / "test.json").images[0]["file_name"]))
    assert pixels.shape[:2] == (240, 320)
    for factor in (1.0, 1.5, 0.5):  # 320, 480, 160 px: multiples of 32
        steps = scaled_test_pipeline(RTMDET_TEST_PIPELINE, factor)
        out = Compose(steps)(dict(img=pixels, img_id=0))
        assert out["data_samples"].scale_factor == pytest.approx((factor, factor))  # 320x240 fits (320f)^2
        assert out["data_samples"].ori_shape == (240, 320)
        assert tuple(out["inputs"].shape[1:]) == (round(320 * factor), round(320 * factor))  # padded square
    steps = scaled_test_pipeline(RTMDET_TEST_PIPELINE, 1.25)  # 400 px -> rounded to a multiple of 32
    assert steps[1]["scale"] == steps[2]["size"] == (384, 384)
    assert RTMDET_TEST_PIPELINE[1]["scale"] == (320, 320)  # the config's own pipeline untouched
    with pytest.raises(ValueError, match="no Resize"):
        scaled_test_pipeline([dict(type="LoadImageFromFile"), dict(type="PackDetInputs")], 1.2)


def test_merge_views_nms_keeps_best_of_overlapping_boxes_per_class():
    tta = TTA(flip=True, scales=(1.0,), merge="nms", iou_thr=0.6)
    plain = (np.array([[10, 10, 50, 50], [100, 100, 140, 150.0]]), np.array([0.9, 0.3]), np.array([0, 1]))
    flipped = (np.array([[11, 10, 51, 50], [12, 10, 50, 50.0]]), np.array([0.8, 0.7]), np.array([0, 2]))
    boxes, scores, labels = merge_views([plain, flipped], 320, 240, tta, max_per_img=100)
    # class 0: the two overlapping boxes -> the best one; class 2 overlaps class 0 but is kept
    assert scores.tolist() == [0.9, 0.7, 0.3]
    assert labels.tolist() == [0, 2, 1]
    np.testing.assert_allclose(boxes, [[10, 10, 50, 50], [12, 10, 50, 50], [100, 100, 140, 150]])
    _, capped, _ = merge_views([plain, flipped], 320, 240, tta, max_per_img=2)
    assert capped.tolist() == [0.9, 0.7]


def test_merge_views_wbf_averages_coordinates():
    tta = TTA(flip=True, scales=(1.0,), merge="wbf", iou_thr=0.5)
    a = (np.array([[10, 10, 50, 50.0]]), np.array([0.8]), np.array([0]))
    b = (np.array([[14, 10, 54, 50.0]]), np.array([0.8]), np.array([0]))
    boxes, scores, _ = merge_views([a, b], 320, 240, tta, max_per_img=100)
    np.testing.assert_allclose(boxes, [[12, 10, 52, 50]], atol=1e-6)
    assert scores == pytest.approx([0.8])


TRAIN = """
import sys
sys.path.insert(0, {scripts!r})
from detfold.train.mmdet_train import train_fold
train_fold({settings!r}, {data!r}, {data!r}, {images!r}, {out!r} + "/model.pth", {out!r} + "/config.py", 42, 1)
"""


@pytest.fixture(scope="module")
def one_epoch_model(tmp_path_factory, repo, bccd_dir):
    """A real RTMDet-tiny trained for one epoch on 8 images (weights, resolved config, data)."""
    tmp = tmp_path_factory.mktemp("tta")
    coco = load_coco(bccd_dir / "train.json")
    write_coco(coco.subset(coco.image_ids[:8]), tmp / "train.json")
    settings = {"config": str(repo / "config/models/rtmdet_tiny_cpu.py"), "epochs": 1, "batch_size": 4}
    settings["num_workers"] = 0
    code = TRAIN.format(
        scripts=str(repo / "scripts"),
        settings=settings,
        data=str(tmp / "train.json"),
        images=str(bccd_dir / "images"),
        out=str(tmp / "out"),
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=600)
    return tmp


@pytest.mark.workflow
def test_flipped_view_is_the_mirror_images_prediction_mapped_back(one_epoch_model, bccd_dir):
    """The flipped view of image I must equal the plain prediction of I's mirror image (a real
    file), mirrored back: x -> width - x. And the unflipped view equals plain inference."""
    import mmcv
    from detfold.predict.mmdet_predict import predict_views, set_test_thresholds, tta_pipelines
    from mmdet.apis import inference_detector, init_detector
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules(init_default_scope=True)
    out = one_epoch_model / "out"
    cfg = Config.fromfile(str(out / "config.py"))
    set_test_thresholds(cfg.model.test_cfg, 0.0, 100)
    model = init_detector(cfg, str(out / "model.pth"), device="cpu")
    image = load_coco(one_epoch_model / "train.json").images[0]
    pixels = mmcv.imread(str(bccd_dir / "images" / image["file_name"]))
    mirror = one_epoch_model / "mirror.png"
    mmcv.imwrite(np.ascontiguousarray(pixels[:, ::-1]), str(mirror))

    tta = TTA(flip=True, scales=(1.0,), merge="nms", iou_thr=0.6)
    views = predict_views(model, pixels, tta, tta_pipelines(cfg, tta))
    plain = inference_detector(model, str(bccd_dir / "images" / image["file_name"])).pred_instances
    on_mirror = inference_detector(model, str(mirror)).pred_instances
    assert len(plain) > 0
    np.testing.assert_allclose(views[0][0], plain.bboxes.numpy(), atol=1e-3)
    m = on_mirror.bboxes.numpy()
    mirrored_back = np.stack([320 - m[:, 2], m[:, 1], 320 - m[:, 0], m[:, 3]], axis=1)
    np.testing.assert_allclose(views[1][0], mirrored_back, atol=1e-3)
    np.testing.assert_allclose(views[1][1], on_mirror.scores.numpy(), atol=1e-6)


@pytest.mark.workflow
def test_tta_predictions_are_valid_and_deterministic(one_epoch_model, bccd_dir):
    from detfold.predict.mmdet_predict import predict_images

    out = one_epoch_model / "out"
    coco = load_coco(one_epoch_model / "train.json")
    coco = coco.subset(coco.image_ids[:3])
    tta = TTA(flip=True, scales=(0.8, 1.0, 1.25), merge="nms", iou_thr=0.6)

    def run(aug):
        return predict_images(
            str(out / "config.py"), str(out / "model.pth"), coco, str(bccd_dir / "images"), 0.0, 50, 1, aug
        )

    first, again, plain = run(tta), run(tta), run(None)
    assert first == again
    assert first != plain
    for image in coco.images:
        mine = [p for p in first if p["image_id"] == image["id"]]
        assert 0 < len(mine) <= 50
        for p in mine:
            x, y, w, h = p["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= image["width"] + 1e-6 and y + h <= image["height"] + 1e-6


def test_checkpoint_backend_writes_atomically(tmp_path, monkeypatch):
    """The backend the CheckpointHook saves through: a failed write (disk full) leaves the
    earlier complete file and no temporary file behind."""
    from detfold.train.checkpoints import ATOMIC_BACKEND, register_atomic_checkpoint_backend
    from mmengine.fileio import get_file_backend

    register_atomic_checkpoint_backend()
    backend = get_file_backend(str(tmp_path), backend_args=dict(backend=ATOMIC_BACKEND))
    target = tmp_path / "epoch_1.pth"
    backend.put(b"complete checkpoint", str(target))
    assert target.read_bytes() == b"complete checkpoint"

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        backend.put(b"half", str(target))
    assert target.read_bytes() == b"complete checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pth"]


def test_resolved_config_saves_checkpoints_through_the_atomic_backend(repo, bccd_dir, tmp_path):
    from detfold.train.checkpoints import ATOMIC_BACKEND
    from detfold.train.mmdet_train import resolve_config

    data = tmp_path / "train.json"
    coco = load_coco(bccd_dir / "train.json")
    write_coco(coco.subset(coco.image_ids[:4]), data)
    settings = {"config": str(repo / "config/models/rtmdet_tiny_cpu.py"), "epochs": 1}
    cfg = resolve_config(settings, str(data), str(data), str(bccd_dir / "images"), str(tmp_path / "w"), 42, "cpu")
    assert cfg.default_hooks.checkpoint.backend_args == {"backend": ATOMIC_BACKEND}
    assert Path(cfg.work_dir) == (tmp_path / "w").resolve()


def test_detfold_enforces_score_threshold_and_cap_for_every_head():
    from detfold.predict.mmdet_predict import enforce_thresholds

    boxes = np.array([[0, 0, 10, 10], [1, 1, 5, 5], [2, 2, 8, 8], [3, 3, 9, 9]], dtype=float)
    scores = np.array([0.3, 0.9, 0.01, 0.9])  # as a DETR head returns them: unthresholded, unsorted
    labels = np.array([0, 1, 2, 0])
    kept_boxes, kept_scores, kept_labels = enforce_thresholds(boxes, scores, labels, 0.05, 2)
    assert kept_scores.tolist() == [0.9, 0.9] and kept_labels.tolist() == [1, 0]  # ties: the model's order
    assert kept_boxes.tolist() == [[1, 1, 5, 5], [3, 3, 9, 9]]
    none = enforce_thresholds(boxes, scores, labels, 0.95, 100)
    assert none[0].shape == (0, 4) and none[1].shape == (0,) and none[2].shape == (0,)


def test_score_key_names_what_the_head_reads():
    from detfold.predict.mmdet_predict import set_test_thresholds

    assert set_test_thresholds({"score_thr": 0.01, "nms": {}}, 0.05, 100) == "test_cfg.score_thr"
    assert set_test_thresholds({"rpn": {}, "rcnn": {"score_thr": 0.05}}, 0.05, 100) == "test_cfg.rcnn.score_thr"
    detr = {"max_per_img": 100}
    assert set_test_thresholds(detr, 0.05, 50) == "none (detfold filters)" and detr["max_per_img"] == 50
