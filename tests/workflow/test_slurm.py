"""The workflow on a real SLURM cluster through profiles/slurm (snakemake-executor-plugin-slurm).

A one-node cluster with two stand-in GPUs is installed (Debian packages, if missing) and started
on this machine for the module (tests/helpers/slurm_cluster.py), and stopped at the end, also when a
test fails; the teardown fails if a daemon, a job step or a SLURM port is left.

The tiny workflow (2 folds, 1 epoch, RTMDet-tiny trained on 2 GPUs, ``gpus: 2``: two distributed
processes on the CPU, 20 + 6 images) runs twice with
``--workflow-profile profiles/slurm`` (the README's command; profiles/default is not read) and
the test overrides (partition, 1 s before the first status check, ``squeue`` for job states:
the test cluster has no accounting database, so no sacct):

1. with a mistake that only a job can find (an external member's CSV whose image names match
   no training image; the config gate checks its format, not every row): every training and
   prediction job finishes, ensemble_select fails in SLURM, the run exits non-zero;
2. after fixing the config (the member removed): the run completes, and only the failed job
   and what depends on it run again (the trained models and predictions are not redone).
"""

from __future__ import annotations

import atexit
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from detfold.core.coco import load_coco
from helpers.slurm_cluster import LocalCluster, SlurmUnavailable, install
from helpers.workflow_run import SNAKEMAKE, tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
GPU_RULES = {"train", "predict"}
RESOURCES = {  # small job sizes for the 2-CPU test node; they must reach sbatch unchanged
    "train_threads": 1,
    "train_mem_mb": 1500,
    "train_runtime": 10,
    "predict_runtime": 7,
    "mem_mb": 600,
    "runtime": 5,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node SLURM cluster; every daemon it started is stopped afterwards."""
    try:
        install_s = install()
    except SlurmUnavailable as err:
        pytest.skip(f"SLURM tests skipped: SLURM cannot be installed here ({err})")
    cluster = LocalCluster(tmp_path_factory.mktemp("slurm"), install_s=install_s)
    atexit.register(cluster.stop)  # also if the session ends abruptly (stop runs once)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    assert cluster.leftovers() == [], "left behind by the SLURM test cluster"


def snakemake(repo: Path, workdir: Path, cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    """Run snakemake through profiles/slurm with the test cluster's overrides."""
    cmd = [str(SNAKEMAKE), "-s", str(repo / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(workdir / "config.yaml")]
    cmd += ["--workflow-profile", str(repo / "profiles" / "slurm")]  # the README's command, from any folder
    cmd += ["--default-resources", f"slurm_partition={cluster.partition}"]
    cmd += ["--set-resources", *(f"{rule}:slurm_partition={cluster.partition}" for rule in sorted(GPU_RULES))]
    cmd += ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1", *args]
    # the jobs get this environment (sbatch --export=ALL): no GPU pool, no outer SLURM job
    env = {k: v for k, v in cluster.env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env.pop("DETFOLD_GPU_SLOTS", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=workdir)


def slurm_jobs(cluster: LocalCluster) -> dict[str, dict[str, str]]:
    """Every job the controller knows (finished ones stay for MinJobAge): id -> scontrol fields,
    plus 'rule' from the comment the plugin sets (rule_<name>[_wildcards_...])."""
    out = cluster.run("scontrol", "show", "job", "-o", check=True).stdout
    jobs = {}
    for line in out.splitlines():
        if not line.strip() or line.startswith("No jobs"):
            continue
        fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
        fields["rule"] = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", fields.get("Comment", "")).group(1)
        jobs[fields["JobId"]] = fields
    return jobs


def rules_run(jobs: dict[str, dict[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs.values():
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    return counts


def outputs_mtimes(workdir: Path) -> dict[str, int]:
    results = workdir / "results"
    paths = [results / "audit" / "annotations.json", results / "folds" / "folds.csv"]
    paths += sorted((results / "train").rglob("model.pth")) + sorted((results / "predict").rglob("*.json"))
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in paths if p.is_file()}


@pytest.fixture(scope="module")
def slurm_runs(cluster, tmp_path_factory, repo, bccd_dir):
    """The failing run, the fixed rerun and a dry run after it; what SLURM saw of each."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    config = tiny_config(repo, bccd_dir, workdir, n_train=20, n_test=6)
    config["folds"] |= {"k": 2, "blend_share": 0.25}  # 5 blend images: one per nested part
    config["models"] = {"tiny": {k: v for k, v in config["models"]["tiny"].items() if k != "val_interval"}}
    config["models"]["tiny"]["gpus"] = 2  # each training job: 2 GPUs, one task running torchrun
    foreign = workdir / "other_oof.csv"  # the mistake: another tool's file names, not ours
    foreign.write_text("image_id,PredictionString\nnot_an_image.jpg,0 0.5 1 1 2 2\n")
    external = {"name": "other", "oof": str(foreign), "test": str(foreign), "format": "csv"}
    config["ensemble"] = {
        "search": {"method": ["wbf", "nms"], "iou_thr": [0.55], "skip_box_thr": [0.0], "conf_type": ["avg"]},
        "external": [external],
    }
    config["resources"] = RESOURCES
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    runs = {"workdir": workdir, "install_s": cluster.install_s}

    start = time.monotonic()
    runs["first"] = snakemake(repo, workdir, cluster)
    runs["first_s"] = time.monotonic() - start
    runs["first_jobs"] = slurm_jobs(cluster)
    runs["first_mtimes"] = outputs_mtimes(workdir)
    runs["first_logs"] = {p.name: p.read_text() for p in (workdir / "logs").rglob("*.log")}

    config["ensemble"]["external"] = []  # the fix: the foreign member left out
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.monotonic()
    runs["second"] = snakemake(repo, workdir, cluster)
    runs["second_s"] = time.monotonic() - start
    all_jobs = slurm_jobs(cluster)
    runs["second_jobs"] = {i: job for i, job in all_jobs.items() if i not in runs["first_jobs"]}
    runs["second_mtimes"] = outputs_mtimes(workdir)
    runs["dry"] = snakemake(repo, workdir, cluster, "-n")
    for i, job in sorted({**runs["first_jobs"], **runs["second_jobs"]}.items(), key=lambda item: int(item[0])):
        print(f"SLURM job {i:>3} {job['rule']:<16} {job['JobState']:<10} {job['StartTime']} -> {job['EndTime']}")
    print(
        f"\nSLURM: apt install {runs['install_s']:.0f} s, failing run {runs['first_s']:.0f} s "
        f"({len(runs['first_jobs'])} jobs), rerun {runs['second_s']:.0f} s ({len(runs['second_jobs'])} jobs)"
    )
    return runs


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def test_cluster_has_an_idle_node_with_one_gpu(cluster):
    node = cluster.run("sinfo", "-h", "-N", "-o", "%N %P %G %T", check=True).stdout.split()
    assert node == [cluster.host, "debug*", "gpu:2", "idle"]


def test_failed_job_fails_the_run(slurm_runs):
    first = slurm_runs["first"]
    assert first.returncode != 0, output(first)[-3000:]
    assert "Using workflow specific profile" in first.stderr and "profiles/slurm" in first.stderr
    assert "profiles/default" not in first.stderr  # the local profile's core and GPU caps stay out
    assert "SLURM status is: 'FAILED'" in output(first), output(first)[-3000:]
    assert "Error in rule ensemble_select" in output(first)
    log = slurm_runs["first_logs"]["ensemble_select.log"]
    assert "other_oof.csv: row 2: image_id 'not_an_image.jpg' matches no file name" in log
    failed = [j for j in slurm_runs["first_jobs"].values() if j["JobState"] == "FAILED"]
    assert [j["rule"] for j in failed] == ["ensemble_select"]
    # keep-going: every job that does not depend on the failed one ran, and succeeded in SLURM
    ran = rules_run(slurm_runs["first_jobs"])
    assert ran["train"] == 2 and ran["predict"] == 6 and ran["evaluate"] == 1
    assert "ensemble_test" not in ran and "summary" not in ran
    assert {j["JobState"] for j in slurm_runs["first_jobs"].values() if j["rule"] != "ensemble_select"} == {"COMPLETED"}


def test_training_jobs_get_the_gpus_and_the_configured_sizes(slurm_runs):
    jobs = slurm_runs["first_jobs"].values()
    for job in jobs:
        assert job["Partition"] == "debug"
        if job["rule"] in GPU_RULES:  # resources: gpu=2 (train, gpus: 2) or 1 (predict) -> sbatch --gpus
            assert job["TresPerJob"] == f"gres:gpu:{2 if job['rule'] == 'train' else 1}", job
            assert job["MinMemoryNode"] == f"{RESOURCES['train_mem_mb']}M"
            runtime = RESOURCES["train_runtime" if job["rule"] == "train" else "predict_runtime"]
            assert job["TimeLimit"] == f"00:{runtime:02d}:00"
            assert job["NumCPUs"] == str(RESOURCES["train_threads"])
        else:
            assert job.get("TresPerJob", "(null)") == "(null)", job
            assert job["MinMemoryNode"] == f"{RESOURCES['mem_mb']}M"
            assert job["TimeLimit"] == f"00:{RESOURCES['runtime']:02d}:00"
    # inside the job, SLURM set CUDA_VISIBLE_DEVICES to the allocated (stand-in) GPUs and
    # detfold's GPU slot pool left it alone; the training log records it with the job id, and
    # the two distributed processes torchrun started (one task running the launcher)
    train_ids = {i for i, job in slurm_runs["first_jobs"].items() if job["rule"] == "train"}
    seen = set()
    for fold in (0, 1):
        log = slurm_runs["first_logs"][f"fold{fold}.log"]
        match = re.search(r"CUDA_VISIBLE_DEVICES=(\S+) as given \(SLURM job (\d+)\)", log)
        assert match, log[-2000:]
        assert match.group(1) == "0,1"
        seen.add(match.group(2))
        assert "rank 0 of world size 2" in log and "rank 1 of world size 2" in log, log[-2000:]
        assert "distributed training: 2 processes" in log
    assert seen == train_ids


def test_rerun_after_the_fix_completes_without_redoing_finished_jobs(slurm_runs):
    second = slurm_runs["second"]
    assert second.returncode == 0, output(second)[-5000:]
    ran = rules_run(slurm_runs["second_jobs"])
    assert ran["ensemble_select"] == 1 and ran["ensemble_test"] == 1 and ran["summary"] == 1
    assert not set(ran) & set(rules_run(slurm_runs["first_jobs"])) - {"ensemble_select"}  # nothing redone
    assert {j["JobState"] for j in slurm_runs["second_jobs"].values()} == {"COMPLETED"}
    assert slurm_runs["second_mtimes"] == slurm_runs["first_mtimes"]  # models, predictions untouched
    assert len(slurm_runs["first_mtimes"]) == 2 + 2 + 6
    workdir = slurm_runs["workdir"]
    summary = (workdir / "results" / "summary.md").read_text()
    assert "tiny/fold1" in summary and "Delivered predictions" in summary
    clean = load_coco(workdir / "results" / "audit" / "annotations.json")
    oof_ids = set()
    for fold in (0, 1):
        val = load_coco(workdir / "results" / "folds" / f"fold{fold}" / "val.json")
        oof = json.loads((workdir / "results" / "predict" / "tiny" / f"fold{fold}" / "oof.json").read_text())
        assert {p["image_id"] for p in oof} <= set(val.image_ids)
        oof_ids |= set(val.image_ids)
    blend = load_coco(workdir / "results" / "folds" / "blend_annotations.json")
    assert oof_ids | set(blend.image_ids) == set(clean.image_ids) and not oof_ids & set(blend.image_ids)
    dry = slurm_runs["dry"]
    assert dry.returncode == 0 and "Nothing to be done" in output(dry), output(dry)[-3000:]
