"""Benchmark: per-iteration training time, detfold's job vs a plain mmdet Runner run of the same
resolved config (what mmdet's tools/train.py does), in one run.

    .venv/bin/python tests/bench/bench_train.py [--images 64] [--epochs 2] [--config config/models/rtmdet_tiny_cpu.py]

Both runs read the same data, config and seed on the same device; the table gives the mean
iteration time (mmengine's own "time" log, first 5 iterations excluded as
warm-up) and the ratio plain / detfold (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from detfold.core.coco import load_coco, write_coco  # noqa: E402
from detfold.train.mmdet_train import train_fold  # noqa: E402


def iteration_times(work_dir: Path) -> list[float]:
    scalars = sorted(work_dir.rglob("scalars.json"))[-1]
    rows = [json.loads(line) for line in scalars.read_text().splitlines()]
    return [r["time"] for r in rows if "time" in r and r.get("step", 0) > 5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--config", default=str(REPO / "config/models/rtmdet_tiny_cpu.py"))
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        coco = load_coco(REPO / "tests/data/bccd/train.json")
        write_coco(coco.subset(coco.image_ids[: args.images]), tmp_path / "train.json")
        data, images = str(tmp_path / "train.json"), str(REPO / "tests/data/bccd/images")
        settings = {
            "config": args.config,
            "epochs": args.epochs,
            "num_workers": 0,
            "tensorboard": False,
            "cfg_options": {"default_hooks.logger.interval": 1},
        }  # every iteration timed
        t = time.perf_counter()
        train_fold(settings, data, data, images, str(tmp_path / "d/model.pth"), str(tmp_path / "d/config.py"), 42, 2)
        wall_detfold = time.perf_counter() - t
        ours = iteration_times(tmp_path / "d/work")
        # the resolved config, loaded and run as tools/train.py does, in its own process
        plain_code = (
            "from mmdet.utils import register_all_modules; register_all_modules(init_default_scope=True)\n"
            "from mmengine.config import Config; from mmengine.runner import Runner\n"
            f"cfg = Config.fromfile({str(tmp_path / 'd/config.py')!r}); cfg.work_dir = {str(tmp_path / 'plain')!r}\n"
            "cfg.default_hooks.checkpoint.pop('backend_args')  # mmengine's own (non-atomic) saving\n"
            "cfg.custom_hooks = [h for h in cfg.custom_hooks if h.type != 'DetfoldPlainStateHook']\n"
            "cfg.resume = False; Runner.from_cfg(cfg).train()\n"
        )
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", plain_code], check=True, capture_output=True)
        wall_plain = time.perf_counter() - t
        plain = iteration_times(tmp_path / "plain")
    mean_ours, mean_plain = sum(ours) / len(ours), sum(plain) / len(plain)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"training benchmark: {Path(args.config).name}, {args.images} images, {args.epochs} epochs, {device}")
    print()
    print("| run | mean s/iter | iterations timed | wall s |")
    print("|---|---|---|---|")
    print(f"| detfold train_fold | {mean_ours:.4f} | {len(ours)} | {wall_detfold:.1f} |")
    print(f"| plain mmdet Runner (tools/train.py) | {mean_plain:.4f} | {len(plain)} | {wall_plain:.1f} |")
    print(f"| ratio plain / detfold (goal >= 0.98) | {mean_plain / mean_ours:.3f} | | |")


if __name__ == "__main__":
    main()
