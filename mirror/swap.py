"""
Compare-and-swap for files a person may edit while mirror rewrites them (posts).

:func:`replace_unchanged` writes the new bytes beside the file, checks right before the swap that
the name still leads to the file it read, unchanged, swaps the new file in with
``renameat2(RENAME_EXCHANGE)`` so the old one stays at hand under the temp name, and checks it
again: an edit that landed during the swap is swapped back in place, never lost. Where the file
system cannot exchange (it then answers EINVAL), a plain rename is used and the old file's bytes
are read back through the descriptor held since the first check.

What no rename can catch: a writer that opened the old file before the swap and writes to it
after the last check; that write lands in a file no name leads to any more. A writer that saves
by rename, or opens the file after the swap, loses nothing (its version simply wins).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from mirror.atomic import (
    DIR_FLAGS,
    READ_FLAGS,
    describe_kind,
    describe_os_error,
    read_at_most,
    write_temp,
)
from mirror.errors import StoreError

# Where an edit that could not be put back in place is kept: "<name>.mirror-conflict[-N]".
CONFLICT_SUFFIX = ".mirror-conflict"
_RENAME_EXCHANGE = 2
# What renameat2 answers where the kernel, libc or file system has no RENAME_EXCHANGE.
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    func = getattr(libc, "renameat2", None)  # glibc 2.28+
    if func is None:
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return cast("Callable[..., int]", func)


def exchange(dir_fd: int, first: str, second: str) -> bool:
    """
    Swap the files named ``first`` and ``second`` in the folder ``dir_fd`` in one step.

    Returns:
        False, having changed nothing, where the kernel, libc or file system cannot.

    Raises:
        OSError: the swap failed for another reason (one of the names is missing, ...).
    """
    func = _renameat2()
    if func is None:
        return False
    if func(dir_fd, os.fsencode(first), dir_fd, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), second)


@dataclass(frozen=True, slots=True)
class Replaced:
    """How :func:`replace_unchanged` ended: ``done``, or why not and where an edit was kept."""

    done: bool
    why: str = ""
    kept: Path | None = None


_CHANGED = "it changed on disk while mirror worked on it"
_RACED = "it was edited while mirror replaced it"


def _same_file(first: os.stat_result, second: os.stat_result) -> bool:
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _stamp(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def replace_unchanged(
    path: Path,
    expected: bytes,
    data: bytes,
    *,
    fsync: bool = True,
    before_replace: Callable[[], object] | None = None,
) -> Replaced:
    """
    Replace ``path`` with ``data`` only while it holds ``expected``, losing no edit made meanwhile.

    The file is held open from the first check on. Right before the swap its name must still
    lead to the file held, unchanged (size, mtime); right after it, the old file (at the temp
    name, after an exchange) must be that same file, unchanged and still holding ``expected``.
    When that last check fails, the old file, edit included, is swapped back (without
    RENAME_EXCHANGE: its bytes are written back) and ``done`` is False. A symlink is followed:
    the link stays and its target changes. ``before_replace`` runs between the last check and
    the swap (tests edit the file there, the worst moment).

    Raises:
        StoreError: the file cannot be read or written (a full disk, no permission).
    """
    target = Path(os.path.realpath(path))
    try:
        dir_fd = os.open(target.parent, DIR_FLAGS)
    except OSError as exc:
        raise StoreError(f"cannot open {target.parent}: {exc.strerror or exc}") from exc
    try:
        try:
            fd = os.open(target.name, READ_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:
            return Replaced(False, "it was removed while mirror worked on it")
        except OSError as exc:
            raise StoreError(f"cannot read {target} again: {exc.strerror or exc}") from exc
        try:
            return _swap(dir_fd, fd, target, expected, data, fsync, before_replace)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _swap(
    dir_fd: int,
    fd: int,
    target: Path,
    expected: bytes,
    data: bytes,
    fsync: bool,
    before_replace: Callable[[], object] | None,
) -> Replaced:
    name = target.name
    held = os.fstat(fd)
    if not stat.S_ISREG(held.st_mode):
        return Replaced(False, f"it is now {describe_kind(held.st_mode)}")
    if read_at_most(fd, len(expected) + 1, held.st_size) != expected:
        return Replaced(False, _CHANGED)
    try:
        tmp, ours = write_temp(dir_fd, target.parent, name, data, like=held, fsync=fsync)
    except OSError as exc:
        raise StoreError(f"{describe_os_error(exc, target)}; {target} is unchanged") from exc
    swapped = False
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not _same_file(now, held) or _stamp(os.fstat(fd)) != _stamp(held):
            os.unlink(tmp, dir_fd=dir_fd)
            return Replaced(False, _CHANGED)
        if before_replace is not None:
            before_replace()
        swapped = exchange(dir_fd, tmp, name)
        if not swapped:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        if not swapped:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(exc, OSError):
            raise StoreError(f"{describe_os_error(exc, target)}; {target} is unchanged") from exc
        raise
    try:
        return _settle(dir_fd, fd, target, held, tmp, ours, expected, fsync, swapped)
    except OSError as exc:
        raise StoreError(
            f"replaced {target} but could not check it: {exc.strerror or exc}"
        ) from exc


def _settle(
    dir_fd: int,
    fd: int,
    target: Path,
    held: os.stat_result,
    tmp: str,
    ours: os.stat_result,
    expected: bytes,
    fsync: bool,
    swapped: bool,
) -> Replaced:
    """After the swap: keep it when the old file is as checked, else put the edit back."""
    os.lseek(fd, 0, os.SEEK_SET)
    intact = _stamp(os.fstat(fd)) == _stamp(held)
    intact = intact and read_at_most(fd, len(expected) + 1, len(expected)) == expected
    if swapped:
        intact = intact and _same_file(os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False), held)
    if intact:
        if swapped:
            os.unlink(tmp, dir_fd=dir_fd)
        if fsync:
            os.fsync(dir_fd)
        return Replaced(True)
    if swapped:
        return _swap_back(dir_fd, target, tmp, ours)
    return _write_back(dir_fd, fd, target, ours, fsync)


def _keep(dir_fd: int, entry: str, name: str) -> str:
    """Give ``entry`` a second, lasting name beside ``name`` (no sweep removes it); return it."""
    for number in range(100):
        kept = name + CONFLICT_SUFFIX + (f"-{number}" if number else "")
        try:
            os.link(entry, kept, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            continue
        return kept
    raise OSError(errno.EEXIST, f"{name}{CONFLICT_SUFFIX}-0 to -99 all exist")


def _swap_back(dir_fd: int, target: Path, tmp: str, ours: os.stat_result) -> Replaced:
    name = target.name
    # A second name first: killed between here and the end, the edit still outlives the
    # next run's sweep of temp files.
    kept = _keep(dir_fd, tmp, name)
    if not exchange(dir_fd, tmp, name):
        raise OSError(errno.ENOTSUP, "the swap back was refused", name)
    theirs: Path | None = None
    if not _same_file(os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False), ours):
        # Someone replaced the post in between the two swaps: keep theirs as well.
        theirs = target.parent / _keep(dir_fd, tmp, name)
    os.unlink(tmp, dir_fd=dir_fd)
    back = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    first: Path | None = None
    if _same_file(back, os.stat(kept, dir_fd=dir_fd, follow_symlinks=False)):
        os.unlink(kept, dir_fd=dir_fd)
        why = f"{_RACED}; the edit is back in place"
    else:
        first = target.parent / kept
        why = f"{_RACED}; the edit is kept as {first}"
    if theirs is not None:
        why += f"; a version saved meanwhile is kept as {theirs}"
    return Replaced(False, why, first or theirs)


def _write_back(dir_fd: int, fd: int, target: Path, ours: os.stat_result, fsync: bool) -> Replaced:
    """Without RENAME_EXCHANGE the old file is gone from the folder: write its bytes back."""
    name = target.name
    os.lseek(fd, 0, os.SEEK_SET)
    edited = read_at_most(fd, 1 << 62, os.fstat(fd).st_size)
    tmp, _made = write_temp(dir_fd, target.parent, name, edited, like=os.fstat(fd), fsync=fsync)
    if _same_file(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), ours):
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return Replaced(False, f"{_RACED}; the edit is back in place")
    kept = _keep(dir_fd, tmp, name)
    os.unlink(tmp, dir_fd=dir_fd)
    shown = target.parent / kept
    return Replaced(False, f"{_RACED}; the edit is kept as {shown}", shown)
