"""GPU slot pool: concurrent jobs never share a slot; a killed job gives its slot back."""

import fcntl
import json
import multiprocessing
import os
import signal

import pytest
from detfold.train.gpu_slots import available_slots, gpu_slot
from helpers.gpu_slots import overlapping_same_slot

WAIT_S = 30


def hold_until_another_holds(job, lock_dir, record, holding, together):
    """Hold one of 2 slots until a second job holds the other one too (``holding``: jobs in a
    slot now, ``together``: set once two were at the same time), then release it."""
    with gpu_slot(2, job, lock_dir, record, poll_s=0.02) as slot:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == str(slot)
        with holding.get_lock():
            holding.value += 1
            if holding.value == 2:
                together.set()
        assert together.wait(WAIT_S), f"{job}: no second job got a slot while this one held slot {slot}"
        with holding.get_lock():
            holding.value -= 1


def test_concurrent_jobs_get_distinct_slots(tmp_path):
    record = tmp_path / "slots.jsonl"
    ctx = multiprocessing.get_context("fork")
    holding, together = ctx.Value("i", 0), ctx.Event()
    args = (tmp_path / "locks", str(record), holding, together)
    jobs = [ctx.Process(target=hold_until_another_holds, args=(f"job{i}", *args)) for i in range(5)]
    for p in jobs:
        p.start()
    for p in jobs:
        p.join(2 * WAIT_S)
        assert p.exitcode == 0
    records = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(r["job"] for r in records) == [f"job{i}" for i in range(5)]
    assert {r["slot"] for r in records} == {0, 1}
    assert overlapping_same_slot(records) == []
    overlaps = sum(
        a["start"] < b["end"] and b["start"] < a["end"] for i, a in enumerate(records) for b in records[i + 1 :]
    )
    assert overlaps >= 1  # two slots: jobs did run side by side


def hold_until_killed(lock_dir, holding):
    with gpu_slot(1, "holder", lock_dir, poll_s=0.02):
        holding.set()
        signal.pause()


def slot_is_free(lock_dir, slot: int) -> bool:
    """Whether nobody holds ``slot``'s lock (tried without waiting; released at once)."""
    with open(lock_dir / f"slot{slot}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_killed_job_releases_its_slot(tmp_path, caplog):
    ctx = multiprocessing.get_context("fork")
    holding = ctx.Event()
    holder = ctx.Process(target=hold_until_killed, args=(tmp_path, holding))
    holder.start()
    if not holding.wait(WAIT_S):
        holder.kill()
        pytest.fail("the holder never got its slot")
    assert not slot_is_free(tmp_path, 0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(WAIT_S)
    assert holder.exitcode == -signal.SIGKILL
    assert slot_is_free(tmp_path, 0)  # the operating system dropped the dead job's lock
    with caplog.at_level("INFO", logger="detfold.train.gpu_slots"), gpu_slot(1, "next", tmp_path) as slot:
        assert slot == 0
    assert "busy, waiting" not in caplog.text


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
