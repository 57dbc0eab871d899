"""Checking the GPU slot records (logs/gpu_slots.jsonl) that training and prediction jobs write."""

from __future__ import annotations

from typing import Any


def overlapping_same_slot(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of jobs that held the same slot at overlapping times (should be none)."""
    clashes = []
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            if a["slot"] == b["slot"] and a["start"] < b["end"] and b["start"] < a["end"]:
                clashes.append((a["job"], b["job"]))
    return clashes
