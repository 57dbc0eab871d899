"""Checking the GPU slot records (logs/gpu_slots.jsonl) that training and prediction jobs write."""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def peak_jobs_per_gpu(records: list[dict[str, Any]]) -> dict[int, int]:
    """The most jobs that held a share of each GPU at one time (a job ending at the moment
    another starts does not overlap it)."""
    events: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for record in records:
        for gpu in record["gpus"]:
            events[gpu] += [(record["start"], 1), (record["end"], -1)]
    peaks = {}
    for gpu, changes in events.items():
        running = peak = 0
        for _, change in sorted(changes):  # at one time, ends (-1) before starts (+1)
            running += change
            peak = max(peak, running)
        peaks[gpu] = peak
    return peaks


def shares_held_twice(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of jobs that held the same share of the same GPU at overlapping times (should be none)."""
    clashes = []
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            same = set(zip(a["gpus"], a["shares"], strict=True)) & set(zip(b["gpus"], b["shares"], strict=True))
            if same and a["start"] < b["end"] and b["start"] < a["end"]:
                clashes.append((a["job"], b["job"]))
    return clashes
