"""Named loggers and the one place logging is configured."""

from __future__ import annotations

import logging
import sys

LOGGERS = ("mirror.scan", "mirror.fetch", "mirror.store", "mirror.serve", "mirror.access")


def configure_logging(verbosity: int) -> None:
    """
    Send mirror's log records to stderr, never stdout (stdout carries data such as ``--json``).

    Args:
        verbosity: -1 for errors only (``-q``), 0 for warnings, 1 for info, 2+ for debug.
    """
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mirror: %(levelname)s: %(message)s"))
    root = logging.getLogger("mirror")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
