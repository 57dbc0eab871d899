"""A training job's checkpoints: saved atomically, of builtin types only (so every one is read
back with torch's ``weights_only`` loader: no code runs), resumed after a kill when the run is
the very same, and slimmed into the fold model. Heavy imports are lazy."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from detfold.core.io import atomic_open, write_text

log = logging.getLogger(__name__)

ATOMIC_BACKEND = "detfold_atomic_local"
PLAIN_STATE_HOOK = "DetfoldPlainStateHook"
HISTORY = "__history_buffer__"  # marks a message-hub HistoryBuffer stored as plain lists
SLIM_META = ("dataset_meta", "epoch", "iter", "seed")  # what model.pth keeps of mmengine's meta


def register_atomic_checkpoint_backend() -> None:
    """Register mmengine file backend ``detfold_atomic_local``: the local disk, except that every
    write goes to a temporary file in the same folder, is fsynced, then renamed onto its name.
    The CheckpointHook of a resolved config saves through it, so ``epoch_N.pth`` either is a
    complete checkpoint or does not exist."""
    from mmengine.fileio import register_backend
    from mmengine.fileio.backends import LocalBackend

    class AtomicLocalBackend(LocalBackend):
        def put(self, obj: bytes, filepath: str | os.PathLike[str]) -> None:
            with atomic_open(filepath, "wb") as handle:
                handle.write(obj)

        def put_text(self, obj: str, filepath: str | os.PathLike[str], encoding: str = "utf-8") -> None:
            self.put(obj.encode(encoding), filepath)

    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def to_plain(value: Any) -> Any:
    """mmengine's training state as builtin types (tensors kept): numpy arrays -> lists, numpy
    scalars -> numbers, each message-hub HistoryBuffer -> a marked dict of lists."""
    import numpy as np
    from mmengine.logging import HistoryBuffer

    if isinstance(value, HistoryBuffer):
        history = {"log_history": value._log_history.tolist(), "count_history": value._count_history.tolist()}
        return {HISTORY: True, **history, "max_length": int(value.max_length)}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return type(value)((key, to_plain(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return type(value)(to_plain(item) for item in value)
    return value


def from_plain(value: Any) -> Any:
    """Inverse of :func:`to_plain` for the message hub: marked dicts back into HistoryBuffers."""
    from mmengine.logging import HistoryBuffer

    if isinstance(value, dict) and value.get(HISTORY):
        return HistoryBuffer(value["log_history"], value["count_history"], value["max_length"])
    if isinstance(value, dict):
        return type(value)((key, from_plain(item)) for key, item in value.items())
    return value


def register_plain_state_hook() -> None:
    """Register ``DetfoldPlainStateHook``: every checkpoint this job saves holds builtin types
    and tensors only (its message hub and meta converted by :func:`to_plain`), so torch's default
    ``weights_only`` loader reads it back on resume, and the message hub is rebuilt on loading."""
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    class DetfoldPlainStateHook(Hook):
        priority = "LOWEST"  # saving: after every other hook added its state (EMA weights ...)

        def before_save_checkpoint(self, runner: Any, checkpoint: dict[str, Any]) -> None:
            for key in ("message_hub", "meta"):
                if key in checkpoint:
                    checkpoint[key] = to_plain(checkpoint[key])

        def after_load_checkpoint(self, runner: Any, checkpoint: dict[str, Any]) -> None:
            if "message_hub" in checkpoint:
                checkpoint["message_hub"] = from_plain(checkpoint["message_hub"])

    HOOKS.register_module(name=PLAIN_STATE_HOOK, module=DetfoldPlainStateHook, force=True)


def check_weights_file(path: str, key: str) -> None:
    """Raise ValueError, naming the file, when a user's checkpoint holds Python objects besides
    weights: torch's weights_only loader (what mmengine uses) would refuse it deep inside
    training; detfold never unpickles it in full."""
    import torch

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # not a torch checkpoint at all
        raise ValueError(f"{key} {path!r} is not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    if unsafe:
        raise ValueError(
            f"{key} {path!r} holds Python objects besides weights ({', '.join(sorted(unsafe)[:3])}), which "
            "detfold never unpickles; save its state_dict alone: torch.save({'state_dict': ckpt['state_dict']}, path)"
        )


def start_or_resume(cfg: Any, work_dir: Path, fingerprint: str) -> None:
    """Resume from the newest readable epoch checkpoint in ``work_dir`` when it holds a run with
    the same ``fingerprint`` (resolved config and data); an unreadable one (killed while saving)
    is deleted and the previous one tried. Otherwise discard the work dir and start over."""
    import torch

    stamp = work_dir / "run_fingerprint.txt"
    if stamp.is_file() and stamp.read_text() == fingerprint:
        epochs = sorted(work_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]), reverse=True)
        for candidate in epochs:
            try:
                torch.load(candidate, map_location="cpu", weights_only=True)
            except Exception as err:  # a checkpoint cut short by a kill: any unpickling error
                log.warning("checkpoint %s is unreadable (%s): not resuming from it", candidate, err)
                candidate.unlink()
                continue
            own = str(candidate.resolve())
            write_text(work_dir / "last_checkpoint", own)  # the file mmengine resumes from
            log.info("resuming from %s", own)
            # mmengine resumes from load_from when it is set: point it at this job's own last
            # epoch checkpoint, never at the pretrained file (that one has no training state)
            cfg.resume, cfg.load_from = True, own
            return
    if work_dir.exists():
        log.info("discarding %s: no checkpoint of this exact config and data", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    write_text(stamp, fingerprint)


def save_fold_model(work_dir: Path, checkpoint: str, checkpoint_out: str) -> Path:
    """Write the weights, classes and position of the epoch checkpoint that becomes the fold
    model to ``checkpoint_out`` (atomically) and return that checkpoint: the last one, or with
    ``checkpoint: best`` the newest best one (the last one when validation gave no bbox mAP).
    Of mmengine's meta only :data:`SLIM_META` is kept: its time, work dir and config text would
    make two identical trainings differ byte for byte."""
    import torch

    chosen = Path((work_dir / "last_checkpoint").read_text().strip())
    if checkpoint == "best":
        best = sorted(work_dir.glob("best_*.pth"), key=lambda p: p.stat().st_mtime)
        if best:
            chosen = best[-1]
        else:
            log.warning("no best checkpoint (validation produced no bbox mAP): using the last one")
    state = torch.load(chosen, map_location="cpu", weights_only=True)
    meta = {key: state.get("meta", {})[key] for key in SLIM_META if key in state.get("meta", {})}
    with atomic_open(checkpoint_out, "wb") as handle:
        torch.save({"meta": meta, "state_dict": state["state_dict"]}, handle)
    return chosen


#: Buffers, not parameters: batch-norm statistics saved in a state_dict
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def parameter_count(fold_model: str) -> int:
    """The number of learned values in a fold model (:func:`save_fold_model`'s file): its
    state_dict's tensors without the batch-norm statistics."""
    import torch

    state = torch.load(fold_model, map_location="cpu", weights_only=True)["state_dict"]
    return int(sum(t.numel() for name, t in state.items() if not name.endswith(BUFFER_SUFFIXES)))
