"""Logging set-up shared by every rule script and the CLI."""

from __future__ import annotations

import logging
import sys
from types import TracebackType

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to(path: str | None = None) -> None:
    """Send the library's log (and uncaught tracebacks) to ``path`` and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format=FORMAT, handlers=handlers, force=True)

    def log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        logging.getLogger("detfold").critical("failed: %s", exc, exc_info=(exc_type, exc, tb))

    sys.excepthook = log_uncaught
