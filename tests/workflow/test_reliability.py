"""Reliability of whole runs (real workflow, tiny data): killed runs finish with the same bytes,
two clean runs give the same bytes, corrupt files of an earlier run are redone, a refused
write fails the job cleanly, and an ensemble-only edit reruns only what depends on it.

The uninterrupted reference is the session's ``tiny_run`` (conftest.py); the runs here use the
very same config and data in other folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.waiting import wait_until
from helpers.workflow_run import SNAKEMAKE, planned_jobs, snakemake, tiny_config

pytestmark = pytest.mark.workflow
MODELS = ("frcnn", "tiny")
FOLDS = (0, 1, 2)
HOLD_RENAME = Path(__file__).resolve().parents[1] / "helpers" / "hold_rename"  # its sitecustomize holds a write
TIMEOUT_S = 900


def reproducible_files() -> list[str]:
    """What must be byte-identical between two CPU runs of the same config (under results/)."""
    files = ["audit/annotations.json", "audit/findings.csv", "audit/test.json", "folds/folds.csv", "folds/balance.csv"]
    files.append("folds/blend_annotations.json")
    files += [f"folds/fold{k}/{split}.json" for k in FOLDS for split in ("train", "val")]
    files += [f"predict/{m}/fold{k}/{split}.json" for m in MODELS for k in FOLDS for split in ("oof", "blend", "test")]
    files += [f"eval/{m}/{name}" for m in MODELS for name in ("metrics.json", "pr_curves.csv")]
    files += [
        f"ensemble/{name}"
        for name in (
            "search.csv",
            "best.json",
            "selection.json",
            "blend_predictions.json",
            "test.json",
            "metrics.json",
            "submission.csv",
        )
    ]
    return [*files, "summary.json", "summary.md"]


def differing(a: Path, b: Path) -> list[str]:
    return [f for f in reproducible_files() if (a / "results" / f).read_bytes() != (b / "results" / f).read_bytes()]


def prepare(tmp_path_factory, repo, bccd_dir, name: str) -> Path:
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(repo, bccd_dir, workdir, screen=True)))
    return workdir


def start(repo: Path, workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """snakemake in its own process group (so the kill takes its jobs too), output to a file."""
    cmd = [str(SNAKEMAKE), "-s", str(repo / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(workdir / "config.yaml"), "--cores", "2", "--resources", "gpu=2", *args]
    out = open(workdir / "snakemake.out", "a")  # noqa: SIM115 - closed by the child's end
    environment = {**os.environ, "DETFOLD_GPU_SLOTS": "2", **(env or {})}
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environment, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, what: str) -> Any:
    """Poll ``condition`` while snakemake runs; a timeout kills the run and fails the test."""
    return wait_until(condition, what, TIMEOUT_S, proc=proc, stop=lambda: os.killpg(proc.pid, signal.SIGKILL))


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL snakemake and every job it started (no chance to clean up)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def held_files(workdir: Path, stage: str) -> list[Path]:
    return sorted((workdir / "results" / stage).rglob(".*.tmp")) if (workdir / "results" / stage).exists() else []


def all_json_outputs_parse(workdir: Path) -> None:
    """Every results JSON parses whole: stricter than detfold.core.io.looks_complete, which the
    workflow uses at start-up and checks only the first and last bytes (cheap on big files)."""
    for path in (workdir / "results").rglob("*.json"):
        if "work" not in path.relative_to(workdir).parts:  # mmengine's own files (JSON lines) aside
            json.loads(path.read_text())  # a half-written JSON would raise here


def run_ok(repo: Path, workdir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    result = snakemake(repo, workdir, "--resources", "gpu=2", *args, env={"DETFOLD_GPU_SLOTS": "2"}, **kwargs)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def killed_three_times(tmp_path_factory, repo, bccd_dir, tiny_run):
    """The tiny workflow SIGKILLed during training, during prediction and during fusion, each
    time restarted as the README says (``--unlock``, then ``--rerun-incomplete``)."""
    workdir = prepare(tmp_path_factory, repo, bccd_dir, "killed")
    facts: dict[str, object] = {}

    # 1. during training: a fold model is being trained
    proc = start(repo, workdir)
    wait_for(lambda: training_started(workdir), proc, "mmengine's training loop to start")
    kill(proc)
    facts["models_after_training_kill"] = sorted(str(p) for p in (workdir / "results").rglob("model.pth"))
    all_json_outputs_parse(workdir)

    # 2. during prediction, 3. during fusion: a file is complete in its temporary file, not yet renamed
    for stage in ("predict", "ensemble"):
        held, final_existed = kill_during_write(repo, workdir, stage)
        facts[f"held_{stage}"], facts[f"{stage}_final_existed"] = held, final_existed
        all_json_outputs_parse(workdir)

    # the documented restart
    subprocess.run([*base(repo, workdir), "--unlock"], check=True, capture_output=True)
    facts["final"] = run_ok(repo, workdir, "--rerun-incomplete")
    return workdir, facts


def training_started(workdir: Path) -> bool:
    """Whether a training job's mmengine Runner has begun its training loop (its CheckpointHook
    says where checkpoints go, in the job's log, before the first iteration)."""
    logs = workdir / "logs" / "train"
    return logs.exists() and any("Checkpoints will be saved to" in p.read_text() for p in logs.rglob("*.log"))


def kill_during_write(repo: Path, workdir: Path, stage: str) -> tuple[Path, bool]:
    """Restart as the README says, hold the first write under results/<stage>/ between its
    complete temporary file and the rename (tests/helpers/hold_rename, loaded into every process
    of the run through PYTHONPATH) and SIGKILL everything there: the held temp file, and whether
    a file already existed under its final name."""
    subprocess.run([*base(repo, workdir), "--unlock"], check=True, capture_output=True)
    holds = workdir / f"holds_{stage}"
    holds.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HOLD_RENAME), os.environ.get("PYTHONPATH")])),
        "DETFOLD_TEST_HOLD_RENAME": f"results/{stage}/",
        "DETFOLD_TEST_HOLD_DIR": str(holds),
    }
    proc = start(repo, workdir, "--rerun-incomplete", env=env)
    held = wait_for(lambda: sorted(holds.glob("[0-9]*")), proc, f"a write under results/{stage}/ to be held")
    kill(proc)
    for hold in held:  # a held job outside snakemake's process group, if any: killed by its pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(hold.name), signal.SIGKILL)
    _, tmp, target = held[0].read_text().rstrip("\n").split("\t")
    tmp_path, target_path = Path(tmp), workdir / target  # target: as the job named it, maybe relative
    assert tmp_path.parent.resolve() == target_path.parent.resolve(), (tmp, target)
    if target_path.suffix == ".json":  # the temporary file is whole: only the rename was missing
        json.loads(tmp_path.read_text())
    return tmp_path, target_path.exists()


def base(repo: Path, workdir: Path) -> list[str]:
    cmd = [str(SNAKEMAKE), "-s", str(repo / "Snakefile"), "--directory", str(workdir), "--cores", "1"]
    return [*cmd, "--configfile", str(workdir / "config.yaml")]


def test_killed_run_resumes_and_equals_an_uninterrupted_one(killed_three_times, tiny_run):
    workdir, facts = killed_three_times
    assert facts["models_after_training_kill"] == []  # no fold model declared done mid-training
    assert not facts["predict_final_existed"], facts["held_predict"]  # killed before the rename
    assert not facts["ensemble_final_existed"], facts["held_ensemble"]
    assert differing(workdir, tiny_run) == []


@pytest.fixture(scope="module")
def second_clean_run(tmp_path_factory, repo, bccd_dir, tiny_run):
    workdir = prepare(tmp_path_factory, repo, bccd_dir, "second")
    run_ok(repo, workdir)
    return workdir


def test_two_clean_runs_are_byte_identical(second_clean_run, tiny_run):
    assert differing(second_clean_run, tiny_run) == []
    for model in MODELS:  # and so are the CPU-trained weights
        for k in FOLDS:
            a = (second_clean_run / f"results/train/{model}/fold{k}/model.pth").read_bytes()
            assert a == (tiny_run / f"results/train/{model}/fold{k}/model.pth").read_bytes()


def test_finished_run_reruns_nothing(second_clean_run, repo):
    result = snakemake(repo, second_clean_run, "-n", "--resources", "gpu=2")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_ensemble_edit_reruns_only_fusion_and_its_reports(second_clean_run, repo):
    config_file = second_clean_run / "config.yaml"
    original = config_file.read_text()
    config = yaml.safe_load(original)
    config["ensemble"] = {"iou_thr": 0.6, "search": {"iou_thr": [0.5, 0.6]}}
    config_file.write_text(yaml.safe_dump(config))
    try:
        result = snakemake(repo, second_clean_run, "-n", "--resources", "gpu=2")
    finally:
        config_file.write_text(original)
    assert result.returncode == 0, result.stderr[-3000:]
    rules = set(planned_jobs(result))
    assert {"ensemble_select", "ensemble_test"} <= rules
    # the error analysis fuses with the untuned model fusion (ensemble.method, iou_thr, ...)
    allowed = {"ensemble_select", "ensemble_test", "summary", "all", "analyze", "analyze_ensemble"} | {
        r for r in rules if r.startswith(("report", "run_facts"))
    }
    assert rules <= allowed, sorted(rules - allowed)
    assert not rules & {"train", "predict", "evaluate", "split_folds", "fold_files", "audit"}


def test_corrupt_prediction_and_checkpoint_are_redone(second_clean_run, repo, tiny_run):
    """A truncated prediction file and a garbage checkpoint, as a crashed older run or a bad copy
    would leave them: the next run names both before building its DAG, redoes them and
    everything after them, and the results equal the uninterrupted run's."""
    results = second_clean_run / "results"
    oof = results / "predict/tiny/fold0/oof.json"
    oof.write_text(oof.read_text()[: len(oof.read_text()) // 2])
    checkpoint = results / "train/frcnn/fold1/model.pth"
    checkpoint.write_bytes(b"garbage from an older run")

    result = run_ok(repo, second_clean_run)
    output = result.stdout + result.stderr
    for path in ("results/predict/tiny/fold0/oof.json", "results/train/frcnn/fold1/model.pth"):
        assert f"detfold: {path} is incomplete or corrupt: it will be redone" in output
    assert differing(second_clean_run, tiny_run) == []
    a, b = (run / "results/train/frcnn/fold1/model.pth" for run in (second_clean_run, tiny_run))
    assert a.read_bytes() == b.read_bytes()


def test_refused_write_fails_the_job_cleanly(second_clean_run, repo, tiny_run):
    """The operating system refuses a big write (file size limit, as a full disk or quota would)
    while fusing: snakemake fails, the log names the output, nothing half-written remains under
    the final name; the rerun without the limit gives the original bytes."""
    fused = second_clean_run / "results/ensemble/test.json"
    assert fused.stat().st_size > 64_000

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    command = [*base(repo, second_clean_run), "--forcerun", "ensemble_test", "--resources", "gpu=2"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=limit,
    )
    assert result.returncode != 0
    log = (second_clean_run / "logs" / "ensemble_test.log").read_text()
    assert "cannot write results/ensemble/test.json: File too large; nothing written under that name" in log
    assert not fused.exists() or fused.read_bytes() == (tiny_run / "results/ensemble/test.json").read_bytes()
    assert held_files(second_clean_run, "ensemble") == []

    # the same command once the cause is gone (a plain rerun would not redo ensemble_test: Snakemake
    # leaves a failed job's deleted outputs alone while the files after them are up to date)
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert differing(second_clean_run, tiny_run) == []
