"""
Atomic file replacement: the one write-then-rename helper for posts, objects and exports.

A reader sees either the old bytes or the new ones, never a mix; a killed writer leaves at most a
hidden temp file named ``.<name>.<12 hex>.tmp`` beside the target, which :data:`TEMP_NAME`
recognises so the commands that hold the store lock can sweep it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from pathlib import Path

from mirror.errors import StoreError

# What temp_name makes: ".<name>.<12 hex>.tmp".
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")
# Room for the random part and suffix inside the usual 255-byte name limit.
_MAX_TEMP_STEM = 200


def describe_os_error(exc: OSError, target: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"cannot write {target}: the disk is full; nothing was half-written"
    if exc.errno == errno.EDQUOT:
        return f"cannot write {target}: disk quota exceeded; nothing was half-written"
    if exc.errno == errno.EROFS:
        return f"cannot write {target}: the file system is read-only"
    return f"cannot write {target}: {exc.strerror or exc}"


def temp_name(name: str) -> str:
    return f".{name[:_MAX_TEMP_STEM]}.{secrets.token_hex(6)}.tmp"


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, fsync: bool = True, keep_mode: bool = True) -> None:
    """
    Replace ``path`` with ``data`` so readers see either the old or the new bytes, never a mix.

    A symlink is followed, so the link stays and its target changes. When ``keep_mode`` and the
    file exists, its mode (and, as root, its owner) carry over to the new file.

    Raises:
        StoreError: the file could not be written; ``path`` is unchanged and no temp file is left.
    """
    target = Path(os.path.realpath(path))
    folder = target.parent
    tmp = folder / temp_name(target.name)
    old: os.stat_result | None = None
    if keep_mode:
        with contextlib.suppress(FileNotFoundError):
            old = target.stat()
    fd = -1
    replaced = False
    try:
        # 0o666 rather than mkstemp's 0o600 so a new file gets the umask's usual mode.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if old is not None:
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
            if os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.fchown(fd, old.st_uid, old.st_gid)
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        tmp.replace(target)
        replaced = True
        if fsync:
            fsync_dir(folder)
    except BaseException as exc:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        if not replaced:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError):
            if replaced:
                raise StoreError(f"wrote {target} but could not flush its folder: {exc}") from exc
            raise StoreError(f"{describe_os_error(exc, target)}; {target} is unchanged") from exc
        raise
