"""GPU slot pool: concurrent jobs never share a slot; a killed job gives its slot back."""

import json
import multiprocessing
import os
import signal
import time

from detfold.train.gpu_slots import available_slots, gpu_slot, overlapping_same_slot


def hold(n_slots, job, lock_dir, record, seconds):
    with gpu_slot(n_slots, job, lock_dir, record, poll_s=0.02) as slot:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == str(slot)
        time.sleep(seconds)


def test_concurrent_jobs_get_distinct_slots(tmp_path):
    record = tmp_path / "slots.jsonl"
    ctx = multiprocessing.get_context("fork")
    jobs = [ctx.Process(target=hold, args=(2, f"job{i}", tmp_path / "locks", str(record), 0.3)) for i in range(5)]
    for p in jobs:
        p.start()
    for p in jobs:
        p.join(30)
        assert p.exitcode == 0
    records = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(r["job"] for r in records) == [f"job{i}" for i in range(5)]
    assert {r["slot"] for r in records} == {0, 1}
    assert overlapping_same_slot(records) == []
    overlaps = sum(
        a["start"] < b["end"] and b["start"] < a["end"] for i, a in enumerate(records) for b in records[i + 1 :]
    )
    assert overlaps >= 1  # two slots: jobs did run side by side


def test_killed_job_releases_its_slot(tmp_path):
    ctx = multiprocessing.get_context("fork")
    holder = ctx.Process(target=hold, args=(1, "holder", tmp_path, None, 60))
    holder.start()
    time.sleep(0.5)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    start = time.time()
    with gpu_slot(1, "next", tmp_path, poll_s=0.02) as slot:
        assert slot == 0
    assert time.time() - start < 5


def test_no_pool_leaves_the_environment_alone(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with gpu_slot(0, "cpu-job") as slot:
        assert slot is None and os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    monkeypatch.setenv("DETFOLD_GPU_SLOTS", "3")
    assert available_slots() == 3


def test_inside_a_slurm_job_the_scheduler_assigns_the_gpu(monkeypatch, caplog):
    """SLURM sets CUDA_VISIBLE_DEVICES for the job's own GPUs: no pool, env untouched, logged."""
    monkeypatch.delenv("DETFOLD_GPU_SLOTS", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert available_slots() == 0
    with caplog.at_level("INFO", logger="detfold.train.gpu_slots"), gpu_slot(available_slots(), "train") as slot:
        assert slot is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_VISIBLE_DEVICES=3 as given (SLURM job 42)" in caplog.text
    monkeypatch.setenv("DETFOLD_GPU_SLOTS", "2")  # an explicit pool still wins
    assert available_slots() == 2
