"""One fold trained as N processes of PyTorch distributed data parallel (``gpus: N``).

The job's own process holds the GPU shares, resolves the config and decides whether to resume
(:mod:`detfold.train.mmdet_train`), then starts PyTorch's launcher, ``torchrun``, with N worker
processes on this machine (:func:`launch`). Each worker (:func:`main`) is mmengine's Runner with
``launcher='pytorch'``, which reads its rank from the environment torchrun gives it (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and shards each epoch with its
DistributedSampler; rank 0 writes the checkpoints. On GPUs the backend is NCCL, one GPU per
process. Without GPUs the N processes run on CPU with the gloo backend: mmengine's own set-up
assumes CUDA there, so the worker opens the gloo process group itself and wraps the model in a
DistributedDataParallel without device ids.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from detfold.train import checkpoints

log = logging.getLogger(__name__)

CPU_DDP = "DetfoldCpuDistributedDataParallel"
WORKER_CONFIG = "distributed_config.py"  # in the work dir: the resolved config the workers train
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent ends


def _end_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
    """Ask Linux to SIGTERM the launcher when the job's process ends, even by SIGKILL, so a
    killed job never leaves workers writing into its work dir (torchrun passes SIGTERM on)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def launch(cfg: Any, processes: int, threads: int, work_dir: Path) -> None:
    """Train ``cfg`` (resolved, resume decided) with ``processes`` workers through torchrun;
    their output goes to this job's log. Raises when a worker fails."""
    config_file = work_dir / WORKER_CONFIG
    cfg.dump(str(config_file))
    per_process = max(1, threads // processes)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        f"--nproc-per-node={processes}", "-m", __name__, str(config_file), str(per_process),
    ]  # fmt: skip
    library = str(Path(__file__).resolve().parents[2])  # the folder holding the detfold package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [library, os.environ.get("PYTHONPATH")]))}
    env["OMP_NUM_THREADS"] = str(per_process)
    log.info("distributed training: %d processes, %d thread(s) each: %s", processes, per_process, " ".join(command))
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_end_with_parent
    ) as launcher:
        assert launcher.stdout is not None
        for line in launcher.stdout:
            log.info("%s", line.rstrip())
    if launcher.returncode != 0:
        raise RuntimeError(f"distributed training with {processes} processes failed (exit {launcher.returncode})")


def _register_cpu_wrapper() -> None:
    """mmengine's DistributedDataParallel wrapper, built without device ids on CPU (PyTorch
    refuses device ids for a CPU model; mmengine always passes LOCAL_RANK as one)."""
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS

    class CpuDistributedDataParallel(MMDistributedDataParallel):
        def __init__(self, module: Any, device_ids: Any = None, **kwargs: Any) -> None:
            super().__init__(module=module, **kwargs)

    MODEL_WRAPPERS.register_module(name=CPU_DDP, module=CpuDistributedDataParallel, force=True)


def main(argv: list[str] | None = None) -> None:
    """One worker: ``python -m detfold.train.distributed CONFIG THREADS`` under torchrun."""
    import torch.distributed
    from mmengine.runner import Runner

    from detfold.train.mmdet_train import load_resolved_config, prepare_mmdet

    config_file, threads = argv or sys.argv[1:]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    logging.basicConfig(level=logging.INFO, format=f"rank {rank}: %(message)s", stream=sys.stdout, force=True)
    cfg = load_resolved_config(config_file)  # CPU math pins, if any, came with the job's environment
    device = prepare_mmdet(int(threads), bool(cfg.randomness.get("deterministic", False)))
    checkpoints.register_atomic_checkpoint_backend()
    checkpoints.register_plain_state_hook()
    cfg.launcher = "pytorch"
    if device == "cuda":
        backend = "nccl"
        cfg.env_cfg = {**cfg.get("env_cfg", {}), "dist_cfg": dict(backend=backend)}
    else:
        backend = "gloo"
        torch.distributed.init_process_group(backend=backend)
        _register_cpu_wrapper()
        unused = cfg.get("find_unused_parameters", False)
        cfg.model_wrapper_cfg = dict(type=CPU_DDP, broadcast_buffers=False, find_unused_parameters=unused)
    log.info(
        "rank %d of world size %d (local rank %s), %s backend on %s",
        rank,
        world,
        os.environ["LOCAL_RANK"],
        backend,
        device,
    )
    Runner.from_cfg(cfg).train()
    torch.distributed.destroy_process_group()
    log.info("rank %d of %d: training done", rank, world)


if __name__ == "__main__":
    main()
