"""Test-only fault injection: hold a write between its complete temporary file and the rename.

Python imports ``sitecustomize`` at start-up from the first folder of ``sys.path`` that has
one, so a process started with this folder first on ``PYTHONPATH`` (snakemake and every job it
starts, see tests/workflow/test_reliability.py) loads this file. With ``DETFOLD_TEST_HOLD_RENAME``
set to a text, every ``os.replace`` of a temporary file (``*.tmp``, as
detfold.core.io.atomic_open names them) onto a path containing that text does not happen: the
process writes ``PID<TAB>TEMPORARY<TAB>TARGET`` to a file named by its pid in
``DETFOLD_TEST_HOLD_DIR`` and stops itself (SIGSTOP), so that the test can SIGKILL the run at
exactly that point. Without the variable nothing is changed. Nothing of this is in detfold.
"""

import os
import signal

PATTERN = os.environ.get("DETFOLD_TEST_HOLD_RENAME")

if PATTERN:
    _replace = os.replace

    def _held_replace(src, dst, *args, **kwargs):
        source, target = os.fspath(src), os.fspath(dst)
        if PATTERN in target and source.endswith(".tmp"):
            folder = os.environ["DETFOLD_TEST_HOLD_DIR"]
            pid = os.getpid()
            with open(os.path.join(folder, f".{pid}.part"), "w") as handle:
                handle.write(f"{pid}\t{source}\t{target}\n")
            os.rename(os.path.join(folder, f".{pid}.part"), os.path.join(folder, str(pid)))
            os.kill(pid, signal.SIGSTOP)  # the test kills the run now: the rename below never runs
        return _replace(src, dst, *args, **kwargs)

    os.replace = _held_replace
