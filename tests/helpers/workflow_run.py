"""Running the real workflow from tests: the snakemake command and the tiny demo run's config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from detfold.core.coco import load_coco, write_coco

SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def snakemake(repo: Path, workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "-s", str(repo / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env={**os.environ, **(env or {})})


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a dry run (``-n``)."""
    lines = (result.stdout + result.stderr).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats")) + 3
    counts = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def tiny_config(
    repo: Path, bccd_dir: Path, workdir: Path, n_train: int = 30, n_test: int = 8, screen: bool = False
) -> dict[str, Any]:
    """The first ``n_train`` train + ``n_test`` test images of the bundled data in ``workdir``;
    2 models x 3 folds, 1 epoch; with ``screen`` also a screen of 2 variants (lr) on fold 0."""
    train = load_coco(bccd_dir / "train.json")
    test = load_coco(bccd_dir / "test.json")
    write_coco(train.subset(train.image_ids[:n_train]), workdir / "train.json")
    write_coco(test.subset(test.image_ids[:n_test]), workdir / "test.json")
    (workdir / "overrides.csv").write_text("ann_id,image_id,decision,note\n")
    config = {
        "seed": 42,
        "data": {
            "train_annotations": str(workdir / "train.json"),
            "train_images": str(bccd_dir / "images"),
            "test_annotations": str(workdir / "test.json"),
            "test_images": str(bccd_dir / "images"),
        },
        "folds": {"k": 3},
        "models": {  # two detector families: one-stage RTMDet, two-stage Faster R-CNN
            "tiny": {
                "config": str(repo / "config" / "models" / "rtmdet_tiny_cpu.py"),
                "epochs": 1,
                "batch_size": 4,
                "num_workers": 0,
                "val_interval": 1,  # validation during training: the report's val mAP panel
            },
            "frcnn": {
                "config": str(repo / "config" / "models" / "faster_rcnn_r18_cpu.py"),
                "epochs": 1,
                "batch_size": 4,
                "num_workers": 0,
            },
        },
        "predict": {"score_thr": 0.0, "max_per_img": 100},
        "audit": {"overrides": str(workdir / "overrides.csv")},
        "resources": {"train_threads": 1},  # with --cores 2: two jobs at once
    }
    if screen:  # on the leaderboard, not in the ensemble
        config["models"]["screen"] = {
            "config": str(repo / "config" / "models" / "rtmdet_tiny_cpu.py"),
            "folds": [0],
            "epochs": 1,
            "batch_size": 4,
            "num_workers": 0,
            "variants": {"lr": [0.002, 0.004]},
        }
    return config
