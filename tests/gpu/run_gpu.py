#!/usr/bin/env python3
"""The bundled workflow on one NVIDIA GPU, in one run on a machine with no network.

On the GPU machine (PyTorch with CUDA and nvcc installed; tests/gpu/wheelhouse carried beside
the repo, see tests/gpu/prepare.sh) it checks the machine, makes a venv over the image's torch,
builds mmcv 2.1.0's ops with CUDA for that GPU's architecture alone, installs the carried wheels
and detfold, runs the demo (K=2, a few epochs, one model with AMP and one without, ``gpus: 1``,
``jobs_per_gpu: 2``, ``--resources gpu=2``) and writes 7 files into one folder (a remote runner
that brings back few files brings back all): measured.md (s/iter on GPU against CPU, peak GPU
memory, wall times, pooled out-of-fold mAP50), run.log, mmcv_build.log, summary.md, summary.json,
gpu_slots.jsonl and logs.tar.gz (every job's log, Snakemake's log and benchmarks, pip's logs,
nvidia-smi).

    python3 tests/gpu/run_gpu.py --out "$OUT"           # there; the whole run stays under --time-limit
    .venv/bin/python tests/gpu/run_gpu.py --dry-run     # here: builds and runs nothing

``--dry-run`` checks its own inputs (the files the workflow config names, the wheelhouse when
present, the generated config through the workflow's config gate with ``snakemake -n``) and prints
every command the run would make. Any failed check ends the script with one line naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "gpu"
MMCV_SDIST = "mmcv-2.1.0.tar.gz"
ASSUMED_ARCH = "9.0"  # a dry run has no GPU to ask: the lent H200's compute capability
# CUDA headers torch's extension headers include (ATen/cuda/CUDAContextLight.h): a toolkit with
# only nvcc lacks the library ones, which PyTorch's pip packages carry (nvidia/cu13/include)
CUDA_HEADERS = ("cuda_runtime.h", "cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h")
RESERVE_S = 45  # kept back from the workflow's time limit for collecting the results
WORKFLOW = "workflow (snakemake)"
CPU_BENCH = "CPU s/iter (bench_train.py, GPU hidden)"
ERROR_LINE = re.compile(r"error:|error [A-Z]|FAILED:|Error:|undefined reference|No such file")
log = logging.getLogger("run_gpu")


class CheckFailed(Exception):
    """A failed check: its message is the one line the script ends with."""


@dataclass
class Step:
    """One command of the run, or an action of this script described as one (``action``)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None  # stdout and stderr go there; else into run.log
    cwd: Path | None = None
    optional: bool = False  # a failure is reported, not fatal
    action: Callable[[], None] | None = None

    def shell(self) -> str:
        if self.action:  # done by this script; argv is a shell command that would do the same
            return f"{' '.join(self.argv)}  # (run_gpu.py does this itself)"
        line = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env.items()), shlex.join(self.argv)])
        if self.cwd:
            line = f"cd {shlex.quote(str(self.cwd))} && {line}"
        return f"{line} > {self.log} 2>&1" if self.log else line


@dataclass(frozen=True)
class Machine:
    """What the build needs to know about the GPU machine (assumed values in a dry run)."""

    gpu: str
    arch: str  # TORCH_CUDA_ARCH_LIST, e.g. "9.0"
    cores: int
    cuda_home: str
    build_env: dict[str, str]  # CPATH / LIBRARY_PATH where the toolkit lacks library headers
    site_dirs: list[str]  # the image python's site-packages (its torch), for the venv's .pth
    facts: str  # one line: torch, CUDA, nvcc, Python versions


# ---------------------------------------------------------------------------------- inputs
def carried_packages() -> list[tuple[str, str]]:
    """(name, version) of every package in tests/gpu/wheels.txt, the version from envs/constraints.txt."""
    pins = {}
    for line in (REPO / "envs" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[normalize(name)] = version
    names = [line.split("#")[0].strip() for line in (HERE / "wheels.txt").read_text().splitlines()]
    missing = [n for n in names if n and normalize(n) not in pins]
    if missing:
        raise CheckFailed(f"tests/gpu/wheels.txt: {missing[0]} is not pinned in envs/constraints.txt")
    return [(n, pins[normalize(n)]) for n in names if n]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def check_wheelhouse(wheelhouse: Path) -> list[Path]:
    """The wheel of every carried package and mmcv's sdist, each a readable archive; the wheels."""
    found = {}
    for path in sorted(wheelhouse.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        found[(normalize(name), version)] = path
    wheels = []
    for name, version in carried_packages():
        path = found.get((normalize(name), version))
        if path is None:
            raise CheckFailed(f"{wheelhouse}: no wheel of {name}=={version} (run tests/gpu/prepare.sh)")
        if not zipfile.is_zipfile(path):
            raise CheckFailed(f"{path}: not a wheel (a broken download? run tests/gpu/prepare.sh)")
        wheels.append(path)
    sdist = wheelhouse / MMCV_SDIST
    if not sdist.is_file():
        raise CheckFailed(f"{wheelhouse}: {MMCV_SDIST} missing (run tests/gpu/prepare.sh)")
    if not tarfile.is_tarfile(sdist):
        raise CheckFailed(f"{sdist}: not a tar archive (a broken download? run tests/gpu/prepare.sh)")
    return wheels


def workflow_config(base: Path, folds: int, epochs: int) -> dict[str, Any]:
    """The demo's config with K = ``folds`` and its one model as two, AMP on and off, ``epochs``
    each, ``gpus: 1``, ``jobs_per_gpu: 2``; its paths, relative to the repo, made absolute (the run
    has a folder of its own)."""
    try:
        config = yaml.safe_load(base.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckFailed(f"{base}: {exc}") from exc
    models = config.get("models") or {}
    if len(models) != 1:
        raise CheckFailed(f"{base}: models: one model expected (the demo's), found {len(models)}")
    name, demo = next(iter(models.items()))
    for key in ("train_annotations", "train_images", "test_annotations", "test_images"):
        if key in config["data"]:
            config["data"][key] = absolute(config["data"][key])
    config["audit"]["overrides"] = absolute(config["audit"]["overrides"])
    config["folds"]["k"] = folds
    settings = {**demo, "config": absolute(demo["config"]), "epochs": epochs, "gpus": 1}
    if "load_from" in settings:
        settings["load_from"] = absolute(settings["load_from"])
    settings["val_interval"] = min(settings.get("val_interval", epochs), epochs)
    logged = {**settings.get("cfg_options", {}), "default_hooks.logger.interval": 5}  # more s/iter samples
    config["models"] = {
        f"{name}_{label}": {**settings, "amp": amp, "cfg_options": dict(logged)}
        for label, amp in (("amp", True), ("fp32", False))
    }
    config["resources"]["jobs_per_gpu"] = 2
    return config


def absolute(path: str) -> str:
    """A path of the demo config (relative to the repo, where Snakemake runs) as an absolute one."""
    return path if path.startswith("mmdet::") else str((REPO / path).resolve())


def check_config_files(config: dict[str, Any]) -> None:
    """Every file the config names exists (the demo's data, overrides, model configs, checkpoints)."""
    paths = [("data." + k, v) for k, v in config["data"].items() if k != "format"]
    paths.append(("audit.overrides", config["audit"]["overrides"]))
    for name, model in config["models"].items():
        paths += [(f"models.{name}.{k}", model[k]) for k in ("config", "load_from") if k in model]
    for key, path in paths:
        if isinstance(path, str) and not path.startswith("mmdet::") and not Path(path).exists():
            raise CheckFailed(f"{key}: {path} does not exist")


# --------------------------------------------------------------------------------- machine
def probe_machine(python: str, work: Path) -> Machine:
    """The GPU, its architecture, the CUDA toolkit and where its headers are; raises on a gap."""
    if not shutil.which("nvidia-smi"):
        raise CheckFailed("nvidia-smi not found: no NVIDIA driver on this machine")
    smi = run_quiet(["nvidia-smi", "-L"])
    if "GPU 0" not in smi:
        raise CheckFailed(f"nvidia-smi -L lists no GPU: {smi.strip()[:200]}")
    code = (
        "import json, site, sys, torch\n"
        "ok = torch.cuda.is_available()\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'ok': ok,\n"
        "  'name': torch.cuda.get_device_name(0) if ok else '',\n"
        "  'cap': torch.cuda.get_device_capability(0) if ok else None,\n"
        "  'python': sys.version.split()[0], 'site': site.getsitepackages(), 'bin': str(sys.executable)}))\n"
    )
    info = json.loads(run_quiet([python, "-c", code]).strip().splitlines()[-1])
    if not info["cuda"]:
        raise CheckFailed(f"{python}: torch {info['torch']} is a CPU build")
    if not info["ok"]:
        raise CheckFailed(f"{python}: torch {info['torch']} sees no GPU (torch.cuda.is_available() is False)")
    cuda_home = find_cuda_home(info["site"])
    nvcc = run_quiet([f"{cuda_home}/bin/nvcc", "--version"])
    release = re.search(r"release (\d+)\.(\d+)", nvcc)
    if not release or release.group(1) != info["cuda"].split(".")[0]:
        raise CheckFailed(
            f"{cuda_home}/bin/nvcc is CUDA {release and release.group(0)}, torch is built for {info['cuda']}"
        )
    if not (shutil.which("c++") or shutil.which("g++")):
        raise CheckFailed("no C++ compiler (c++ or g++) for nvcc's host code")
    build_env = cuda_library_paths(cuda_home, info["site"], work)
    if not shutil.which("ninja"):  # torch's extension build looks it up on PATH
        image_bin = str(Path(info["bin"]).parent)
        if not shutil.which("ninja", path=image_bin):
            raise CheckFailed("ninja not found: torch would compile mmcv's 136 files one at a time")
        build_env["PATH"] = f"{image_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    arch = "{}.{}".format(*info["cap"])
    facts = (
        f"torch {info['torch']}, CUDA {info['cuda']}, nvcc {release.group(1)}.{release.group(2)}, "
        f"Python {info['python']}, {info['name']} (compute capability {arch})"
    )
    return Machine(info["name"], arch, os.cpu_count() or 1, cuda_home, build_env, info["site"], facts)


def find_cuda_home(site_dirs: list[str]) -> str:
    """The toolkit nvcc belongs to: $CUDA_HOME, the folder above the real nvcc (a wrapper script's
    is no toolkit), /usr/local/cuda*, or the nvidia pip packages' (nvidia/cu13/bin/nvcc)."""
    candidates = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", "")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates += sorted((str(p) for p in Path("/usr/local").glob("cuda*")), reverse=True)
    candidates += [str(p.parent.parent) for s in site_dirs for p in sorted(Path(s).glob("nvidia/cu*/bin/nvcc"))]
    for home in candidates:
        if home and Path(home, "bin", "nvcc").is_file() and Path(home, "include", "cuda_runtime.h").is_file():
            return home
    raise CheckFailed(f"no CUDA toolkit (bin/nvcc with include/cuda_runtime.h) in {[c for c in candidates if c]}")


def cuda_library_paths(cuda_home: str, site_dirs: list[str], work: Path) -> dict[str, str]:
    """CPATH for the CUDA library headers the toolkit lacks (from PyTorch's nvidia pip packages) and
    LIBRARY_PATH for an unversioned libcudart.so to link against, where the toolkit has none."""
    include_dirs = [Path(cuda_home, "include")]
    include_dirs += [p for s in site_dirs for p in sorted(Path(s).glob("nvidia/cu*/include"))]
    include_dirs += [p for s in site_dirs for p in sorted(Path(s).glob("nvidia/*/include"))]
    extra = []
    for header in CUDA_HEADERS:
        where = next((d for d in include_dirs if (d / header).is_file()), None)
        if where is None:
            raise CheckFailed(f"{header} not found in {cuda_home}/include nor in the nvidia pip packages")
        if where != include_dirs[0] and str(where) not in extra:
            extra.append(str(where))
    env = {"CPATH": os.pathsep.join(extra)} if extra else {}
    if not any(Path(cuda_home, lib, "libcudart.so").exists() for lib in ("lib64", "lib")):
        found = [p for d in include_dirs for p in sorted(d.parent.glob("lib*/libcudart.so.*"))]
        if not found:
            raise CheckFailed(f"libcudart.so not found in {cuda_home}/lib64 nor in the nvidia pip packages")
        link_dir = work / "cudart"
        link_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (link_dir / "libcudart.so").unlink()
        (link_dir / "libcudart.so").symlink_to(found[0])
        env["LIBRARY_PATH"] = str(link_dir)
    return env


def assumed_machine(args: argparse.Namespace) -> Machine:
    return Machine(
        gpu="(the GPU machine's)",
        arch=args.arch or ASSUMED_ARCH,
        cores=args.cores or 16,
        cuda_home="<the toolkit of nvcc there>",
        build_env={},
        site_dirs=["<site-packages of python3 there>"],
        facts="dry run: nothing probed",
    )


def run_quiet(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CheckFailed(f"{shlex.join(argv)} failed: {exc}") from exc


# ------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Layout:
    """Where everything goes: the venv, the mmcv build, the workflow's folder and the output folder."""

    work: Path
    out: Path

    @property
    def venv(self) -> Path:
        return self.work / "venv"

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def run_dir(self) -> Path:
        return self.work / "run"  # snakemake --directory: results/, logs/, benchmarks/, .snakemake/

    @property
    def side_logs(self) -> Path:
        return self.work / "side_logs"  # pip, nvidia-smi, smoke test: into logs.tar.gz


def plan(args: argparse.Namespace, machine: Machine, where: Layout, wheels: list[Path]) -> list[Step]:
    """Every step of the run, in order."""
    pip = [where.python, "-m", "pip", "--disable-pip-version-check", "install", "--no-index", "--no-deps"]
    src = where.work / "mmcv-2.1.0"
    build_env = {
        "MMCV_WITH_OPS": "1",
        "FORCE_CUDA": "1",  # build the CUDA ops even if torch could not see the GPU at build time
        "TORCH_CUDA_ARCH_LIST": machine.arch,  # this GPU's architecture alone: one pass of nvcc per file
        "MAX_JOBS": str(machine.cores),
        "CUDA_HOME": machine.cuda_home,  # torch would take /usr/local for a wrapper /usr/local/bin/nvcc
        **machine.build_env,
    }
    snakemake = [
        str(where.venv / "bin" / "snakemake"),
        *("-s", str(REPO / "Snakefile"), "--directory", str(where.run_dir)),
        *("--configfile", str(where.run_dir / "config.yaml"), "--replace-workflow-config"),
        *("--cores", str(machine.cores), "--resources", "gpu=2", "--printshellcmds"),
    ]
    pth = where.venv / "lib" / "python3.X" / "site-packages" / "image_site.pth"
    return [
        # the image's python3 is itself a venv (/opt/torch/.venv): --system-site-packages gives a venv
        # made from it the base interpreter's packages, not its torch, hence the .pth next; and its
        # pip too (--without-pip: the base Python may lack ensurepip)
        Step("venv", [args.python, "-m", "venv", "--without-pip", "--system-site-packages", str(where.venv)]),
        Step(
            "venv sees the image's packages",
            ["printf", "'%s\\n'", *map(shlex.quote, machine.site_dirs), ">", str(pth)],
            action=lambda: write_site_pth(where, machine),
        ),
        Step("install wheels", [*pip, "--no-compile", *map(str, wheels)], log=where.side_logs / "pip_wheels.log"),
        Step(
            "unpack mmcv sdist",
            ["tar", "-xzf", str(args.wheelhouse / MMCV_SDIST), "-C", str(where.work)],
            action=lambda: unpack(args.wheelhouse / MMCV_SDIST, where.work),
        ),
        # mmcv 2.1.0 needs no patch for torch 2.11 + CUDA 13 (all 136 files compiled and linked
        # against torch 2.11.0+cu130 with nvcc 13.0 for sm_90, on a CPU machine): its setup.py
        # passes -std=c++17 for torch > 1.12.1, and its one deprecated call (Tensor::type() in
        # spconv_utils.h) is still in torch 2.11. setup.py imports pkg_resources, which setuptools is
        # removing (81 warns; torch 2.11 pins < 82): --no-build-isolation builds with the carried 80.
        Step(
            "build mmcv (CUDA ops)",
            [*pip, "-v", "--no-build-isolation", str(src)],
            env=build_env,
            log=where.out / "mmcv_build.log",
        ),
        Step(
            "install detfold",
            [*pip, "--no-build-isolation", "-e", str(REPO)],
            log=where.side_logs / "pip_detfold.log",
        ),
        Step("smoke test (mmcv CUDA nms)", [where.python, "-c", SMOKE], log=where.side_logs / "smoke.txt"),
        Step(
            "pip check",
            [where.python, "-m", "pip", "check"],
            log=where.side_logs / "pip_check.txt",
            optional=True,
        ),
        Step(WORKFLOW, snakemake, log=where.side_logs / "snakemake.log"),
        Step(
            CPU_BENCH,
            [where.python, str(REPO / "tests" / "bench" / "bench_train.py"), "--images", "48", "--epochs", "2"],
            env={"CUDA_VISIBLE_DEVICES": "", "DETFOLD_GPU_SLOTS": "0"},  # no GPU, no slot pool to hand one out
            log=where.side_logs / "cpu_bench.txt",
            cwd=where.work / "cpu_bench",  # train_fold records GPU slots in ./logs/
            optional=True,
        ),
    ]


SMOKE = """\
import mmcv, mmdet, mmengine, torch, detfold
from mmcv.ops import nms
boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32, device="cuda")
kept, inds = nms(boxes, torch.tensor([0.9, 0.8, 0.7], device="cuda"), 0.5)
assert inds.tolist() == [0, 2] and kept.is_cuda, inds
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), mmcv {mmcv.__version__} (CUDA ops: nms ran on "
      f"{torch.cuda.get_device_name(0)}), mmengine {mmengine.__version__}, mmdet {mmdet.__version__}")
"""


def write_site_pth(where: Layout, machine: Machine) -> None:
    purelib = run_quiet([where.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    Path(purelib, "image_site.pth").write_text("".join(f"{d}\n" for d in machine.site_dirs))


def unpack(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")


# ------------------------------------------------------------------------------------- run
class Clock:
    def __init__(self, limit_s: float) -> None:
        self.start = time.monotonic()
        self.limit_s = limit_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.limit_s - self.elapsed()


def execute(step: Step, timeout: float | None = None) -> tuple[int, float]:
    """Run one step; (exit status, wall seconds). A step past ``timeout`` gets SIGINT, then SIGKILL."""
    log.info("[%s] %s", step.name, step.shell())
    start = time.monotonic()
    if step.action:
        step.action()
        return 0, time.monotonic() - start
    env = {**os.environ, **step.env}
    env["PATH"] = f"{Path(step.argv[0]).parent}{os.pathsep}{env.get('PATH', '')}"
    with open(step.log or os.devnull, "w") as out:
        sink = out if step.log else None  # no log file: into this script's own output
        # its own process group, so that a stop reaches ninja's nvcc and Snakemake's jobs too
        proc = subprocess.Popen(
            step.argv, cwd=step.cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("[%s] past its %.0f s: interrupted", step.name, timeout)
            os.killpg(proc.pid, signal.SIGINT)  # Snakemake cancels its jobs and writes its log
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = 124
    seconds = time.monotonic() - start
    log.info("[%s] exit %d after %.0f s", step.name, code, seconds)
    if code and step.log:
        lines = step.log.read_text(errors="replace").splitlines()
        errors = [line for line in lines if ERROR_LINE.search(line)][:20]  # a compiler's first errors
        log.info("%s, first error lines:\n%s", step.log, "\n".join(errors) or "(none)")
        log.info("%s, last lines:\n%s", step.log, "\n".join(lines[-25:]))
    return code, seconds


@contextlib.contextmanager
def gpu_memory_poll(csv: Path) -> Iterator[None]:
    """nvidia-smi's memory used and utilization of GPU 0, twice a second, while the block runs."""
    with open(csv, "w") as sink:
        query = ["nvidia-smi", "-i", "0", "--query-gpu=memory.used,memory.total,utilization.gpu"]
        proc = subprocess.Popen([*query, "--format=csv,noheader,nounits", "-lms", "500"], stdout=sink)
        try:
            yield
        finally:
            proc.terminate()
            proc.wait()


def full_run(args: argparse.Namespace, where: Layout, clock: Clock) -> int:
    where.side_logs.mkdir(parents=True, exist_ok=True)
    machine = probe_machine(args.python, where.work)
    log.info("machine: %s; %d cores", machine.facts, machine.cores)
    wheels = check_wheelhouse(args.wheelhouse)
    (where.side_logs / "nvidia-smi.txt").write_text(run_quiet(["nvidia-smi"]))
    where.run_dir.mkdir(parents=True, exist_ok=True)
    config = workflow_config(args.config, args.folds, args.epochs)
    check_config_files(config)
    (where.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (where.work / "cpu_bench" / "logs").mkdir(parents=True, exist_ok=True)

    walls: dict[str, float] = {}
    status, failed = "not run", None
    for step in plan(args, machine, where, wheels):
        if step.name == WORKFLOW:
            budget = clock.left() - RESERVE_S
            if budget < 60:
                log.error("no time left for the workflow (%.0f s)", budget)
                break
            with gpu_memory_poll(where.side_logs / "gpu_memory.csv"):
                code, walls[step.name] = execute(step, timeout=budget)
            status = "finished" if code == 0 else ("stopped at the time limit" if code == 124 else f"failed ({code})")
            continue
        if step.name == CPU_BENCH and clock.left() - RESERVE_S < 100:
            log.info("no time left for the CPU measurement: the README's figure stands in")
            continue
        code, walls[step.name] = execute(step, timeout=max(clock.left() - RESERVE_S, 1))
        if code and not step.optional:
            status, failed = f"stopped: {step.name} failed ({code})", step
            break
    with contextlib.suppress(CheckFailed):  # no venv when its step failed
        (where.side_logs / "pip_list.txt").write_text(run_quiet([where.python, "-m", "pip", "list"]))
    collect(where, args, machine, {**walls, "total": clock.elapsed()}, status)
    if failed:
        raise CheckFailed(f"{failed.name} failed; its log: {failed.log or 'run.log'}")
    return 0 if status == "finished" else 1


# ----------------------------------------------------------------------------- measurement
TRAIN_LINE = re.compile(r"Epoch\(train\).*?\btime: ([\d.]+)\s+data_time: ([\d.]+)(?:\s+memory: (\d+))?")
BENCH_ROW = re.compile(r"^\| detfold train_fold \| ([\d.]+) \|", re.MULTILINE)


@dataclass(frozen=True)
class Training:
    """One model's training: mmengine's logged iteration times, after each fold's first line."""

    times: list[float]
    data_times: list[float]
    peak_mb: int | None  # mmengine's max_memory_allocated over every line
    fold_walls: list[float]  # Snakemake's benchmark seconds per fold


def training_stats(run_dir: Path, model: str) -> Training:
    times, data_times, memory, walls = [], [], [], []
    for path in sorted((run_dir / "logs" / "train" / model).glob("fold*.log")):
        rows = [m.groups() for m in TRAIN_LINE.finditer(path.read_text(errors="replace"))]
        memory += [int(r[2]) for r in rows if r[2]]
        rows = rows[1:] if len(rows) > 1 else rows  # the first includes warm-up (cuDNN autotuning)
        times += [float(r[0]) for r in rows]
        data_times += [float(r[1]) for r in rows]
    for path in sorted((run_dir / "benchmarks" / "train" / model).glob("fold*.tsv")):
        lines = path.read_text().splitlines()
        if len(lines) > 1:
            walls.append(float(lines[1].split("\t")[0]))
    return Training(times, data_times, max(memory) if memory else None, walls)


def cpu_figure(side_logs: Path) -> tuple[float | None, str]:
    """CPU s/iter: measured on this machine if that step ran, else the one tests/bench/README.md gives."""
    bench = side_logs / "cpu_bench.txt"
    text = bench.read_text() if bench.exists() else ""
    measured, threads = BENCH_ROW.search(text), re.search(r"CPU \((\d+) threads\)", text)
    if measured and threads:  # the benchmark names the device it ran on: the CPU, not the GPU
        return float(measured.group(1)), f"measured here on the CPU ({threads.group(1)} threads)"
    documented = BENCH_ROW.search((REPO / "tests" / "bench" / "README.md").read_text())
    if documented:
        return float(documented.group(1)), "tests/bench/README.md (2-core development machine, 2 threads)"
    return None, "none found"


def measured_markdown(where: Layout, args: argparse.Namespace, machine: Machine, walls: dict, status: str) -> str:
    summary = read_json(where.run_dir / "results" / "summary.json")
    config = yaml.safe_load((where.run_dir / "config.yaml").read_text())
    cpu, cpu_source = cpu_figure(where.side_logs)
    lines = [
        f"# detfold's demo on {machine.gpu}: K={args.folds}, {args.epochs} epochs, AMP on and off",
        "",
        f"{machine.facts}; {machine.cores} CPU cores. mmcv 2.1.0 built with TORCH_CUDA_ARCH_LIST={machine.arch}.",
        f"Workflow: {status}.",
        "",
        "| step | wall s |",
        "|---|---|",
        *(f"| {name} | {seconds:.0f} |" for name, seconds in walls.items()),
        "",
        "| model | amp | GPU s/iter | data_time s | CPU s/iter | CPU / GPU | peak memory MB | train s per fold "
        "| pooled OOF mAP50 [95 %] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, settings in config["models"].items():
        t = training_stats(where.run_dir, name)
        gpu = statistics.fmean(t.times) if t.times else None
        pooled = ((summary or {}).get("models", {}).get(name) or {}).get("pooled_oof", {})
        interval = pooled.get("mAP50_ci95") or [None, None]
        lines.append(
            f"| {name} | {settings.get('amp', False)} | {fmt(gpu, 4)} (n={len(t.times)}) "
            f"| {fmt(statistics.fmean(t.data_times) if t.data_times else None, 4)} | {fmt(cpu, 4)} "
            f"| {fmt(cpu / gpu if cpu and gpu else None, 1)} | {t.peak_mb if t.peak_mb is not None else '-'} "
            f"| {' / '.join(f'{w:.0f}' for w in t.fold_walls) or '-'} "
            f"| {fmt(pooled.get('mAP50'), 3)} [{fmt(interval[0], 3)}, {fmt(interval[1], 3)}] |"
        )
    used, total, util = gpu_memory(where.side_logs / "gpu_memory.csv")
    records, at_once = slot_overlap(where.run_dir / "logs" / "gpu_slots.jsonl")
    lines += [
        "",
        "GPU s/iter and data_time: mmengine's `time` / `data_time` in `Epoch(train)` lines of"
        " logs/train/MODEL/foldK.log (logged every 5 iterations, each fold's first line left out as warm-up).",
        "Peak memory: mmengine's `memory` (torch.cuda.max_memory_allocated, MB) over those lines.",
        f"nvidia-smi during the workflow: at most {used} MiB of {total} MiB used on GPU 0 (every process"
        f" together, CUDA contexts included); mean utilization {util} %.",
        f"CPU s/iter: {cpu_source}; same config, batch 8, no GPU.",
        f"GPU slot pool (gpu_slots.jsonl): {records} jobs held a slot, at most {at_once} at once.",
    ]
    return "\n".join(lines) + "\n"


def gpu_memory(csv: Path) -> tuple[str, str, str]:
    rows = []
    if csv.exists():
        for line in csv.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append([float(x) for x in line.split(",")])
    if not rows:
        return "-", "-", "-"
    return f"{max(r[0] for r in rows):.0f}", f"{rows[0][1]:.0f}", f"{statistics.fmean(r[2] for r in rows):.0f}"


def slot_overlap(records: Path) -> tuple[int, int]:
    """How many jobs the slot pool recorded, and the most that held a slot at the same time."""
    spans = []
    for line in records.read_text().splitlines() if records.exists() else []:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            row = json.loads(line)
            spans.append((float(row["start"]), float(row["end"])))
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in events:  # an end sorts before a start at the same instant
        running += step
        most = max(most, running)
    return len(spans), most


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(where: Layout, args: argparse.Namespace, machine: Machine, walls: dict, status: str) -> None:
    """Into the output folder: measured.md, the summary, the slot records and logs.tar.gz."""
    run = where.run_dir
    for src, name in (
        (run / "results" / "summary.md", "summary.md"),
        (run / "results" / "summary.json", "summary.json"),
        (run / "logs" / "gpu_slots.jsonl", "gpu_slots.jsonl"),
    ):
        if src.exists():
            shutil.copy(src, where.out / name)
    with tarfile.open(where.out / "logs.tar.gz", "w:gz") as tar:
        for path in (
            run / "logs",
            run / ".snakemake" / "log",
            run / "benchmarks",
            run / "config.yaml",
            where.side_logs,
        ):
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(where.work)))
        for resolved in sorted((run / "results" / "train").glob("*/fold*/config.py")):
            tar.add(resolved, arcname=str(resolved.relative_to(where.work)))
    text = measured_markdown(where, args, machine, walls, status)
    (where.out / "measured.md").write_text(text)
    print(text)


# --------------------------------------------------------------------------------- dry run
def dry_run(args: argparse.Namespace, where: Layout) -> int:
    """Check the inputs and print the run's commands; builds and runs nothing heavy."""
    machine = assumed_machine(args)
    if args.wheelhouse.is_dir():
        wheels = check_wheelhouse(args.wheelhouse)
        print(
            f"wheelhouse: {args.wheelhouse}: {len(wheels)} wheels and {MMCV_SDIST}, all that tests/gpu/wheels.txt names"
        )
    else:  # the run needs it; the list itself must still be pinned
        wheels = [args.wheelhouse / f"{name}-{version}-*.whl" for name, version in carried_packages()]
        print(f"wheelhouse: {args.wheelhouse} absent: run tests/gpu/prepare.sh before the GPU run")
    where.run_dir.mkdir(parents=True, exist_ok=True)
    config = workflow_config(args.config, args.folds, args.epochs)
    check_config_files(config)
    (where.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"workflow config: {where.run_dir / 'config.yaml'} (models: {', '.join(config['models'])})")
    steps = plan(args, machine, where, wheels)
    gate = [args.snakemake, *next(s for s in steps if s.name == WORKFLOW).argv[1:], "-n", "--quiet", "rules"]
    result = subprocess.run(gate, capture_output=True, text=True, timeout=600)
    if result.returncode:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise CheckFailed(f"snakemake -n refused the generated config: {tail[0]}")
    print(f"config gate: snakemake -n accepts it ({shlex.join(gate)})")
    print(f"\nthe run, in order (TORCH_CUDA_ARCH_LIST {machine.arch} is assumed here; the run reads it there):")
    print("  check: nvidia-smi -L; torch.cuda.is_available() and get_device_capability(0) in", args.python)
    print("  check: nvcc's CUDA major == torch.version.cuda's; a C++ compiler; ninja; CUDA headers", CUDA_HEADERS)
    for step in steps:
        print(f"  {step.name}{' (optional)' if step.optional else ''}:\n    {step.shell()}")
    print(
        f"  collect into {where.out}: measured.md, run.log, mmcv_build.log, summary.md, summary.json, "
        "gpu_slots.jsonl, logs.tar.gz"
    )
    return 0


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="check the inputs and print the commands; run nothing")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    parser.add_argument(
        "--work", type=Path, help="scratch folder (default: /tmp/detfold-gpu; a temporary one when dry)"
    )
    parser.add_argument("--wheelhouse", type=Path, default=HERE / "wheelhouse")
    parser.add_argument(
        "--config", type=Path, default=REPO / "config" / "config.yaml", help="the demo config the run's is made from"
    )
    parser.add_argument("--python", default="python3", help="the image's Python, the one with torch (default python3)")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=570, help="seconds for the whole run (default 570)")
    parser.add_argument("--arch", help=f"TORCH_CUDA_ARCH_LIST for a dry run (default {ASSUMED_ARCH}, the H200's)")
    parser.add_argument("--cores", type=int, help="--cores and MAX_JOBS for a dry run (default 16)")
    parser.add_argument(
        "--snakemake",
        default=str(Path(sys.executable).parent / "snakemake"),
        help="the snakemake that checks the config in a dry run (default: beside this Python)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.time_limit)
    try:
        if args.dry_run:
            with tempfile.TemporaryDirectory(prefix="detfold-gpu-") as tmp:
                work = (args.work or Path(tmp)).resolve()
                return dry_run(args, Layout(work, (args.out or work / "out").resolve()))
        if not args.out:
            raise CheckFailed("no output folder: give --out or set OUT")
        where = Layout((args.work or Path("/tmp/detfold-gpu")).resolve(), args.out.resolve())
        where.out.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(message)s",
            handlers=[logging.StreamHandler(sys.stderr), logging.FileHandler(where.out / "run.log")],
        )
        return full_run(args, where, clock)
    except CheckFailed as exc:
        if logging.getLogger().handlers:  # the real run: into run.log too
            log.error("run_gpu: error: %s", exc)
        else:
            print(f"run_gpu: error: {exc}", file=sys.stderr)
        return 1
    except Exception:
        if not logging.getLogger().handlers:
            raise
        log.exception("run_gpu: error")  # the one GPU run: its traceback into run.log
        return 2


if __name__ == "__main__":
    sys.exit(main())
