"""The same fold model on any x86-64 processor: CPU math pinned for ``deterministic: true``.

PyTorch's own vectorised kernels and oneDNN's convolutions pick their instruction set when
they first run (AVX-512 where the processor has it, else AVX2), and kernels of different
instruction sets round differently: the same code, data and seed then give other weights on
another processor. How the work is split among threads changes the sums too. So with
``deterministic: true`` detfold caps PyTorch (``ATEN_CPU_CAPABILITY``), oneDNN
(``ONEDNN_MAX_CPU_ISA``) and MKL (``MKL_CBWR``) at AVX2, which every x86-64 processor since
2013 has, before torch is imported, and uses exactly the configured thread count, not fewer on
a machine with fewer cores. What still may differ across machines: docs/training.md.
"""

from __future__ import annotations

import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

CPU_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
X86_64 = ("x86_64", "amd64")


def pin_cpu_math() -> bool:
    """Set :data:`CPU_PINS` in this process's environment (inherited by the processes it
    starts); True when pinned, False (with a warning) on a processor that is not x86-64.
    Raises when torch was imported earlier with other settings: they would not apply."""
    if platform.machine().lower() not in X86_64:
        log.warning("deterministic: CPU math is pinned on x86-64 only, not on %s", platform.machine())
        return False
    late = [name for name, value in CPU_PINS.items() if os.environ.get(name) != value and "torch" in sys.modules]
    if late:
        raise RuntimeError(f"deterministic: {late} must be set before torch is imported (already imported here)")
    for name, value in CPU_PINS.items():
        if os.environ.get(name, value) != value:
            log.info("deterministic: %s=%s replaced by %s", name, os.environ[name], value)
        os.environ[name] = value
    log.info("deterministic: CPU math pinned to %s", ", ".join(f"{k}={v}" for k, v in CPU_PINS.items()))
    return True
