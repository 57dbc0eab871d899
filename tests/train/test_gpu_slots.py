"""GPU slot pool: a job holds a share of each GPU it needs, all or none; no GPU holds more jobs
than jobs_per_gpu; jobs spread over the GPUs; a killed job gives its shares back."""

import fcntl
import json
import multiprocessing
import os
import signal

import pytest
from detfold.train.gpu_slots import Pool, available_slots, gpu_slots
from helpers.gpu_slots import peak_jobs_per_gpu, shares_held_twice
from helpers.waiting import wait_until

WAIT_S = 30
CTX = multiprocessing.get_context("fork")


class Board:
    """What the jobs of one test share: jobs that have asked for shares, and jobs holding each GPU."""

    def __init__(self, n_gpus: int) -> None:
        self.asked = CTX.Value("i", 0)
        self.holding = CTX.Array("i", n_gpus)
        self.peak = CTX.Array("i", n_gpus)
        self.together = CTX.Value("i", 0)  # jobs holding now, all GPUs
        self.most_together = CTX.Value("i", 0)
        self.lock = CTX.Lock()

    def enter(self, gpus: list[int]) -> None:
        with self.lock:
            self.together.value += 1
            self.most_together.value = max(self.most_together.value, self.together.value)
            for gpu in gpus:
                self.holding[gpu] += 1
                self.peak[gpu] = max(self.peak[gpu], self.holding[gpu])

    def leave(self, gpus: list[int]) -> None:
        with self.lock:
            self.together.value -= 1
            for gpu in gpus:
                self.holding[gpu] -= 1


def job(name, pool, gpus, record, board, hold_until):
    """Ask for ``gpus`` GPUs; hold them until ``hold_until(board)`` is true (a condition on the other jobs)."""
    with board.lock:
        board.asked.value += 1
    with gpu_slots(pool, name, gpus, record=record, poll_s=0.02) as held:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, held))
        assert len(set(held)) == gpus
        board.enter(held)
        wait_until(lambda: hold_until(board), f"{name}: the other jobs", WAIT_S, poll_s=0.02)  # fails the child
        board.leave(held)


def run_jobs(specs, pool, record, board, hold_until):
    processes = [
        CTX.Process(target=job, args=(name, pool, gpus, str(record), board, hold_until)) for name, gpus in specs
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(2 * WAIT_S)
        assert p.exitcode == 0, f"a job failed or hung (exit {p.exitcode})"
    return [json.loads(line) for line in record.read_text().splitlines()]


def all_asked(n):
    return lambda board: board.asked.value == n


def test_concurrent_one_gpu_jobs_get_distinct_gpus(tmp_path):
    board = Board(2)
    specs = [(f"job{i}", 1) for i in range(5)]
    record = tmp_path / "logs" / "slots.jsonl"  # its folder made by the first job that ends
    records = run_jobs(specs, Pool(2, 1, tmp_path / "locks"), record, board, all_asked(5))
    assert sorted(r["job"] for r in records) == [f"job{i}" for i in range(5)]
    assert {gpu for r in records for gpu in r["gpus"]} == {0, 1}
    assert shares_held_twice(records) == []
    assert list(board.peak) == [1, 1] and peak_jobs_per_gpu(records) == {0: 1, 1: 1}


def test_two_gpu_jobs_never_overlap_each_other_or_one_gpu_jobs(tmp_path):
    """2 GPUs, one job each: a gpus=2 job holds both or waits; 1-GPU jobs never share with it."""
    board = Board(2)
    specs = [("two_a", 2), ("one_a", 1), ("two_b", 2), ("one_b", 1), ("one_c", 1)]
    records = run_jobs(specs, Pool(2, 1, tmp_path / "locks"), tmp_path / "slots.jsonl", board, all_asked(5))
    assert list(board.peak) == [1, 1] and shares_held_twice(records) == []
    assert {r["job"]: r["gpus"] for r in records if r["job"].startswith("two")} == {"two_a": [0, 1], "two_b": [0, 1]}
    for two in (r for r in records if len(r["gpus"]) == 2):
        others = [r for r in records if r is not two]
        assert all(r["end"] <= two["start"] or two["end"] <= r["start"] for r in others), two["job"]


def test_jobs_per_gpu_two_runs_four_jobs_at_once_two_per_gpu(tmp_path):
    board = Board(2)
    specs = [(f"job{i}", 1) for i in range(4)]
    # each holds its share until all four hold one: only possible with 2 jobs on each of the 2 GPUs
    records = run_jobs(
        specs, Pool(2, 2, tmp_path / "locks"), tmp_path / "slots.jsonl", board, lambda b: b.most_together.value == 4
    )
    assert sorted(gpu for r in records for gpu in r["gpus"]) == [0, 0, 1, 1]  # spread evenly
    assert list(board.peak) == [2, 2] and peak_jobs_per_gpu(records) == {0: 2, 1: 2}
    assert shares_held_twice(records) == []


def hold_until_killed(pool, holding):
    with gpu_slots(pool, "holder", 1, poll_s=0.02):
        holding.set()
        signal.pause()


def share_is_free(pool: Pool, gpu: int, share: int) -> bool:
    """Whether nobody holds that share's lock (tried without waiting; released at once)."""
    with open(pool.share_file(gpu, share), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


@pytest.mark.parametrize("jobs_per_gpu", [1, 2])
def test_killed_job_releases_its_share(tmp_path, caplog, jobs_per_gpu):
    pool = Pool(1, jobs_per_gpu, tmp_path)
    holding = CTX.Event()
    holder = CTX.Process(target=hold_until_killed, args=(pool, holding))
    holder.start()
    if not holding.wait(WAIT_S):
        holder.kill()
        pytest.fail("the holder never got its share")
    assert not share_is_free(pool, 0, 0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(WAIT_S)
    assert holder.exitcode == -signal.SIGKILL
    assert share_is_free(pool, 0, 0)  # the operating system dropped the dead job's lock
    with caplog.at_level("INFO", logger="detfold.train.gpu_slots"), gpu_slots(pool, "next", 1) as held:
        assert held == [0]
    assert "waiting" not in caplog.text


def test_a_job_needing_more_gpus_than_the_pool_has_is_refused(tmp_path):
    refused = pytest.raises(ValueError, match=r"needs gpus=3 but this machine's slot pool has 2 GPU")
    with refused, gpu_slots(Pool(2, 1, tmp_path), "big", 3):
        pass


def test_no_pool_leaves_the_environment_alone(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with gpu_slots(Pool(0), "cpu-job", 2) as held:
        assert held is None and os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    monkeypatch.setenv("DETFOLD_GPU_SLOTS", "3")
    assert available_slots() == 3


def test_inside_a_slurm_job_the_scheduler_assigns_the_gpu(monkeypatch, caplog):
    """SLURM sets CUDA_VISIBLE_DEVICES for the job's own GPUs: no pool, env untouched, logged."""
    monkeypatch.delenv("DETFOLD_GPU_SLOTS", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert available_slots() == 0
    with caplog.at_level("INFO", logger="detfold.train.gpu_slots"), gpu_slots(Pool(available_slots()), "train") as held:
        assert held is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_VISIBLE_DEVICES=3 as given (SLURM job 42)" in caplog.text
    monkeypatch.setenv("DETFOLD_GPU_SLOTS", "2")  # an explicit pool still wins
    assert available_slots() == 2
