"""Named loggers and the one place logging is configured."""

from __future__ import annotations

import logging
import sys

from mirror.errors import ConfigError

ACCESS = "mirror.access"
LOGGERS = ("mirror.scan", "mirror.fetch", "mirror.store", "mirror.serve", ACCESS)


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


def configure_access_log(target: str) -> bool:
    """
    Point ``serve``'s access log (logger ``mirror.access``) at ``target``; tell whether it is on.

    Call it after :func:`configure_logging`, in each process that answers HTTP requests.

    Args:
        target: ``serve.access_log``: ``"-"`` for stderr, a file to append to (flushed after
            every line, so several workers can share it), or ``""`` for off, unless ``-v`` set
            the ``mirror`` logger to INFO, which writes it to stderr. Workers are started
            without ``-v``, so under ``--workers`` only a configured target turns it on.

    Raises:
        ConfigError: the file cannot be opened for appending.
    """
    access = logging.getLogger(ACCESS)
    for old in list(access.handlers):
        access.removeHandler(old)
        old.close()
    if not target and not logging.getLogger("mirror").isEnabledFor(logging.INFO):
        access.setLevel(logging.WARNING)  # access lines are INFO records
        access.propagate = True
        return False
    handler: logging.Handler
    if target in ("", "-"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = logging.FileHandler(target, mode="a", encoding="utf-8")
        except OSError as exc:
            problem = f"cannot append to {target}: {exc.strerror or exc}"
            raise ConfigError("serve.access_log", problem) from exc
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    # The line is the whole record: no "mirror: INFO:" prefix, and not a second copy via "mirror".
    access.propagate = False
    return True
