"""Training jobs: kill-and-resume, and CPU determinism (real mmdet, tiny data)."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.train_job import TRAIN, train_cmd
from helpers.waiting import wait_until

pytestmark = pytest.mark.workflow


def iterations_logged(log: Path) -> int:
    return sum("Epoch(train)" in line for line in log.read_text().splitlines())


def test_killed_training_resumes_from_its_last_checkpoint(repo, tiny_data):
    """With load_from (a "pretrained" checkpoint made by one short training first): the killed
    job resumes from its own epoch 1 checkpoint, not from the load_from file."""
    pre = subprocess.run(train_cmd(repo, tiny_data, tiny_data / "pre", 1, "pre.log"), capture_output=True, text=True)
    assert pre.returncode == 0, pre.stderr[-3000:]
    pretrained = str(tiny_data / "pre" / "model.pth")
    out = tiny_data / "run"
    job = subprocess.Popen(
        train_cmd(repo, tiny_data, out, 3, "first.log", load_from=pretrained),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # saved through the atomic backend: the file exists only once it is complete
    wait_until(lambda: (out / "work" / "epoch_1.pth").exists(), "epoch 1's checkpoint", 300, proc=job, stop=job.kill)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert not (out / "model.pth").exists()  # not declared done
    assert "Load checkpoint from " + pretrained in (tiny_data / "first.log").read_text()  # fine-tuned from it
    done = subprocess.run(
        train_cmd(repo, tiny_data, out, 3, "second.log", load_from=pretrained),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tiny_data / "second.log").read_text()
    own = str((out / "work" / "epoch_1.pth").resolve())
    assert f"resuming from {own}" in log and "resumed epoch: 1" in log  # its own checkpoint
    assert f"Load checkpoint from {pretrained}" not in log  # not the load_from file
    assert "Epoch(train) [1]" not in log and "Epoch(train) [2]" in log  # epoch 1 is not trained again
    import torch

    final = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    assert final["meta"]["epoch"] == 3
    assert f"load_from = '{pretrained}'" in (out / "config.py").read_text()  # the resolved config as trained


def test_corrupt_last_checkpoint_is_not_trusted(repo, tiny_data):
    out = tiny_data / "run"
    first = subprocess.run(train_cmd(repo, tiny_data, out, 2, "first.log"), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    (out / "model.pth").unlink()
    (out / "work" / "epoch_2.pth").write_bytes(b"cut short")
    (out / "work" / "last_checkpoint").write_text(str(out / "work" / "epoch_2.pth"))
    again = subprocess.run(
        train_cmd(repo, tiny_data, out, 2, "second.log"), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    log = (tiny_data / "second.log").read_text()
    assert "is unreadable" in log and "resumed epoch: 1" in log


def test_two_cpu_runs_give_identical_weights(repo, tiny_data):
    import torch

    runs = []
    for name, extra in (("a", {}), ("b", {"gpus": 1})):  # gpus: 1 is the single-process run, as without it
        result = subprocess.run(
            train_cmd(repo, tiny_data, tiny_data / name, 1, f"{name}.log", **extra),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(torch.load(tiny_data / name / "model.pth", map_location="cpu", weights_only=False)["state_dict"])
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    # and the files are byte-identical although trained in other folders at other times
    assert (tiny_data / "a" / "model.pth").read_bytes() == (tiny_data / "b" / "model.pth").read_bytes()


AVX512 = {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_CBWR": "AVX512"}
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def test_deterministic_weights_are_the_same_under_two_instruction_sets(repo, tiny_data):
    """Two processors stood in for by this one under two instruction-set caps (an AVX-512 machine,
    an AVX2-only one): with deterministic: true the fold models are byte-identical; without it
    they differ, so the caps do reach the math."""
    from detfold.train.cpu_math import X86_64

    if platform.machine().lower() not in X86_64 or "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("needs an x86-64 processor with AVX-512 to stand in for two processors")
    models = {}
    for deterministic in (True, False):
        for isa, env in (("avx512", AVX512), ("avx2", AVX2)):
            out = tiny_data / f"{isa}_{deterministic}"
            cmd = train_cmd(repo, tiny_data, out, 1, f"{out.name}.log", deterministic=deterministic)
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
            assert result.returncode == 0, result.stderr[-3000:]
            models[isa, deterministic] = (out / "model.pth").read_bytes()
    assert models["avx512", True] == models["avx2", True]
    assert models["avx512", False] != models["avx2", False]
    log = (tiny_data / "avx512_True.log").read_text()
    assert "ONEDNN_MAX_CPU_ISA=AVX512_CORE replaced by AVX2" in log and "CPU threads: 1 (deterministic: True)" in log


def test_deterministic_runs_use_exactly_the_configured_threads():
    """Thread counts change the sums: deterministic keeps the count on a machine with fewer cores."""
    from detfold.train.cpu_math import X86_64

    if platform.machine().lower() not in X86_64:
        pytest.skip("CPU math is pinned on x86-64 only")
    code = (
        "from detfold.train.mmdet_train import prepare_mmdet; import os; "
        "prepare_mmdet(os.cpu_count() + 1, deterministic=True); import torch; "
        "print(torch.get_num_threads() - os.cpu_count(), torch.backends.cpu.get_cpu_capability())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["1", "AVX2"]  # and PyTorch's kernels at AVX2


def test_resolved_config_carries_the_model_options(repo, tiny_data):
    from detfold.train.mmdet_train import resolve_config

    settings = {
        "config": str(repo / "config/models/rtmdet_tiny_cpu.py"),
        "epochs": 6,
        "img_scale": [256, 256],
        "accumulate": 2,
        "checkpoint": "best",
        "early_stopping": 3,
        "multi_scale": [[224, 224], [288, 288]],
        "deterministic": True,
    }
    data = str(tiny_data / "train.json")
    cfg = resolve_config(settings, data, data, str(repo / "tests/data/bccd/images"), str(tiny_data / "w"), 42)
    steps = {s["type"]: s for s in cfg.train_dataloader.dataset.pipeline}
    assert steps["RandomChoiceResize"]["scales"] == [(224, 224), (288, 288)]  # multi-scale replaced the resize
    assert steps["RandomCrop"]["crop_size"] == (256, 256)
    assert cfg.randomness.deterministic is True
    assert {s["type"]: s for s in cfg.test_dataloader.dataset.pipeline}["Resize"]["scale"] == (256, 256)
    assert cfg.optim_wrapper.accumulative_counts == 2
    assert cfg.val_evaluator.proposal_nums == (1, 10, 100)  # COCO's 100 detections, not mmdet's 1000
    assert cfg.default_hooks.checkpoint.save_best == "coco/bbox_mAP"
    assert [h["type"] for h in cfg.custom_hooks] == ["DetfoldPlainStateHook", "EarlyStoppingHook"]
    assert "TensorboardVisBackend" in [b["type"] for b in cfg.visualizer.vis_backends]
    cosine = next(s for s in cfg.param_scheduler if s["type"] == "CosineAnnealingLR")
    assert cosine["end"] == 6 and cosine["T_max"] == 6  # stretched from the config's 12 epochs
    two_stage = resolve_config(
        {"config": str(repo / "config/models/faster_rcnn_r18_cpu.py")}, data, data, "img", str(tiny_data / "w2"), 1
    )
    assert two_stage.model.roi_head.bbox_head.num_classes == 3
    with pytest.raises(ValueError, match="unknown model setting"):
        resolve_config({"config": settings["config"], "epoch": 3}, data, data, "img", "w", 1)


def test_best_checkpoint_with_validation_and_tensorboard(repo, tiny_data):
    import torch
    from detfold.train.mmdet_train import train_fold

    out = tiny_data / "best"
    settings = {
        "config": str(repo / "config/models/faster_rcnn_r18_cpu.py"),
        "epochs": 2,
        "batch_size": 4,
        "num_workers": 0,
        "checkpoint": "best",
        "early_stopping": 5,
    }
    data = str(tiny_data / "train.json")
    train_fold(
        settings, data, data, str(repo / "tests/data/bccd/images"), str(out / "model.pth"), str(out / "config.py"), 42
    )
    assert list((out / "work").glob("best_coco_bbox_mAP_epoch_*.pth"))
    assert list((out / "work").rglob("events.out.tfevents.*"))
    assert torch.load(out / "model.pth", map_location="cpu", weights_only=False)["state_dict"]


def test_val_interval_validates_every_n_epochs(repo, tiny_data):
    from detfold.core.config import load_schema, schema_problems
    from detfold.train.mmdet_train import resolve_config

    base = {"config": str(repo / "config/models/rtmdet_tiny_cpu.py"), "epochs": 6}
    data, images = str(tiny_data / "train.json"), str(repo / "tests/data/bccd/images")
    off = resolve_config(base, data, data, images, str(tiny_data / "w"), 42)
    assert off.val_cfg is None and off.train_cfg.val_interval == 7  # default: no validation during training
    every2 = resolve_config({**base, "val_interval": 2}, data, data, images, str(tiny_data / "w"), 42)
    assert every2.train_cfg.val_interval == 2 and every2.val_cfg == {"type": "ValLoop"}
    assert every2.val_evaluator.proposal_nums == (1, 10, 100)
    assert "save_best" not in every2.default_hooks.checkpoint  # validation alone does not pick the checkpoint
    negative = {"models": {"tiny": {**base, "val_interval": -1}}}  # refused by the config gate
    assert "models.tiny.val_interval = -1 is out of range: must be >= 0" in schema_problems(negative, load_schema())


def test_wandb_logs_an_offline_run_per_fold(repo, tiny_data):
    """wandb: {...} in a model's settings logs through mmengine's WandbVisBackend; offline mode
    (no network here) writes the run under the fold's work dir, named model-fold."""
    out = tiny_data / "train" / "tiny" / "fold0"
    settings = {
        "config": str(repo / "config/models/rtmdet_tiny_cpu.py"),
        "epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "tensorboard": False,
        "wandb": {"project": "detfold-test", "mode": "offline"},
    }
    code = TRAIN.format(
        scripts=str(repo / "scripts"),
        log=str(tiny_data / "wandb.log"),
        settings=settings,
        data=str(tiny_data / "train.json"),
        images=str(repo / "tests/data/bccd/images"),
        out=str(out),
    )
    # wandb's service gets 300 s to start (default 30 s), as a loaded CI machine may need
    env = {**os.environ, "WANDB_SILENT": "true", "WANDB__SERVICE_WAIT": "300"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = list((out / "work").glob("*/vis_data/wandb/offline-run-*"))
    assert len(runs) == 1, runs
    assert list(runs[0].glob("run-*.wandb")), sorted(p.name for p in runs[0].iterdir())
    assert "name='tiny-fold0'" in (out / "config.py").read_text()
