"""gpus: 2 on CPU: two gloo processes through torchrun train one fold, are killed after their
first epoch, resume, and the fold model predicts and is scored (real mmdet, tiny data)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from detfold.core.coco import load_coco
from detfold.train.distributed import WORKER_CONFIG
from helpers.train_job import train_cmd
from helpers.waiting import wait_until

pytestmark = pytest.mark.workflow


def workers_of(work_dir: Path) -> list[int]:
    """PIDs of the processes (torchrun and its workers) running with this work dir's config."""
    mark = str(work_dir / WORKER_CONFIG).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # ended while being read
            continue
    return pids


def test_two_processes_train_a_fold_resume_after_a_kill_and_predict(repo, tiny_data):
    out = tiny_data / "run"
    settings = {"gpus": 2}
    job = subprocess.Popen(
        train_cmd(repo, tiny_data, out, 3, "first.log", **settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: (out / "work" / "epoch_1.pth").exists(), "epoch 1's checkpoint", 300, proc=job, stop=job.kill)
    assert workers_of(out / "work")  # torchrun and its workers are running
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    # the launcher ends with the job (it gets SIGTERM when its parent dies) and takes its workers along
    wait_until(lambda: not workers_of(out / "work"), "the workers of the killed job to end", 60)
    assert not (out / "model.pth").exists()
    first = (tiny_data / "first.log").read_text()
    assert "rank 0 of world size 2" in first and "rank 1 of world size 2" in first and "gloo backend" in first

    done = subprocess.run(
        train_cmd(repo, tiny_data, out, 3, "second.log", **settings), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tiny_data / "second.log").read_text()
    assert f"resuming from {(out / 'work' / 'epoch_1.pth').resolve()}" in log and "resumed epoch: 1" in log
    assert "rank 0 of world size 2" in log and "rank 1 of world size 2" in log
    # 12 images, batch 4 per process, 2 processes: 2 iterations an epoch (each rank sees half)
    assert "Epoch(train) [2][2/2]" in log and "Epoch(train) [1]" not in log
    import torch

    final = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    assert final["meta"]["epoch"] == 3
    config = (out / "config.py").read_text()  # the resolved config as with one process: no launcher in it
    assert "use_syncbn=False" in config and "launcher" not in config

    from detfold.evaluate.metrics import evaluate_coco
    from detfold.predict.stage import run_predict

    data = str(tiny_data / "train.json")
    predictions = tiny_data / "oof.json"
    images = str(repo / "tests/data/bccd/images")
    # 3 epochs from scratch: low scores, so no score threshold
    run_predict(str(out / "config.py"), str(out / "model.pth"), data, images, 0.0, 100, str(predictions), 1)
    scores = evaluate_coco(load_coco(data), json.loads(predictions.read_text()))
    assert scores["n_predictions"] > 12 and 0 <= scores["mAP50"] <= 1 and scores["n_images"] == 12
