"""
A staging folder: temp files that downloads stream into before a store commits them.

Each file is named ``<pid>.<12 hex>.<host>.part``: the writer's pid (and host, since stores can
sit on a volume shared by containers with their own pid namespaces) lets :meth:`Staging.sweep`
remove a dead writer's files at once, while a live writer's go only once they are old. The folder
holds nothing else of value, but the sweep still removes only names of that form.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, cast

from mirror.errors import StoreError
from mirror.store.base import Staged

STAGED_NAME = re.compile(r"(?P<pid>[0-9]+)\.[0-9a-f]{12}\.(?P<host>[A-Za-z0-9-]{1,64})\.part")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class Staging:
    """
    Temp files in ``folder``, created on first use with ``mode`` for the folder.

    ``file_mode`` is the files' mode: a local store renames a staged file into place, so it is
    the object's mode too. ``private`` (for a folder in a shared temp dir) refuses a folder that
    is a symlink, is not this user's, or that others may write: whoever could swap a staged file
    between its verification and its upload could have unverified bytes published.
    """

    def __init__(
        self,
        folder: Path,
        *,
        mode: int = 0o755,
        file_mode: int = 0o644,
        private: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.mode = mode
        self.file_mode = file_mode
        self.private = private
        self.clock = clock
        self.host = _host()
        self._checked = False

    def _create(self) -> tuple[Path, int]:
        name = f"{os.getpid()}.{secrets.token_hex(6)}.{self.host}.part"
        path = self.folder / name
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            if not self._checked:
                self.folder.mkdir(mode=self.mode, parents=True, exist_ok=True)
                self._check_folder()
                self._checked = True
            try:
                return path, os.open(path, flags, self.file_mode)
            except FileNotFoundError:
                # Removed since (a cleanup of the whole store?): make it again.
                self.folder.mkdir(mode=self.mode, parents=True, exist_ok=True)
                self._check_folder()
                return path, os.open(path, flags, self.file_mode)
        except OSError as exc:
            raise StoreError(f"cannot stage in {self.folder}: {exc.strerror or exc}") from exc

    def _check_folder(self) -> None:
        if not self.private:
            return
        info = self.folder.lstat()
        ok = (
            stat.S_ISDIR(info.st_mode)
            and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        )
        if not ok:
            raise StoreError(
                f"cannot stage in {self.folder}: not a private folder of this user "
                "(a symlink, another owner, or writable by others); set store.staging"
            )

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Staged]:
        """
        Yield a fresh staged file; on exit close it and remove it unless it was committed.

        Raises:
            StoreError: the staging folder cannot be created or written.
        """
        path, fd = self._create()
        staged = Staged(path, cast("BinaryIO", os.fdopen(fd, "w+b")))
        try:
            yield staged
        finally:
            staged.file.close()
            if not staged.committed:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def sweep(self, older_than: float) -> int:
        """
        Remove staged files of dead writers, and of live ones older than ``older_than`` seconds.

        A file whose name carries another host's name may belong to a live writer in another
        pid namespace, so only its age counts. Returns how many files went.

        Raises:
            StoreError: the folder exists but cannot be listed.
        """
        cutoff = self.clock() - older_than
        removed = 0
        try:
            with os.scandir(self.folder) as entries:
                names = [entry.name for entry in entries]
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StoreError(f"cannot list {self.folder}: {exc.strerror or exc}") from exc
        for name in names:
            match = STAGED_NAME.fullmatch(name)
            if match is None:
                continue
            path = self.folder / name
            dead = match["host"] == self.host and not _alive(int(match["pid"]))
            with contextlib.suppress(FileNotFoundError):
                if dead or path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
        return removed
