"""GPUs for the running jobs of one machine: a pool of shares held with file locks.

Snakemake counts GPUs (``--resources gpu=N``) but never tells a job which one to use, so two
jobs would both land on GPU 0. A training or prediction job that needs ``gpus`` GPUs takes one
free share on each of that many GPUs (``flock`` on ``LOCK_DIR/gpu{i}.share{j}.lock``; each GPU
has ``jobs_per_gpu`` shares), the GPUs with the most free shares first, all at once or none
(it waits). It sets ``CUDA_VISIBLE_DEVICES`` to them for its own process and the processes it
starts, and releases them when it ends. The operating system drops the locks of a process that
dies, so a crashed or killed job never keeps its shares.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK_DIR = ".snakemake/detfold_gpu_slots"
RECORD = "logs/gpu_slots.jsonl"


@dataclass(frozen=True)
class Pool:
    """``n_gpus`` GPUs of ``jobs_per_gpu`` shares each, locked under ``lock_dir``."""

    n_gpus: int
    jobs_per_gpu: int = 1
    lock_dir: str | os.PathLike[str] = LOCK_DIR

    def share_file(self, gpu: int, share: int) -> Path:
        return Path(self.lock_dir) / f"gpu{gpu}.share{share}.lock"


def available_slots() -> int:
    """How many GPUs the pool has: ``DETFOLD_GPU_SLOTS`` if set (also a CPU stand-in for
    tests); else 0 inside a SLURM job (``SLURM_JOB_ID``: the scheduler already put the job's
    own GPUs in CUDA_VISIBLE_DEVICES, and a lock pool in the shared work dir would only make jobs
    on different nodes wait for each other); else the GPUs ``nvidia-smi -L`` lists (counted
    without initialising CUDA in this process, so CUDA_VISIBLE_DEVICES can still be set); else 0."""
    if os.environ.get("DETFOLD_GPU_SLOTS"):
        return int(os.environ["DETFOLD_GPU_SLOTS"])
    if os.environ.get("SLURM_JOB_ID") or shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def _lock(path: Path) -> IO[str] | None:
    """The open, locked file at ``path``, without waiting; None when another process holds it."""
    handle = open(path, "a+")  # noqa: SIM115 (held past this function)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _release(handle: IO[str]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def _take_shares(pool: Pool, gpus: int) -> list[tuple[int, int, IO[str]]] | None:
    """One free share on each of ``gpus`` GPUs, the least-shared GPUs first (ties: the lower
    index), as (gpu, share, locked file); None, holding nothing, when fewer GPUs have a free
    share. Probes run one at a time (``pool.lock``), so two jobs starting together see each
    other's shares and spread."""
    with open(Path(pool.lock_dir) / "pool.lock", "a+") as mutex:
        fcntl.flock(mutex, fcntl.LOCK_EX)
        free: dict[int, list[tuple[int, IO[str]]]] = {}
        for gpu in range(pool.n_gpus):
            for share in range(pool.jobs_per_gpu):
                if (handle := _lock(pool.share_file(gpu, share))) is not None:
                    free.setdefault(gpu, []).append((share, handle))
        chosen = sorted(free, key=lambda gpu: (-len(free[gpu]), gpu))[:gpus]
        taken = [(gpu, *free[gpu][0]) for gpu in sorted(chosen)] if len(chosen) == gpus else None
        kept = {id(handle) for _, _, handle in taken or []}
        for shares in free.values():
            for _, handle in shares:
                if id(handle) not in kept:
                    _release(handle)
        return taken


def _no_pool(job: str) -> None:
    given = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    slurm = f" (SLURM job {os.environ['SLURM_JOB_ID']})" if os.environ.get("SLURM_JOB_ID") else ""
    log.info("%s: no GPU slot pool; CUDA_VISIBLE_DEVICES=%s as given%s", job, given, slurm)


@contextmanager
def gpu_slots(
    pool: Pool, job: str, gpus: int = 1, record: str | None = None, poll_s: float = 0.2
) -> Iterator[list[int] | None]:
    """Hold a share of ``gpus`` GPUs of ``pool`` for the duration of the block; yields their
    indices (None when the pool has no GPUs: CUDA_VISIBLE_DEVICES is left alone). With
    ``record``, one JSON line per job (job, gpus, shares, pid, start, end) is appended there."""
    if pool.n_gpus <= 0:
        _no_pool(job)
        yield None
        return
    if gpus > pool.n_gpus:
        raise ValueError(f"{job}: needs gpus={gpus} but this machine's slot pool has {pool.n_gpus} GPU(s)")
    Path(pool.lock_dir).mkdir(parents=True, exist_ok=True)
    if (taken := _take_shares(pool, gpus)) is None:
        log.info(
            "%s: no %d GPU(s) with a free share (of %d GPUs x %d), waiting", job, gpus, pool.n_gpus, pool.jobs_per_gpu
        )
    while taken is None:
        time.sleep(poll_s)
        taken = _take_shares(pool, gpus)
    indices, shares = [gpu for gpu, _, _ in taken], [share for _, share, _ in taken]
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, indices))
    start = time.time()
    log.info(
        "%s: GPU slot(s) %s, share(s) %s of %d per GPU (CUDA_VISIBLE_DEVICES=%s)",
        job,
        indices,
        shares,
        pool.jobs_per_gpu,
        os.environ["CUDA_VISIBLE_DEVICES"],
    )
    try:
        yield indices
    finally:
        if record:
            line = {"job": job, "gpus": indices, "shares": shares, "pid": os.getpid(), "start": start}
            Path(record).parent.mkdir(parents=True, exist_ok=True)
            with open(record, "a", encoding="utf-8") as out:
                fcntl.flock(out, fcntl.LOCK_EX)
                out.write(json.dumps({**line, "end": time.time()}) + "\n")
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        for _, _, handle in taken:
            _release(handle)
