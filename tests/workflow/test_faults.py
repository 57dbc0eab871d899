"""Faults while writing: a full disk, a file size limit, an unwritable folder, a corrupt file
from an earlier run. Every writer goes through temp-file-and-rename, so a failed write raises a
clear error naming the output, leaves no partial file under the final name, keeps an earlier
complete file as it was, and leaves no temporary file behind."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from detfold.audit.checks import Finding, write_findings
from detfold.core.coco import write_coco
from detfold.core.io import atomic_open, read_product, write_json
from detfold.ensemble.external import write_submission
from detfold.folds.assign import assign_folds, balance_table, plot_balance, write_folds


def full_disk(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def writers(bccd):
    """name -> (output file name, function writing it): the library's writers of results."""
    small = bccd.subset(bccd.image_ids[:12])
    folds = assign_folds(small, k=3, seed=42)
    preds = [{"image_id": small.image_ids[0], "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]
    finding = Finding("train", small.image_ids[0], None, "x.jpg", "RBC", "tiny", 1.0, 2.0, "flag")
    return {
        "json": ("metrics.json", lambda p: write_json(p, {"mAP": 0.5})),
        "coco": ("val.json", lambda p: write_coco(small, p)),
        "folds csv": ("folds.csv", lambda p: write_folds(folds, p)),
        "balance png": ("balance.png", lambda p: plot_balance(balance_table(small, folds), p)),
        "findings csv": ("findings.csv", lambda p: write_findings([finding], p)),
        "submission csv": ("submission.csv", lambda p: write_submission(preds, small, p, "index")),
        "binary (checkpoint)": ("model.pth", lambda p: _write_bytes(p, b"\0" * 4096)),
    }


def _write_bytes(path, data):
    with atomic_open(path, "wb") as handle:
        handle.write(data)


WRITERS = ["json", "coco", "folds csv", "balance png", "findings csv", "submission csv", "binary (checkpoint)"]


@pytest.mark.parametrize("writer", WRITERS)
def test_full_disk_keeps_the_earlier_file_and_names_the_output(writer, bccd, tmp_path, monkeypatch):
    name, write = writers(bccd)[writer]
    target = tmp_path / "results" / name
    target.parent.mkdir()
    target.write_bytes(b"earlier complete output")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError) as err:
        write(target)
    assert err.value.errno == errno.ENOSPC
    assert f"cannot write {target}: No space left on device; nothing written under that name" in str(err.value)
    assert target.read_bytes() == b"earlier complete output"
    assert sorted(p.name for p in target.parent.iterdir()) == [name]  # no temporary file left


@pytest.mark.parametrize("writer", ["json", "coco", "folds csv", "findings csv"])
def test_unwritable_results_folder_is_a_clear_error(writer, bccd, tmp_path):
    """The results folder is not a folder (root ignores permission bits, so this is the
    unwritable folder a root CI run can produce): a clear error, nothing created."""
    name, write = writers(bccd)[writer]
    (tmp_path / "results").write_text("a file where the results folder should be")
    target = tmp_path / "results" / "eval" / name
    with pytest.raises(OSError) as err:
        write(target)
    assert f"cannot write {target}:" in str(err.value)
    assert (tmp_path / "results").read_text() == "a file where the results folder should be"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_file_size_limit_in_a_real_process(tmp_path):
    """The operating system refuses the write (RLIMIT_FSIZE, as a quota or a full disk would):
    the process exits with one clear error, the final file never appears."""
    code = (
        "import sys, resource; sys.path.insert(0, {scripts!r})\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10000, 10000))\n"
        "from detfold.core.io import write_json\n"
        "try:\n"
        "    write_json({out!r}, [{{'image_id': i, 'score': 0.5}} for i in range(5000)])\n"
        "except OSError as err:\n"
        "    print(err); sys.exit(3)\n"
    ).format(scripts=str(Path(__file__).resolve().parents[2] / "scripts"), out=str(tmp_path / "oof.json"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert f"cannot write {tmp_path / 'oof.json'}: File too large; nothing written under that name" in result.stdout
    assert list(tmp_path.iterdir()) == []
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY  # the test process untouched


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "sco', "truncated JSON (the file ends early)"),
        ("", "empty file, expected JSON"),
        ("\x00\x00\x00", "not valid JSON"),
    ],
)
def test_corrupt_prediction_file_is_deleted_not_trusted(tmp_path, content, reason):
    path = tmp_path / "oof.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_product(path)
    assert reason in str(err.value)
    assert "deleted it: run snakemake again to redo the job that wrote it" in str(err.value)
    assert not path.exists()


def test_intact_prediction_file_is_read(tmp_path):
    path = tmp_path / "oof.json"
    path.write_text(json.dumps([{"image_id": 1}]))
    assert read_product(path) == [{"image_id": 1}]
    assert path.exists()


@pytest.mark.parametrize("content", [b"", b"cut short", b"PK\x03\x04 not really a zip"])
def test_corrupt_checkpoint_is_deleted_not_trusted(tmp_path, content):
    from detfold.predict.mmdet_predict import check_checkpoint

    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        check_checkpoint(str(path))
    assert f"{path}: corrupt checkpoint" in str(err.value)
    assert "deleted it: run snakemake again to retrain" in str(err.value)
    assert not path.exists()


def test_checkpoint_without_weights_is_not_trusted(tmp_path):
    import torch
    from detfold.predict.mmdet_predict import check_checkpoint

    path = tmp_path / "model.pth"
    torch.save({"meta": {}}, path)
    with pytest.raises(ValueError, match="no state_dict in it"):
        check_checkpoint(str(path))
    assert not path.exists()


def test_folds_writer_output_is_complete_after_success(bccd, tmp_path):
    folds = assign_folds(bccd, k=3, seed=42)
    write_folds(folds, tmp_path / "folds.csv")
    assert pd.read_csv(tmp_path / "folds.csv").shape[0] == len(bccd.images)
    assert [p.name for p in tmp_path.iterdir()] == ["folds.csv"]


def test_incomplete_products_are_found_at_every_cut(tmp_path, bccd):
    """Every prefix of a real metrics file, a predictions file and a checkpoint cut at a line
    (or byte) boundary is recognised as incomplete; the whole files are not."""
    import torch
    from detfold.core.io import incomplete_products, looks_complete, mark_outdated
    from detfold.evaluate.metrics import evaluate_coco

    small = bccd.subset(bccd.image_ids[:5])
    preds = [{**a, "score": 0.9} for a in small.annotations]
    files = {
        "results/eval/m/metrics.json": evaluate_coco(small, preds),
        "results/predict/m/fold0/oof.json": preds,
        "results/predict/m/fold1/oof.json": [],
    }
    for name, data in files.items():
        write_json(tmp_path / name, data)
    checkpoint = tmp_path / "results/train/m/fold0/model.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(50)}}, checkpoint)
    (tmp_path / "results/train/m/fold0/work").mkdir()
    (tmp_path / "results/train/m/fold0/work/scalars.json").write_text('{"loss": 1}\n{"loss": 0.5}\n')
    assert incomplete_products(tmp_path / "results") == []  # JSON lines of mmengine left alone

    for name in files:
        text = (tmp_path / name).read_text()
        lines_ends = [i + 1 for i, ch in enumerate(text) if ch == "\n"][:-1]
        cuts = [*lines_ends, len(text) // 2, len(text) - 1]
        for cut in cuts:
            (tmp_path / "cut.json").write_text(text[:cut])
            assert not looks_complete(tmp_path / "cut.json"), (name, cut, text[:cut][-40:])
    data = checkpoint.read_bytes()
    for cut in (0, 100, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        assert not looks_complete(tmp_path / "cut.pth")

    (tmp_path / "results/predict/m/fold0/oof.json").write_text(files and '[\n {"image_id": 1,\n')
    checkpoint.write_bytes(b"garbage")
    found = incomplete_products(tmp_path / "results")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "results/predict/m/fold0/oof.json",
        "results/train/m/fold0/model.pth",
    ]
    assert all(p.stat().st_mtime > 0 for p in found)  # finding them changes nothing
    for path in found:
        mark_outdated(path)
    assert [p.stat().st_mtime for p in found] == [0, 0]  # older than any input: snakemake redoes them
    assert (tmp_path / "results/eval/m/metrics.json").stat().st_mtime > 0
