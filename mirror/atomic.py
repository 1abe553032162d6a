"""
Atomic file replacement: the one write-then-rename helper for posts, objects and exports.

A reader sees either the old bytes or the new ones, never a mix; a killed writer leaves at most a
hidden temp file named ``.<name>.<12 hex>.tmp`` beside the target, which :data:`TEMP_NAME`
recognises so the commands that hold the store lock can sweep it.

Output trees (``--out DIR``, export folders) are written with a ``root``: every folder below it,
and the target itself, is opened relative to the folder above without following symlinks, so a
symlink planted anywhere inside the tree (even swapped in while mirror works) is refused, never
written through.

Posts, which a person may edit meanwhile, are replaced by :mod:`mirror.swap` on top of these.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from mirror.errors import StoreError

# What temp_name makes: ".<name>.<12 hex>.tmp"; ``name`` is the target's (maybe shortened) name.
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")
# Bytes kept from each end of a long name, so the temp name stays inside the 255-byte limit and
# keeps both the start and the extension the include globs look at.
_HALF_STEM = 100
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not hang the reader; O_NOCTTY: nor a terminal
# become its controlling one.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Why a hard link can fail where a copy works: another file system, or one without links.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def describe_os_error(exc: OSError, target: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"cannot write {target}: the disk is full; nothing was half-written"
    if exc.errno == errno.EDQUOT:
        return f"cannot write {target}: disk quota exceeded; nothing was half-written"
    if exc.errno == errno.EROFS:
        return f"cannot write {target}: the file system is read-only"
    return f"cannot write {target}: {exc.strerror or exc}"


def describe_kind(mode: int) -> str:
    """Name the file type in ``mode`` for a message: "a FIFO (named pipe)", "a folder", ..."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def _fit(chars: Sequence[str], budget: int) -> int:
    """How many of ``chars`` fit in ``budget`` bytes of the file system's encoding."""
    used = 0
    for count, char in enumerate(chars):
        used += len(os.fsencode(char))
        if used > budget:
            return count
    return len(chars)


def temp_name(name: str) -> str:
    if len(os.fsencode(name)) > 2 * _HALF_STEM:
        # Cut by bytes at character boundaries: 85 CJK characters already make 255 bytes.
        head = name[: _fit(name, _HALF_STEM)]
        tail_len = _fit(name[::-1], _HALF_STEM)
        name = f"{head}~{name[len(name) - tail_len :]}"
    return f".{name}.{secrets.token_hex(6)}.tmp"


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_at_most(fd: int, limit: int, hint: int = 0) -> bytes:
    """Read from ``fd`` until end of file or ``limit`` bytes; ``hint`` is the expected size."""
    chunks: list[bytes] = []
    total = 0
    # hint + 1 reads a file of the expected size and its end in two calls, without
    # allocating ``limit`` bytes for a small file.
    step = min(max(hint, 0) + 1, limit)
    while total < limit:
        chunk = os.read(fd, min(step, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        step = 1 << 16
    return b"".join(chunks)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refusal(shown: Path, root: Path, fd: int, name: str, exc: OSError) -> str:
    try:
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except OSError:
        return describe_os_error(exc, shown)
    if stat.S_ISLNK(mode):
        return f"refusing to write through {shown}: it is a symlink inside {root}"
    return f"refusing to write into {shown}: it is {describe_kind(mode)}, not a folder"


def _parts_below(root: Path, target: Path) -> tuple[str, ...]:
    try:
        parts = target.relative_to(root).parts
    except ValueError as exc:
        raise StoreError(f"refusing to write {target}: it is not inside {root}") from exc
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"refusing to write {target}: not a plain path inside {root}")
    return parts


@contextlib.contextmanager
def open_below(root: Path, parts: Sequence[str]) -> Iterator[int]:
    """
    Open the folder ``root/parts...`` and yield its descriptor, creating missing folders.

    ``root`` itself is followed (the user named it); each part below is opened relative to the
    one above with ``O_NOFOLLOW``, so no symlink inside ``root`` is ever gone through.

    Raises:
        StoreError: a part is a symlink or not a folder, or a folder cannot be made or opened.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise StoreError(describe_os_error(exc, root)) from exc
    try:
        here = root
        for part in parts:
            here = here / part
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                inner = os.open(part, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise StoreError(_refusal(here, root, fd, part, exc)) from exc
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def _existing(
    dir_fd: int | None, where: str, shown: Path, root: Path | None
) -> os.stat_result | None:
    """The file at ``where`` (not followed), None when absent; inside a root only a regular one."""
    try:
        found = os.stat(where, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(describe_os_error(exc, shown)) from exc
    if root is not None and not stat.S_ISREG(found.st_mode):
        what = describe_kind(found.st_mode)
        raise StoreError(
            f"refusing to write {shown}: it is {what} inside {root}, not a regular file"
        )
    return found


def write_temp(
    dir_fd: int | None,
    folder: Path,
    name: str,
    data: bytes,
    *,
    like: os.stat_result | None = None,
    fsync: bool = True,
) -> tuple[str, os.stat_result]:
    """
    Write ``data`` to a new temp file beside ``name``; return its name and what it is.

    ``dir_fd`` is the folder's descriptor (names are then relative to it), or None to use
    ``folder``'s path. The file gets ``like``'s mode (and, as root, owner).

    Raises:
        OSError: it could not be written; no temp file is left.
    """
    tmp = temp_name(name)
    where = tmp if dir_fd is not None else os.fspath(folder / tmp)
    # 0o666 rather than mkstemp's 0o600 so a new file gets the umask's usual mode.
    fd = os.open(where, _NEW_FLAGS, 0o666, dir_fd=dir_fd)
    try:
        if like is not None:
            os.fchmod(fd, stat.S_IMODE(like.st_mode))
            if os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.fchown(fd, like.st_uid, like.st_gid)
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
        made = os.fstat(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(where, dir_fd=dir_fd)
        raise
    os.close(fd)
    return tmp, made


def atomic_write(
    path: Path,
    data: bytes,
    *,
    fsync: bool = True,
    keep_mode: bool = True,
    root: Path | None = None,
) -> None:
    """
    Replace ``path`` with ``data`` so readers see either the old or the new bytes, never a mix.

    Without ``root`` a symlink is followed, so the link stays and its target changes. With
    ``root`` (an output tree: ``--out DIR``), ``path`` must lie inside it, missing folders are
    made, and a symlink or a non-regular file anywhere below ``root`` is refused. When
    ``keep_mode`` and the file exists, its mode (and, as root, its owner) carry over.

    Raises:
        StoreError: the file could not be written (``path`` is unchanged and no temp file is
            left), or a symlink is in the way.
    """
    if root is None:
        target = Path(os.path.realpath(path))
        _replace(None, target, target.name, data, fsync=fsync, keep_mode=keep_mode, root=None)
        return
    parts = _parts_below(root, path)
    with open_below(root, parts[:-1]) as dir_fd:
        _replace(dir_fd, path, parts[-1], data, fsync=fsync, keep_mode=keep_mode, root=root)


def _replace(
    dir_fd: int | None,
    target: Path,
    name: str,
    data: bytes,
    *,
    fsync: bool,
    keep_mode: bool,
    root: Path | None,
) -> None:
    folder = target.parent

    def at(entry: str) -> str:
        return entry if dir_fd is not None else os.fspath(folder / entry)

    old = _existing(dir_fd, at(name), target, root) if keep_mode or root is not None else None
    try:
        tmp, _made = write_temp(
            dir_fd, folder, name, data, like=old if keep_mode else None, fsync=fsync
        )
    except OSError as exc:
        raise StoreError(f"{describe_os_error(exc, target)}; {target} is unchanged") from exc
    try:
        if dir_fd is None:
            Path(at(tmp)).replace(at(name))
        else:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(at(tmp), dir_fd=dir_fd)
        if isinstance(exc, OSError):
            raise StoreError(f"{describe_os_error(exc, target)}; {target} is unchanged") from exc
        raise
    if fsync:
        try:
            if dir_fd is None:
                fsync_dir(folder)
            else:
                os.fsync(dir_fd)
        except OSError as exc:
            raise StoreError(f"wrote {target} but could not flush its folder: {exc}") from exc


def atomic_copy(source: Path, target: Path, *, root: Path, link: bool = False) -> str:
    """
    Put a copy (``link``: a hard link, copying where one is impossible) of ``source`` at ``target``.

    ``target`` lies inside the output tree ``root``, written as by :func:`atomic_write` with a
    root; a regular file already there is kept: of the same size it is this copy ("present"),
    of another size it is not mirror's to replace ("conflict").

    Returns:
        "present", "conflict", "linked" or "copied".

    Raises:
        FileNotFoundError: ``source`` does not exist (it may have been removed meanwhile).
        StoreError: ``target`` cannot be written, or a symlink is in the way.
    """
    parts = _parts_below(root, target)
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        with open_below(root, parts[:-1]) as dir_fd:
            name = parts[-1]
            old = _existing(dir_fd, name, target, root)
            if old is not None:
                # Another size: not an earlier copy of this object, so not mirror's to replace.
                return "present" if old.st_size == size else "conflict"
            return _copy_in(src, source, dir_fd, name, target, link)
    finally:
        os.close(src)


def _copy_in(src: int, source: Path, dir_fd: int, name: str, target: Path, link: bool) -> str:
    tmp = temp_name(name)
    try:
        linked = False
        if link:
            try:
                os.link(source, tmp, dst_dir_fd=dir_fd)
                linked = True
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
        if not linked:
            out = os.open(tmp, _NEW_FLAGS, 0o666, dir_fd=dir_fd)
            with os.fdopen(src, "rb", closefd=False) as reader, os.fdopen(out, "wb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(exc, FileNotFoundError):
            raise  # the source went (the link names it by path)
        if isinstance(exc, OSError):
            raise StoreError(describe_os_error(exc, target)) from exc
        raise
    return "linked" if linked else "copied"
