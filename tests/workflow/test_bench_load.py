"""tests/bench/bench_load.py at a tiny size: it generates the files, runs the three stages in
their own processes and prints its table (a smoke test, no timing asserted)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
from detfold.core.io import read_json

REPO = Path(__file__).resolve().parents[2]


def test_bench_load_runs_every_stage(tmp_path):
    args = ["--images", "200", "--models", "2", "--folds", "2", "--test-images", "30", "--search", "small"]
    run = subprocess.run(
        [sys.executable, str(REPO / "tests/bench/bench_load.py"), *args, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| run_")]
    assert [row.split(" | ")[0] for row in rows] == ["| run_evaluate", "| run_ensemble_select", "| run_ensemble_test"]
    assert all(row.endswith("| ok |") for row in rows)
    assert "verdict: PASS" in run.stdout
    results = tmp_path / "results"
    assert len(read_json(results / "eval/model0/metrics.json")["folds"]) == 2
    search = pd.read_csv(results / "ensemble/search.csv")
    assert (search.step == "fold fusion").sum() == 2 * (1 + 4)  # per model: the default, then the small grid
    assert (search.step == "model fusion").sum() == 1 + 4
    fused = read_json(results / "ensemble/test.json")
    assert 0 < len(fused) <= 30 * 100
    assert read_json(results / "ensemble/metrics.json")["members"] == ["model0", "model1"]
