"""Screens and variants through the real workflow (the tiny run: tiny and frcnn on 3 folds, the
screen's two lr variants on fold 0): the leaderboard, the ensemble choice without the screens,
promotion to every fold and editing one variant, as Snakemake plans them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from detfold.core.io import read_json
from helpers.workflow_run import planned_jobs, snakemake

pytestmark = pytest.mark.workflow

SCREENS = ["screen__lr-0.002", "screen__lr-0.004"]
FULL = ["frcnn", "tiny"]


def test_leaderboard_lists_every_model_on_fold0_and_the_full_models_on_pooled_oof(tiny_run):
    board = pd.read_csv(tiny_run / "results" / "compare" / "leaderboard.csv")
    fold0 = board[board.scope == "fold 0"]
    assert sorted(fold0.model) == sorted(FULL + SCREENS)
    val0 = json.loads((tiny_run / "results" / "folds" / "fold0" / "val.json").read_text())
    assert set(fold0.images) == {len(val0["images"])}
    assert dict(zip(fold0.model, fold0.kind, strict=True)) == {
        **dict.fromkeys(FULL, "all folds"),
        **dict.fromkeys(SCREENS, "screen"),
    }
    pooled = board[board.scope == "pooled OOF (3 folds)"]
    assert sorted(pooled.model) == FULL
    for row in pooled.itertuples():  # the same resamples as results/eval: the same intervals
        metrics = read_json(tiny_run / "results" / "eval" / row.model / "metrics.json")["pooled_oof"]
        assert [row.mAP50, row.mAP50_lo, row.mAP50_hi] == [round(metrics["mAP50"], 6), *metrics["mAP50_ci95"]]
    leader = fold0[fold0["rank"] == 1].iloc[0]
    assert (leader.mAP50_diff, leader.mAP50_diff_lo, leader.mAP50_diff_hi) == (0, 0, 0)
    for row in fold0.itertuples():  # a screen's fold-0 score is its metrics.json's, and its cost one fold's
        metrics = read_json(tiny_run / "results" / "eval" / row.model / "metrics.json")
        assert row.mAP50 == round(metrics["folds"][0]["mAP50"], 6) and metrics["folds"][0]["fold"] == 0
        bench = pd.read_csv(tiny_run / "benchmarks" / "train" / row.model / "fold0.tsv", sep="\t")
        assert row.train_s == round(float(bench.s.iloc[0]), 1) and row.params > 100_000


def test_screens_are_scored_on_their_folds_only_and_left_out_of_the_ensemble(tiny_run):
    r = tiny_run / "results"
    for screen in SCREENS:
        metrics = read_json(r / "eval" / screen / "metrics.json")
        assert [f["fold"] for f in metrics["folds"]] == [0] and "test" not in metrics
        assert sorted(p.name for p in (r / "predict" / screen).iterdir()) == ["fold0"]
        assert [p.name for p in (r / "predict" / screen / "fold0").iterdir()] == ["oof.json"]
        assert not (r / "analysis" / screen).exists()
    selection = (r / "ensemble" / "selection.json").read_text()
    assert "screen" not in selection
    summary = (r / "summary.md").read_text()
    assert f"Screens (trained on some folds only; compared here, not in the ensemble): {', '.join(SCREENS)}." in summary


def edited_dry_run(repo: Path, run: Path, edit) -> tuple[dict[str, int], str]:
    """The jobs a dry run plans after ``edit(config)``; the config is restored after."""
    path = run / "config.yaml"
    original = path.read_text()
    config = yaml.safe_load(original)
    edit(config)
    path.write_text(yaml.safe_dump(config))
    try:
        result = snakemake(repo, run, "-n")
    finally:
        path.write_text(original)
    assert result.returncode == 0, result.stderr[-3000:]
    return planned_jobs(result), result.stdout


def test_promoting_the_screen_to_every_fold_trains_only_the_missing_folds(repo, tiny_run):
    jobs, plan = edited_dry_run(repo, tiny_run, lambda c: c["models"]["screen"].update(folds="all"))
    assert jobs["train"] == 2 * 2  # each variant's folds 1 and 2
    trained = {
        line.split("output: ")[1].split(",")[0] for line in plan.splitlines() if "output: results/train/" in line
    }
    assert trained == {f"results/train/{s}/fold{k}/model.pth" for s in SCREENS for k in (1, 2)}
    assert jobs["predict"] == 2 * (2 + 3 + 3)  # folds 1, 2 OOF; blend and test of every fold
    assert "output: results/predict/screen__lr-0.002/fold0/oof.json" not in plan
    assert jobs["ensemble_select"] == 1 and jobs["analyze"] == 2  # now fused and analysed like any model
    assert "Nothing to be done" in snakemake(repo, tiny_run, "-n").stdout  # config restored


def test_editing_one_variant_value_reruns_only_that_variant(repo, tiny_run):
    jobs, plan = edited_dry_run(repo, tiny_run, lambda c: c["models"]["screen"]["variants"].update(lr=[0.002, 0.008]))
    assert jobs["train"] == 1 and jobs["predict"] == 1 and jobs["evaluate"] == 1
    assert "output: results/train/screen__lr-0.008/fold0/model.pth" in plan
    outputs = [line for line in plan.splitlines() if line.strip().startswith("output:")]
    assert [line for line in outputs if "screen__lr-0.002" in line] == []  # the other variant: nothing redone
    assert "ensemble_select" not in jobs  # a screen is not fused: the ensemble stays as it is
    assert jobs["compare"] == 1 and jobs["summary"] == 1
