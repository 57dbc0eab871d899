"""One GPU per running job on one machine: a pool of N slots held with file locks.

Snakemake counts GPUs (``--resources gpu=N``) but never tells a job which one to use, so two
jobs would both land on GPU 0. A training or prediction job takes the first free slot of N
(``flock`` on ``LOCK_DIR/slot{i}.lock``), sets ``CUDA_VISIBLE_DEVICES`` to it for its own
process, and releases it when it ends. The operating system drops the lock of a process that
dies, so a crashed or killed job never keeps its slot.
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
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK_DIR = ".snakemake/detfold_gpu_slots"
RECORD = "logs/gpu_slots.jsonl"


def available_slots() -> int:
    """How many GPU slots this machine has: ``DETFOLD_GPU_SLOTS`` if set (also a CPU stand-in
    for tests); else 0 inside a SLURM job (``SLURM_JOB_ID``: the scheduler already put the job's
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


def _take_free_slot(directory: Path, n_slots: int) -> tuple[IO[str], int] | None:
    """The locked file and index of the first free slot, without waiting; None when all are held."""
    for i in range(n_slots):
        handle = open(directory / f"slot{i}.lock", "a+")  # noqa: SIM115 (held past this function)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return handle, i
    return None


@contextmanager
def gpu_slot(
    n_slots: int, job: str, lock_dir: str | os.PathLike[str] = LOCK_DIR, record: str | None = None, poll_s: float = 0.2
) -> Iterator[int | None]:
    """Hold one of ``n_slots`` slots for the duration of the block; yields its index (None when
    ``n_slots`` is 0: no pool, CUDA_VISIBLE_DEVICES is left alone). With ``record``, one JSON
    line per job (job, slot, pid, start, end) is appended there."""
    if n_slots <= 0:
        given = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        slurm = f" (SLURM job {os.environ['SLURM_JOB_ID']})" if os.environ.get("SLURM_JOB_ID") else ""
        log.info("%s: no GPU slot pool; CUDA_VISIBLE_DEVICES=%s as given%s", job, given, slurm)
        yield None
        return
    directory = Path(lock_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if (taken := _take_free_slot(directory, n_slots)) is None:
        log.info("%s: all %d GPU slots busy, waiting", job, n_slots)
    while taken is None:
        time.sleep(poll_s)
        taken = _take_free_slot(directory, n_slots)
    handle, slot = taken
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
    start = time.time()
    log.info("%s: GPU slot %d of %d (CUDA_VISIBLE_DEVICES=%d)", job, slot, n_slots, slot)
    try:
        yield slot
    finally:
        end = time.time()
        if record:
            line = json.dumps({"job": job, "slot": slot, "pid": os.getpid(), "start": start, "end": end})
            with open(record, "a", encoding="utf-8") as out:
                fcntl.flock(out, fcntl.LOCK_EX)
                out.write(line + "\n")
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
