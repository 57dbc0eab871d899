"""The zoo sweep: every config family of the installed MMDetection, one box config each, offline.

For each family (a folder of MMDetection's configs), one box-detection config is picked; then,
each step in its own process with the network blocked (tests/helpers/no_network: any socket
connection or name lookup fails and is recorded):

1. resolve: detfold's resolve_config onto a fold of the bundled data with a local ``load_from``;
2. checkpoint: the zoo config's own model, as published (80 classes), saved as the stand-in
   "COCO checkpoint" the user fine-tunes from;
3. train: rule train's function from that checkpoint, one iteration (2 images, batch 2, 1 epoch).

Each family's outcome: ``ok`` (trained), ``refused`` (detfold stopped it before training with
one line of its own: a ValueError or FileNotFoundError raised in detfold), or ``failed``
(anything else: a library's error, a traceback, a URL reached). The promise is 100 % ok or
refused and no URL reached. Every family runs with the same settings (``SETTINGS``: 160 px),
except where the model cannot take that size (``FAMILY_SETTINGS``). Not run by CI (about 2
hours on 2 cores); the model-zoo matrix (tests/helpers/zoo_matrix.py) is the deep test of a few.

    python tests/helpers/zoo_sweep.py [--family NAME ...] [--resolve-only] [--json rows.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from helpers.zoo_matrix import BCCD, fold_data  # noqa: E402

NO_NETWORK = Path(__file__).resolve().parent / "no_network"
#: words in a config's name that say it is not a plain box detector (picked last)
NOT_BOX = re.compile(r"mask|panoptic|seg|solo|yolact|condinst|boxinst|track|reid|sort|rpn|grounding|glip|refcoco")
#: configs that only override another's test pipeline or categories
NOT_MODEL = re.compile(r"_tta\.py$|override")
SETTINGS = {
    "epochs": 1,
    "batch_size": 2,
    "num_workers": 0,
    "img_scale": [160, 160],
    "tensorboard": False,
}
#: two-stage DETRs select 900 queries (DDQ 1350) among the encoder's tokens: 160 px has 534
FAMILY_SETTINGS = {family: {"img_scale": [320, 320]} for family in ("dino", "ddq", "v3det")}
#: mmcv's CPU deformable convolution needs a feature map of at least its 3 x 3 kernel: a head
#: with one on the stride-128 level needs about 384 px (at 160 px that level is 2 x 1)
FAMILY_SETTINGS |= {family: {"img_scale": [384, 384]} for family in ("ddod",)}
#: SSD's anchors and extra layers are built for 300 px (zoo matrix: 320); the legacy config
#: resizes keeping the ratio (BCCD's 4:3 images need 400 px for a short side of 300)
FAMILY_SETTINGS |= {f: {"img_scale": [320, 320]} for f in ("ssd", "pisa", "openimages", "wider_face", "pascal_voc")}
FAMILY_SETTINGS |= {"legacy_1.x": {"img_scale": [400, 400]}}


def configs_root() -> Path:
    import mmdet

    return Path(mmdet.__file__).parent / ".mim" / "configs"


def families() -> dict[str, str]:
    """Family folder -> its chosen config (``mmdet::family/name.py``): model configs at the
    folder's top level first, plain box configs before others, then the shortest name."""
    chosen = {}
    for folder in sorted(p for p in configs_root().iterdir() if p.is_dir() and not p.name.startswith("_")):
        files = sorted(
            folder.rglob("*.py"),
            key=lambda p: (
                p.parent != folder,
                bool(NOT_MODEL.search(p.name)),
                bool(NOT_BOX.search(p.name)),
                len(p.name),
                p.name,
            ),
        )
        if files:
            chosen[folder.name] = f"mmdet::{files[0].relative_to(configs_root()).as_posix()}"
    return chosen


# ------------------------------------------------------------- steps (each in its own process)


def step_resolve(settings: dict[str, Any], train: str, val: str, work: str) -> dict[str, Any]:
    from detfold.train.mmdet_train import prepare_mmdet, resolve_config

    prepare_mmdet(1)
    resolve_config(settings, train, val, str(BCCD / "images"), work, 42)
    return {}


def step_checkpoint(config: str, out: str) -> dict[str, Any]:
    """The zoo model as published, 80 classes, no pretrained weights (the zoo matrix's stand-in
    "COCO checkpoint"), built in one process as training builds it: mmcv's MMSyncBN, which asks
    for a process group, as PyTorch's SyncBN."""
    import torch
    from detfold.train.mmdet_config import pretrained_inits, set_process_norm
    from detfold.train.mmdet_train import load_mmdet_config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    cfg = load_mmdet_config(config)
    set_process_norm(cfg.model, 1, "cpu")
    for _, owner, key, _ in list(pretrained_inits(cfg.model)):
        owner[key] = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": ("coco",) * 80}}}, out)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def step_train(settings: dict[str, Any], train: str, val: str, out: str) -> dict[str, Any]:
    from detfold.train.mmdet_train import train_fold

    train_fold(settings, train, val, str(BCCD / "images"), f"{out}/model.pth", f"{out}/config.py", 42, 2)
    return {}


STEPS = {"resolve": step_resolve, "checkpoint": step_checkpoint, "train": step_train}


def child(name: str, kwargs: str) -> None:
    """Run one step; print its outcome as one JSON line: ok, or the error, its type and whether
    it was raised by detfold's own code (the last frame of the traceback in scripts/detfold)."""
    import traceback

    try:
        STEPS[name](**json.loads(kwargs))
        outcome: dict[str, Any] = {"ok": True}
    except BaseException as err:  # every failure is a row
        frames = traceback.extract_tb(err.__traceback__)
        raised_by = frames[-1].filename if frames else ""
        outcome = {
            "ok": False,
            "error": f"{type(err).__name__}: {str(err).strip()}",
            "detfold": "/scripts/detfold/" in raised_by,
            "where": f"{raised_by}:{frames[-1].lineno}" if frames else "",
        }
    print("SWEEP-RESULT " + json.dumps(outcome), flush=True)


def run_step(name: str, log: Path, **kwargs: Any) -> dict[str, Any]:
    """One step in a fresh process with the network blocked; its outcome and the URLs tried."""
    tried = log.with_suffix(".network")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(NO_NETWORK), str(REPO / "scripts"), str(REPO / "tests")])}
    env["DETFOLD_NO_NETWORK_LOG"] = str(tried)
    code = f"from helpers.zoo_sweep import child; import sys; child({name!r}, sys.argv[1])"
    with open(log, "w") as handle:
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(kwargs)], stdout=subprocess.PIPE, stderr=handle, text=True, env=env
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SWEEP-RESULT ")]
    outcome = json.loads(lines[-1].split(" ", 1)[1]) if lines else {"ok": False, "error": f"exit {proc.returncode}"}
    outcome["network"] = sorted(set(tried.read_text().split())) if tried.exists() else []
    return outcome


def run_family(name: str, config: str, workdir: Path, resolve_only: bool) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    row: dict[str, Any] = {"family": name, "config": config.removeprefix("mmdet::")}
    started = time.time()
    train, val = fold_data(workdir)
    checkpoint = workdir / "coco.pth"
    checkpoint.write_bytes(b"")  # resolve checks only that load_from is a local file
    settings = {"config": config, **SETTINGS, **FAMILY_SETTINGS.get(name, {}), "load_from": str(checkpoint)}
    steps: list[tuple[str, dict[str, Any]]] = [("resolve", {"train": str(train), "val": str(val)})]
    steps[0][1]["work"] = str(workdir / "resolve")
    if not resolve_only:
        steps += [("checkpoint", {"config": config, "out": str(checkpoint)})]
        steps += [("train", {"train": str(train), "val": str(val), "out": str(workdir / "fold0")})]
    row["outcome"], row["message"] = "ok", ""
    for step, kwargs in steps:
        if step != "checkpoint":
            kwargs["settings"] = settings
        result = run_step(step, workdir / f"{step}.log", **kwargs)
        if result["network"]:
            row["outcome"], row["message"] = "failed", f"{step}: network reached: {', '.join(result['network'])}"
            break
        if not result["ok"]:
            clear = result["error"].startswith(("ValueError", "FileNotFoundError")) and "\n" not in result["error"]
            refused = step == "resolve" and result.get("detfold") and clear
            row["outcome"] = "refused" if refused else "failed"
            row["message"] = f"{step}: {result['error']}" + ("" if refused else f" ({result.get('where', '')})")
            break
    row["wall_s"] = round(time.time() - started, 1)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| family | config | outcome | message |", "|---|---|---|---|"]
    for row in rows:
        message = row["message"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {row['family']} | `{row['config']}` | {row['outcome']} | {message} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", help="a family folder name (default: all)")
    parser.add_argument("--resolve-only", action="store_true", help="resolve only (minutes, not an hour)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    chosen = families()
    names = args.family or list(chosen)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(run_family(name, chosen[name], Path(tmp) / name, args.resolve_only))
            shutil.rmtree(Path(tmp) / name)  # its checkpoints: hundreds of MB a family
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("ok", "refused", "failed")}
    print(f"\n{len(rows)} families: {counts['ok']} ok, {counts['refused']} refused, {counts['failed']} failed")


if __name__ == "__main__":
    main()
