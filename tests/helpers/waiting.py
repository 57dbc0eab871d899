"""Waiting in tests: poll for a condition with a deadline, never sleep and assume."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    what: str,
    timeout: float,
    proc: subprocess.Popen | None = None,
    stop: Callable[[], None] | None = None,
    poll_s: float = 0.2,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that. Fails the test,
    naming ``what``, when ``timeout`` seconds pass first or when ``proc`` ends first; ``stop``
    (e.g. killing what the test started) is called before failing on a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            if stop is not None:
                stop()
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll_s)
