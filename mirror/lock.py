"""
The store lock: one writing command at a time per store.

``run``, ``fetch``, ``rewrite``, ``gc --apply`` and ``verify --repair`` hold
``<store>/mirror.lock`` while they write. The lock is an advisory ``flock`` on that file, so the
kernel releases it when its holder dies, however it dies (SIGKILL included): a lock left by a dead
process is simply free, and the next command takes it over and says so. The file also names its
holder (pid, command, start time) for the message a second command prints when it is refused.
``serve`` does not take it: it only adds objects and rows, which the manifest's own locking makes
safe beside a running job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mirror.errors import ExitStatus, MirrorError, StoreError

log = logging.getLogger(__name__)

LOCK_NAME = "mirror.lock"


class LockedError(MirrorError):
    """Another mirror holds the store lock: this command did not run (exit 3, not 1)."""

    exit_status = ExitStatus.FAILED


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """``with StoreLock(root, "mirror run"):`` holds the lock, or raises :class:`LockedError`."""

    def __init__(self, root: Path, command: str) -> None:
        self.path = root / LOCK_NAME
        self.command = command
        self._fd = -1

    def _holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> None:
        """
        Take the lock at once or fail; never wait.

        Raises:
            LockedError: another live process holds it (the message names the lock file).
            StoreError: the lock file cannot be created.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the store lock {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._holder()
            since = holder.get("since")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
            raise LockedError(
                f"the store is locked by another mirror (pid {holder.get('pid', '?')}, "
                f"`{holder.get('command', '?')}`, since {when}): {self.path}; "
                "wait for it to finish, or stop it"
            ) from None
        previous = self._holder()
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
            log.warning("took over the store lock %s left by pid %d, which is gone", self.path, pid)
        record = {"pid": os.getpid(), "command": self.command, "since": time.time()}
        # In place, not by rename: the flock lives on this inode.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go; the file stays (removing it would race with a new holder)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def command_line() -> str:
    """The command as typed, shortened, for the lock's holder record."""
    text = " ".join(["mirror", *sys.argv[1:]])
    return text if len(text) <= 200 else text[:197] + "..."
