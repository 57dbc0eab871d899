"""The fusion kernels compiled ahead of time: :mod:`detfold.ensemble._fusion_kernels` built once (numba's
``pycc``) into a plain extension module, so a short process such as ``detfold ensemble`` runs
them without importing numba and loading its cache (about 0.4 s of a 0.8 s command).

    .venv/bin/python -m detfold.ensemble._aot     # scripts/setup.sh does this; quick when up to date

The module's name carries a hash of the kernels' source and of the numpy version, so an edited
kernel file or another numpy never runs a stale build: :func:`use_compiled` then keeps the JIT
kernels, which compute the same numbers (tests/ensemble/test_fusion.py compares the two). Only short
processes ask for it (``detfold ensemble``); long ones (the ensemble search) keep the JIT
kernels, compiled for the host CPU. ``DETFOLD_JIT=1`` refuses the compiled module.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent

# every kernel with the one signature fusion calls it with (int64 indices, float64 values)
SIGNATURES = {
    "sort_groups": "Tuple((i8[:], i8[:]))(i8[:], f8[:])",
    "order_within_images": "i8[:](i8[:], f8[:], i8)",
    "to_xywh_abs": "Tuple((f8[:,:], f8[:]))(f8[:,:], i8[:], f8[:,:], f8[:], i8, i8)",
    "wbf_groups": "Tuple((f8[:,:], f8[:,:], i8[:], i8[:]))(i8[:], i8[:], f8[:,:], f8[:], i8[:], f8[:], i8, f8, b1)",
    "nmw_groups": "Tuple((f8[:,:], f8[:], i8[:], i8[:]))(i8[:], i8[:], f8[:,:], f8[:], f8)",
    "nms_groups": "i8[:](i8[:], i8[:], f8[:,:], f8)",
    "soft_nms_groups": "Tuple((i8[:], f8[:]))(i8[:], i8[:], f8[:,:], f8[:], f8, f8, f8, i8)",
}

_KERNELS: ModuleType | None = None


def module_name() -> str:
    """``_fusion_aot_<hash>``: the hash of the kernels' source, their signatures and numpy's version."""
    import numpy as np

    digest = hashlib.sha256((HERE / "_fusion_kernels.py").read_bytes())
    digest.update(repr(sorted(SIGNATURES.items())).encode())
    digest.update(np.__version__.encode())
    return f"_fusion_aot_{digest.hexdigest()[:16]}"


def fusion_kernels() -> ModuleType:
    """The kernels fusion runs: the JIT ones (:mod:`detfold.ensemble._fusion_kernels`, compiled for this
    CPU, about 5 % faster in a long search), or the compiled module after :func:`use_compiled`."""
    if _KERNELS is None:
        from detfold.ensemble import _fusion_kernels

        return _fusion_kernels
    return _KERNELS


def use_compiled() -> bool:
    """Run the compiled module from now on, where it is built for the current kernels (a short
    process: no numba import); False, and the JIT kernels, where not (or ``DETFOLD_JIT=1``)."""
    global _KERNELS
    if os.environ.get("DETFOLD_JIT", "") not in ("", "0"):
        return False
    try:
        _KERNELS = importlib.import_module(f"detfold.{module_name()}")
    except ImportError:
        log.debug("fusion kernels: no compiled module %s, the JIT ones run", module_name())
        return False
    return True


def build(out_dir: Path = HERE) -> Path:
    """Compile the kernels into ``out_dir`` (earlier builds there removed); the module's path."""
    import warnings

    from numba.core.errors import NumbaPendingDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)
        from numba.pycc import CC

        from detfold.ensemble import _fusion_kernels as kernels

        name = module_name()
        cc = CC(name)
        cc.output_dir = str(out_dir)
        cc.verbose = False
        for function, signature in SIGNATURES.items():
            cc.export(function, signature)(getattr(kernels, function).py_func)
        for old in out_dir.glob("_fusion_aot_*"):
            old.unlink()
        cc.compile()
    built = sorted(out_dir.glob(f"{name}.*"))
    if not built:
        raise RuntimeError(f"numba pycc wrote no module {name} into {out_dir}")
    return built[0]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name = module_name()
    present = sorted(HERE.glob(f"{name}.*"))
    if present:
        log.info("fusion kernels: compiled module up to date (%s)", present[0].name)
        return 0
    log.info("fusion kernels: compiling %s ahead of time (about 30 s)", name)
    path = build()
    log.info("fusion kernels: wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
