"""The house lint rules, run as tests so the README's test command enforces them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.workflow_run import snakemake, tiny_config

BIN = Path(sys.executable).parent


def run(repo, *cmd):
    exe = BIN / cmd[0] if (BIN / cmd[0]).exists() else shutil.which(cmd[0])
    if exe is None:
        pytest.fail(f"{cmd[0]} is not installed (scripts/setup.sh installs it)")
    return subprocess.run([str(exe), *cmd[1:]], cwd=repo, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "cmd",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("snakefmt", "--check", "Snakefile", "workflow"),
        ("snakemake", "--lint"),
        ("mypy",),  # the library, as configured in pyproject.toml
    ],
    ids=["ruff-check", "ruff-format", "snakefmt", "snakemake-lint", "mypy"],
)
def test_lint_clean(repo, cmd):
    result = run(repo, *cmd)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_lists_k_training_jobs(repo):
    result = run(repo, "snakemake", "-n", "--quiet", "rules", "--directory", str(repo), "--forceall")
    assert result.returncode == 0, result.stderr
    counts = dict(
        line.split()[:2]
        for line in result.stdout.splitlines()
        if line.split()[:1] and line.split()[0] in {"train", "predict"}
    )
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    k, models = config["folds"]["k"], len(config["models"])
    assert int(counts["train"]) == k * models
    assert int(counts["predict"]) == 3 * k * models  # oof, blend and test predictions of every fold model


def files_state(workdir: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime in ns, bytes) of every file under ``workdir``, snakemake's own .snakemake/ aside."""
    return {
        str(p.relative_to(workdir)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and ".snakemake" not in p.relative_to(workdir).parts
    }


def test_dry_run_and_lint_change_no_file(repo, bccd_dir, tmp_path):
    """A prediction file cut short (as a crash of an older version leaves it): ``-n`` names it,
    and neither ``-n`` nor ``--lint`` changes any file (a real run marks it outdated and redoes
    it: test_reliability.py's test_corrupt_prediction_and_checkpoint_are_redone)."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(repo, bccd_dir, tmp_path)))
    cut = tmp_path / "results/predict/tiny/fold0/oof.json"
    cut.parent.mkdir(parents=True)
    cut.write_text('[\n {"image_id": 1,\n')
    before = files_state(tmp_path)
    dry = snakemake(repo, tmp_path, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "results/predict/tiny/fold0/oof.json is incomplete or corrupt: a run will redo it" in dry.stderr + dry.stdout
    assert files_state(tmp_path) == before
    lint = snakemake(repo, tmp_path, "--lint")
    linted = lint.returncode == 0 or "Lints for" in lint.stdout + lint.stderr  # test_lint_clean wants none
    assert linted, lint.stdout[-3000:] + lint.stderr[-3000:]
    assert files_state(tmp_path) == before
