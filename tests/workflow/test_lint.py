"""The house lint rules, run as tests so the README's test command enforces them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    ],
    ids=["ruff-check", "ruff-format", "snakefmt", "snakemake-lint"],
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
    import yaml

    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    k, models = config["folds"]["k"], len(config["models"])
    assert int(counts["train"]) == k * models
    assert int(counts["predict"]) == 3 * k * models  # oof, blend and test predictions of every fold model
