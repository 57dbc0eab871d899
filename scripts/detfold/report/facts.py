"""The run's facts: installed versions, the machine, run time per rule and job (Snakemake's
benchmark files)."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

PACKAGES = ("torch", "mmdet", "mmcv", "mmengine", "snakemake", "numpy", "detfold")
BENCHMARK_COLUMNS = ["rule", "job", "s", "max_rss_mb", "cpu_s"]


def versions() -> dict[str, str]:
    """Python's and the installed :data:`PACKAGES`' versions (``not installed`` where missing)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, str]:
    """The machine this runs on: host, OS, CPU model and cores, memory, GPUs."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    models = (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        memory = "unknown"
    gpus = "none visible (no nvidia-smi)"
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
        gpus = "; ".join(result.stdout.split("\n")).strip("; ") or f"nvidia-smi -L: {result.stderr.strip()}"
    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "cpu": next(models, platform.processor() or "unknown"),
        "cpu cores": str(os.cpu_count()),
        "memory": memory,
        "gpus": gpus,
    }


def facts_table(config: Mapping[str, Any]) -> pd.DataFrame:
    """Seed, versions and machine as (fact, value) rows."""
    return pd.DataFrame(
        [{"fact": "seed", "value": str(config.get("seed"))}]
        + [{"fact": f"version of {k}", "value": v} for k, v in versions().items()]
        + [{"fact": f"machine: {k}", "value": v} for k, v in machine().items()]
    )


def read_benchmarks(paths: Sequence[str], root: str = "benchmarks") -> pd.DataFrame:
    """Snakemake benchmark TSVs (``root/RULE.tsv`` or ``root/RULE/JOB....tsv``) as one table:
    rule, job, seconds, max RSS in MB (NaN where too short to measure), CPU seconds."""
    frames = []
    for path in paths:
        rule, *job = Path(path).relative_to(root).with_suffix("").parts
        bench = pd.read_csv(path, sep="\t").reindex(columns=["s", "max_rss", "cpu_time"])
        numbers = bench.apply(pd.to_numeric, errors="coerce").astype(float)
        frames.append(numbers.set_axis(BENCHMARK_COLUMNS[2:], axis=1).assign(rule=rule, job="/".join(job)))
    if not frames:
        return pd.DataFrame(columns=BENCHMARK_COLUMNS)
    return pd.concat(frames, ignore_index=True)[BENCHMARK_COLUMNS]


def run_times(bench: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per rule (jobs, total and longest seconds, most memory; slowest first, then a total
    row) and per job, from :func:`read_benchmarks` (missing values as None)."""
    per_rule = (
        bench.groupby("rule", sort=False)
        .agg(jobs=("s", "size"), total_s=("s", "sum"), max_s=("s", "max"), max_rss_mb=("max_rss_mb", "max"))
        .reset_index()
        .sort_values("total_s", ascending=False)
    )
    total = {"rule": "all rules (sum of job times)", "jobs": len(bench), "total_s": bench.s.sum()}
    per_rule = pd.concat([per_rule, pd.DataFrame([total])], ignore_index=True)
    per_rule = per_rule.astype(object).where(per_rule.notna(), None)
    jobs = bench.astype(object).where(bench.notna(), None)
    return per_rule, jobs
