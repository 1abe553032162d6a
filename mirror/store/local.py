"""
The local backend: a content-addressed folder, async, behind :class:`~mirror.store.ObjectStore`.

Layout (public and permanent: published sites link to it)::

    <root>/objects/<first two hex of sha256>/<sha256>.<ext>
    <root>/.staging/<pid>.<12 hex>.<host>.part      bodies being downloaded

Staging sits inside the root so that a commit is a rename on one file system: a reader sees no
object or the whole one, and a killed writer leaves only a staged file, which
:meth:`FolderStore.cleanup` removes at once when its pid is dead. Durability ``"crash"`` relies
on the rename alone; ``"power"`` fsyncs the body and the folders that name it first.

Small reads stay on the event loop: measured on this machine, reading a cached file of 4-256 KB
took 50-275 us synchronously against 260-455 us through ``asyncio.to_thread`` (the hop costs
about 200 us), and only from about 1 MB did the two meet. So a read of at most
:data:`SYNC_READ` bytes is synchronous and a larger one hops to a thread; :meth:`stream` reads
chunks of that size. Stats, renames and unlinks are single syscalls and stay on the loop too,
except the fsyncs of ``"power"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Self

from mirror.atomic import TEMP_NAME, describe_os_error, fsync_dir, write_all
from mirror.errors import StoreError
from mirror.models import StoredObject
from mirror.store.base import SHARD, ObjectInfo, Staged, object_name, parse_name
from mirror.store.staging import Staging

__all__ = ["DURABILITIES", "SYNC_READ", "FolderStore", "write_all"]

DURABILITIES = ("crash", "power")
SYNC_READ = 256 * 1024


class FolderStore:
    """Objects in a local folder; see the module docstring for the layout and the rules."""

    def __init__(
        self, root: Path, durability: str = "crash", *, clock: Callable[[], float] = time.time
    ) -> None:
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {DURABILITIES}, not {durability!r}")
        self.root = root
        self.objects_dir = root / "objects"
        # The read path names files as strings: pathlib parses and interns every part of every
        # new Path, which costs a serve hit more than its stat().
        self._objects = str(self.objects_dir)
        self.durability = durability
        self.description = str(root.absolute())
        self._staging = Staging(root / ".staging", clock=clock)

    async def __aenter__(self) -> Self:
        # Nothing to open, and folders are made on the first write: a reader (serve, report)
        # must work on a store it may not write, or that does not exist yet.
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def key(self, sha256: str, ext: str) -> str:
        """Return ``objects/<ab>/<sha256>.<ext>``, the object's path relative to the root."""
        return f"objects/{object_name(sha256, ext)}"

    def public_url(self, sha256: str, ext: str) -> str | None:
        """Return None: a folder has no public URL of its own (``rewrite.base_url`` says)."""
        object_name(sha256, ext)
        return None

    def local_file(self, sha256: str, ext: str) -> Path:
        """Return where the object's file is (or would be); :meth:`stat` tells whether it is."""
        return Path(self._file(sha256, ext))

    def _file(self, sha256: str, ext: str) -> str:
        return f"{self._objects}/{object_name(sha256, ext)}"

    def staging(self) -> AbstractAsyncContextManager[Staged]:
        """Return a context giving a staged file in ``<root>/.staging``; see Staging.open."""
        return self._staging.open()

    async def commit(self, staged: Staged, sha256: str, ext: str, mime: str) -> StoredObject:
        """
        Rename the staged file into place, unless an object of the same size is there already.

        Raises:
            StoreError: the store cannot be written (a full disk, a read-only file system...).
        """
        target = self.local_file(sha256, ext)
        try:
            staged.file.flush()
            size = os.fstat(staged.file.fileno()).st_size
        except OSError as exc:
            raise StoreError(describe_os_error(exc, staged.path)) from exc
        stored = StoredObject(sha256, ext, size, self.key(sha256, ext))
        if self._size(target) == size:
            return stored
        if self.durability == "power":
            # fsync can take milliseconds: off the loop, like every "power" flush.
            await asyncio.to_thread(self._move, staged, target, True)
        else:
            self._move(staged, target, False)
        return stored

    def _move(self, staged: Staged, target: Path, power: bool) -> None:
        try:
            if power:
                os.fsync(staged.file.fileno())
            try:
                staged.path.replace(target)
            except FileNotFoundError:
                if not staged.path.exists():
                    raise
                # Creating the shard only on a miss saves a syscall on every other commit.
                self._make_shard(target.parent, power)
                staged.path.replace(target)
            staged.committed = True
            if power:
                fsync_dir(target.parent)
        except OSError as exc:
            raise StoreError(describe_os_error(exc, target)) from exc

    def _make_shard(self, shard: Path, power: bool) -> None:
        made_objects = not self.objects_dir.is_dir()
        shard.mkdir(parents=True, exist_ok=True)
        if power:
            # A new folder's name lives in its parent; flush that too or the object can vanish.
            fsync_dir(self.objects_dir)
            if made_objects:
                fsync_dir(self.root)

    def _size(self, target: Path | str) -> int | None:
        try:
            return os.stat(target).st_size  # noqa: PTH116 - a str path
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot check {target}: {exc.strerror or exc}") from exc

    async def put(self, data: bytes, sha256: str, ext: str, mime: str) -> StoredObject:
        """
        Store ``data`` through staging, unless an object of the same size is there already.

        Raises:
            StoreError: the store cannot be written.
        """
        if self._size(self.local_file(sha256, ext)) == len(data):
            return StoredObject(sha256, ext, len(data), self.key(sha256, ext))
        async with self.staging() as staged:
            try:
                write_all(staged.file.fileno(), data)
            except OSError as exc:
                raise StoreError(describe_os_error(exc, self.local_file(sha256, ext))) from exc
            return await self.commit(staged, sha256, ext, mime)

    async def stat(self, sha256: str, ext: str) -> ObjectInfo | None:
        """Return the object's size and mtime, or None when its file is not there."""
        target = self._file(sha256, ext)
        try:
            info = os.stat(target)  # noqa: PTH116 - a str path
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot check {target}: {exc.strerror or exc}") from exc
        return ObjectInfo(sha256, ext, info.st_size, info.st_mtime)

    async def read(self, sha256: str, ext: str, start: int = 0, length: int | None = None) -> bytes:
        """
        Return ``length`` bytes (all, when None) from ``start``; past the end gives b"".

        Raises:
            StoreError: the object is missing or unreadable.
        """
        target = self._file(sha256, ext)
        if length is not None and length <= SYNC_READ:
            return _pread(target, start, length)
        size = self._size(target)
        if size is None:
            raise StoreError(f"cannot read {target}: no such object")
        want = max(0, size - start) if length is None else length
        if want <= SYNC_READ:
            return _pread(target, start, want)
        return await asyncio.to_thread(_pread, target, start, want)

    async def stream(
        self, sha256: str, ext: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """
        Yield the bytes :meth:`read` would return, :data:`SYNC_READ` at a time.

        Raises:
            StoreError: the object is missing or unreadable.
        """
        target = self._file(sha256, ext)
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise _read_error(target, exc) from exc
        try:
            left = os.fstat(fd).st_size - start if length is None else length
            offset = start
            while left > 0:
                chunk = os.pread(fd, min(left, SYNC_READ), offset)
                if not chunk:
                    break
                offset += len(chunk)
                left -= len(chunk)
                yield chunk
        except OSError as exc:
            raise StoreError(f"cannot read {target}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    async def delete(self, sha256: str, ext: str) -> bool:
        """
        Delete the object; tell whether it existed.

        Raises:
            StoreError: the file exists but cannot be removed.
        """
        target = self.local_file(sha256, ext)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot remove {target}: {exc.strerror or exc}") from exc
        return True

    async def objects(self) -> AsyncIterator[ObjectInfo]:
        """
        Yield every object in key order, skipping temp and stray files.

        Raises:
            StoreError: a folder of the store cannot be listed.
        """
        for shard in await asyncio.to_thread(self._shards):
            # One thread hop per shard: a shard of thousands of objects costs as many stats.
            for info in await asyncio.to_thread(_list_shard, shard):
                yield info

    async def cleanup(self, *, older_than: float) -> int:
        """
        Remove staged files of dead writers, and temp files older than ``older_than`` seconds.

        Temp files beside objects (``.<name>.<12 hex>.tmp``) are what the synchronous store
        leaves; they go by age alone. Returns how many files went.

        Raises:
            StoreError: a folder of the store cannot be listed.
        """
        return await asyncio.to_thread(self._cleanup, older_than)

    def _cleanup(self, older_than: float) -> int:
        removed = self._staging.sweep(older_than)
        cutoff = self._staging.clock() - older_than
        for shard in self._shards():
            with os.scandir(shard) as entries:
                for entry in entries:
                    if TEMP_NAME.fullmatch(entry.name) is None:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                            Path(entry.path).unlink()
                            removed += 1
        return removed

    def _shards(self) -> list[Path]:
        try:
            with os.scandir(self.objects_dir) as entries:
                names = sorted(
                    entry.name
                    for entry in entries
                    if entry.is_dir(follow_symlinks=False) and SHARD.fullmatch(entry.name)
                )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {self.objects_dir}: {exc.strerror or exc}") from exc
        return [self.objects_dir / name for name in names]


def _list_shard(shard: Path) -> list[ObjectInfo]:
    found = []
    try:
        with os.scandir(shard) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                parsed = parse_name(shard.name, entry.name)
                if parsed is None or not entry.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    info = entry.stat(follow_symlinks=False)
                    found.append(ObjectInfo(*parsed, info.st_size, info.st_mtime))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list {shard}: {exc.strerror or exc}") from exc
    return found


def _pread(target: str, start: int, length: int) -> bytes:
    if length <= 0:
        if not os.path.isfile(target):  # noqa: PTH113 - a str path
            raise StoreError(f"cannot read {target}: no such object")
        return b""
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _read_error(target, exc) from exc
    try:
        parts = []
        while length > 0:
            chunk = os.pread(fd, length, start)
            if not chunk:
                break
            parts.append(chunk)
            start += len(chunk)
            length -= len(chunk)
        return b"".join(parts)
    except OSError as exc:
        raise StoreError(f"cannot read {target}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _read_error(target: Path | str, exc: OSError) -> StoreError:
    if isinstance(exc, FileNotFoundError):
        return StoreError(f"cannot read {target}: no such object")
    return StoreError(f"cannot read {target}: {exc.strerror or exc}")
