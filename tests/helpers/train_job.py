"""One fold's training as a job of its own process: the command, as the train rule would run it."""

from __future__ import annotations

import sys
from pathlib import Path

TRAIN = """
import sys
sys.path.insert(0, {scripts!r})
from detfold.core.logs import log_to
log_to({log!r})
from detfold.train.mmdet_train import train_fold
train_fold({settings!r}, {data!r}, {data!r}, {images!r}, {out!r} + "/model.pth", {out!r} + "/config.py", 42, 1)
"""


def train_cmd(repo: Path, tmp: Path, out: Path, epochs: int, log: str, **extra: object) -> list[str]:
    settings = {
        "config": str(repo / "config/models/rtmdet_tiny_cpu.py"),
        "epochs": epochs,
        "batch_size": 4,
        "num_workers": 0,
        **extra,
    }
    code = TRAIN.format(
        scripts=str(repo / "scripts"),
        log=str(tmp / log),
        settings=settings,
        data=str(tmp / "train.json"),
        images=str(repo / "tests/data/bccd/images"),
        out=str(out),
    )
    return [sys.executable, "-c", code]
