"""tests/gpu/run_gpu.py without a GPU: its dry run (inputs checked, config through the gate, every
command printed; nothing built), a broken input ending in one line that names it, and the
measurements it reads off mmengine's training logs and nvidia-smi."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).with_name("run_gpu.py")
spec = importlib.util.spec_from_file_location("run_gpu", SCRIPT)
run_gpu = importlib.util.module_from_spec(spec)
sys.modules["run_gpu"] = run_gpu  # its dataclasses look their module up
spec.loader.exec_module(run_gpu)


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture()
def wheelhouse(tmp_path: Path) -> Path:
    """A stand-in wheelhouse: one tiny valid wheel per package of wheels.txt, and mmcv's sdist."""
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    for name, version in run_gpu.carried_packages():
        with zipfile.ZipFile(folder / f"{run_gpu.normalize(name)}-{version}-py3-none-any.whl", "w") as whl:
            whl.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
    with tarfile.open(folder / run_gpu.MMCV_SDIST, "w:gz") as sdist:
        sdist.addfile(tarfile.TarInfo("mmcv-2.1.0/setup.py"), io.BytesIO())
    return folder


def test_dry_run_checks_and_prints_the_run(tmp_path, wheelhouse, repo):
    result = dry_run("--work", str(tmp_path / "work"), "--wheelhouse", str(wheelhouse))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{len(run_gpu.carried_packages())} wheels and mmcv-2.1.0.tar.gz" in out
    assert "config gate: snakemake -n accepts it" in out
    build = next(line for line in out.splitlines() if "--no-build-isolation" in line and "mmcv-2.1.0" in line)
    for flag in ("MMCV_WITH_OPS=1", "FORCE_CUDA=1", "TORCH_CUDA_ARCH_LIST=9.0", "MAX_JOBS=16", "--no-index"):
        assert flag in build
    workflow = next(line for line in out.splitlines() if "/venv/bin/snakemake " in line)
    assert "--resources gpu=2" in workflow and "--cores 16" in workflow
    assert f"-s {repo / 'Snakefile'}" in workflow
    assert "install --no-index --no-deps --no-build-isolation -e" in out  # detfold
    assert wheelhouse.name in out and "snakemake-9.27.1-py3-none-any.whl" in out

    config = yaml.safe_load((tmp_path / "work" / "run" / "config.yaml").read_text())
    demo = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    assert config["folds"]["k"] == 2
    assert sorted(m["amp"] for m in config["models"].values()) == [False, True]
    assert all(m["gpus"] == 1 for m in config["models"].values())
    assert config["resources"] == {**demo["resources"], "jobs_per_gpu": 2}
    (demo_model,) = demo["models"].values()
    for model in config["models"].values():  # the demo's model but for the epochs and the GPU keys
        assert model["config"] == str(repo / demo_model["config"])
        assert model["batch_size"] == demo_model["batch_size"] and model["lr"] == demo_model["lr"]
    assert config["data"]["train_annotations"] == str(repo / demo["data"]["train_annotations"])
    assert config["ensemble"] == demo["ensemble"] and config["audit"]["checks"] == demo["audit"]["checks"]


def test_dry_run_without_wheelhouse_names_prepare_and_takes_the_arch(tmp_path):
    result = dry_run("--work", str(tmp_path / "work"), "--wheelhouse", str(tmp_path / "none"), "--arch", "8.6")
    assert result.returncode == 0, result.stderr
    assert "absent: run tests/gpu/prepare.sh" in result.stdout
    assert "TORCH_CUDA_ARCH_LIST=8.6" in result.stdout


@pytest.mark.parametrize(
    ("break_it", "named"),
    [
        (lambda w: (w / run_gpu.MMCV_SDIST).unlink(), "mmcv-2.1.0.tar.gz missing"),
        (lambda w: next(w.glob("snakemake-*.whl")).unlink(), "no wheel of snakemake==9.27.1"),
        (lambda w: next(w.glob("hotcoco-*.whl")).write_bytes(b"<html>"), "hotcoco-1.3.0-py3-none-any.whl: not a wheel"),
    ],
    ids=["no-mmcv-sdist", "no-snakemake-wheel", "broken-wheel"],
)
def test_broken_wheelhouse_fails_with_one_line(tmp_path, wheelhouse, break_it, named):
    break_it(wheelhouse)
    result = dry_run("--work", str(tmp_path / "work"), "--wheelhouse", str(wheelhouse))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and named in result.stderr, result.stderr


def test_missing_checkpoint_fails_with_one_line(tmp_path, wheelhouse, repo):
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    (model,) = config["models"].values()
    model["load_from"] = str(tmp_path / "missing.pth")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = dry_run(
        "--work", str(tmp_path / "work"), "--wheelhouse", str(wheelhouse), "--config", str(tmp_path / "config.yaml")
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"run_gpu: error: models.rtmdet_tiny_amp.load_from: {tmp_path / 'missing.pth'} does not exist"
    )


def test_training_stats_read_mmengine_lines(tmp_path):
    """s/iter and data_time without each fold's first (warm-up) line; peak memory over all lines."""
    head = "2026/11/20 10:00:00 - mmengine - INFO - "
    line = head + (
        "Epoch(train) [{e}][{i:>2}/15]  base_lr: 8.0000e-03 lr: 8.0e-03  eta: 0:00:09  "
        "time: {t}  data_time: {d}  memory: {m}  loss: 2.1"
    )
    logs = tmp_path / "logs" / "train" / "m"
    logs.mkdir(parents=True)
    (logs / "fold0.log").write_text(
        "\n".join(
            [
                line.format(e=1, i=5, t="0.9000", d="0.0500", m=900),
                head + "Epoch(val) [1][5/15]    eta: 0:00:01  time: 5.0000  data_time: 4.0000  memory: 9999",
                line.format(e=1, i=10, t="0.1000", d="0.0100", m=1200),
                line.format(e=1, i=15, t="0.3000", d="0.0300", m=1100),
            ]
        )
    )
    (logs / "fold1.log").write_text(line.format(e=1, i=5, t="0.8000", d="0.0400", m=800))  # one line: kept
    bench = tmp_path / "benchmarks" / "train" / "m"
    bench.mkdir(parents=True)
    (bench / "fold0.tsv").write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t100\n")
    stats = run_gpu.training_stats(tmp_path, "m")
    assert stats.times == [0.1, 0.3, 0.8] and stats.data_times == [0.01, 0.03, 0.04]
    assert stats.peak_mb == 1200 and stats.fold_walls == [12.5]


def test_gpu_memory_and_cpu_figure(tmp_path):
    csv = tmp_path / "gpu_memory.csv"
    csv.write_text("500, 143771, 0\n61234, 143771, 80\n[N/A], 143771, 0\n2048, 143771, 40\n")
    assert run_gpu.gpu_memory(csv) == ("61234", "143771", "40")
    assert run_gpu.gpu_memory(tmp_path / "none.csv") == ("-", "-", "-")
    value, source = run_gpu.cpu_figure(tmp_path)  # no measurement here: the README's figure
    assert value is not None and value > 0 and "tests/bench/README.md" in source
    (tmp_path / "cpu_bench.txt").write_text(
        "training benchmark: rtmdet_tiny_cpu.py, 48 images, 2 epochs, CPU (16 threads)\n\n"
        "| run | mean s/iter | iterations timed | wall s |\n|---|---|---|---|\n"
        "| detfold train_fold | 0.3100 | 7 | 20.0 |\n"
    )
    assert run_gpu.cpu_figure(tmp_path) == (0.31, "measured here on the CPU (16 threads)")


def test_cuda_paths_from_the_nvidia_pip_packages(tmp_path, monkeypatch):
    """A toolkit with nvcc and the runtime's headers alone: the library headers and an unversioned
    libcudart.so come from PyTorch's nvidia pip packages (nvidia/cu13/include, lib)."""
    toolkit, site = tmp_path / "cuda", tmp_path / "site"
    for path in (toolkit / "bin" / "nvcc", toolkit / "include" / "cuda_runtime.h"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    pip_cuda = site / "nvidia" / "cu13"
    for header in run_gpu.CUDA_HEADERS:
        (pip_cuda / "include").mkdir(parents=True, exist_ok=True)
        (pip_cuda / "include" / header).touch()
    (pip_cuda / "lib").mkdir()
    (pip_cuda / "lib" / "libcudart.so.13").touch()
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert run_gpu.find_cuda_home([str(site)]) == str(toolkit)
    env = run_gpu.cuda_library_paths(str(toolkit), [str(site)], tmp_path / "work")
    assert env["CPATH"] == str(pip_cuda / "include")
    assert (Path(env["LIBRARY_PATH"]) / "libcudart.so").resolve() == pip_cuda / "lib" / "libcudart.so.13"
    (pip_cuda / "include" / "cusparse.h").unlink()
    with pytest.raises(run_gpu.CheckFailed, match=r"cusparse\.h not found"):
        run_gpu.cuda_library_paths(str(toolkit), [str(site)], tmp_path / "work")


def test_slot_overlap(tmp_path):
    records = tmp_path / "gpu_slots.jsonl"
    rows = [(0, 10), (5, 12), (10, 20), (11, 13)]  # at most 3 at once: 10-12 has (5,12), (10,20), (11,13)
    lines = [
        f'{{"job": "j{i}", "gpus": [0], "shares": [{i % 2}], "start": {a}, "end": {b}}}'
        for i, (a, b) in enumerate(rows)
    ]
    records.write_text("\n".join([*lines, "not json"]) + "\n")
    assert run_gpu.slot_overlap(records) == (4, 3)
    assert run_gpu.slot_overlap(tmp_path / "none.jsonl") == (0, 0)
