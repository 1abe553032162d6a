"""
The synchronous local store that the callers use until they move to :mod:`mirror.store.local`.

Moved here unchanged from the old ``mirror/store/local.py`` (its layout, atomicity and
``cleanup_temp`` included) and still importable as ``mirror.store.LocalStore``; the async
:class:`~mirror.store.local.FolderStore` keeps the same layout and reads what this one wrote.

Layout (public and permanent: published sites link to it)::

    <root>/objects/<first two hex of sha256>/<sha256>.<ext>

An object's name depends only on its bytes, so the same image reached through many URLs is stored
once. Writers create ``.<sha256>.<ext>.<random>.tmp`` in the object's own folder and rename it into
place; the leading dot and the ``.tmp`` suffix keep a temp file left by a killed process out of
:meth:`LocalStore.iter_objects`, and :meth:`LocalStore.cleanup_temp` removes stale ones.

Durability ``"crash"`` survives a killed process (a rename is atomic); ``"power"`` also fsyncs
each object and the folders that name it, so it survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from mirror.atomic import TEMP_NAME, describe_os_error, fsync_dir, temp_name
from mirror.errors import StoreError
from mirror.models import StoredObject
from mirror.store import local

DURABILITIES = ("crash", "power")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXT = re.compile(r"[a-z0-9]{1,10}")
_SHARD = re.compile(r"[0-9a-f]{2}")
_OBJECT_NAME = re.compile(r"(?P<sha>[0-9a-f]{64})\.(?P<ext>[a-z0-9]{1,10})")


def _check_key(sha256: str, ext: str) -> None:
    # Both end up in a path; a malformed one must never escape the objects folder.
    if _SHA256.fullmatch(sha256) is None:
        raise ValueError(f"not a lowercase hex sha256: {sha256!r}")
    if _EXT.fullmatch(ext) is None:
        raise ValueError(f"not a file extension: {ext!r}")


class SyncObjectStore(Protocol):
    """What the synchronous callers need from a store (the old seam; see mirror.store.base)."""

    def relpath(self, sha256: str, ext: str) -> str:
        """Return the object's key, ``objects/<ab>/<sha256>.<ext>``."""
        ...

    def has(self, sha256: str, ext: str) -> bool:
        """Tell whether the object is stored."""
        ...

    def put(self, data: bytes, sha256: str, ext: str) -> StoredObject:
        """Store ``data`` under its hash, doing nothing when it is already there."""
        ...

    def read(self, sha256: str, ext: str) -> bytes:
        """Return the object's bytes."""
        ...

    def iter_objects(self) -> Iterator[tuple[str, str]]:
        """Yield ``(sha256, ext)`` of every stored object."""
        ...

    def remove(self, sha256: str, ext: str) -> bool:
        """Delete the object; tell whether it was there."""
        ...


class LocalStore:
    """
    Objects in a local folder.

    ``put`` is synchronous on purpose: measured on 100 KB objects it is the fastest way (see
    the note in ``put``); async callers hop once with ``asyncio.to_thread(store.put, ...)``.
    ``sha256`` is trusted: the downloader hashes while streaming, and hashing again would cost
    as much as the write.
    """

    def __init__(self, root: Path, durability: str = "crash") -> None:
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {DURABILITIES}, not {durability!r}")
        self.root = root
        self.objects = root / "objects"
        self.durability = durability

    def relpath(self, sha256: str, ext: str) -> str:
        """Return ``objects/<ab>/<sha256>.<ext>``, the object's path relative to the root."""
        _check_key(sha256, ext)
        return f"objects/{sha256[:2]}/{sha256}.{ext}"

    def path(self, sha256: str, ext: str) -> Path:
        """Return the object's file path under the root."""
        _check_key(sha256, ext)
        return self.objects / sha256[:2] / f"{sha256}.{ext}"

    def has(self, sha256: str, ext: str) -> bool:
        """Tell whether the object's file exists."""
        return self.path(sha256, ext).is_file()

    def put(self, data: bytes, sha256: str, ext: str) -> StoredObject:
        """
        Store ``data`` as ``sha256.ext`` unless a file of that name and size is already there.

        Raises:
            StoreError: the store cannot be written (a full disk, a read-only file system...).
        """
        target = self.path(sha256, ext)
        stored = StoredObject(sha256, ext, len(data), self.relpath(sha256, ext))
        try:
            if target.stat().st_size == len(data):
                return stored
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot check {target}: {exc.strerror or exc}") from exc
        # Sync on purpose: 100 KB puts measured 0.5-1.3 ms sync vs 1.8-3.1 ms with aiofiles (a
        # thread hop per open/write/close); async callers hop once via asyncio.to_thread.
        power = self.durability == "power"
        tmp = target.parent / temp_name(target.name)
        fd = -1
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                # Creating the shard folder only on a miss saves a syscall on every other put.
                self._make_shard(target.parent, power)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            # Looked up on mirror.store.local, where the pipeline's full-disk test patches it.
            local.write_all(fd, data)
            if power:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            tmp.replace(target)
            if power:
                fsync_dir(target.parent)
        except BaseException as exc:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, OSError):
                raise StoreError(describe_os_error(exc, target)) from exc
            raise
        return stored

    def _make_shard(self, shard: Path, power: bool) -> None:
        made_objects = not self.objects.is_dir()
        shard.mkdir(parents=True, exist_ok=True)
        if power:
            # A new folder's name lives in its parent; flush that too or the object can vanish.
            fsync_dir(self.objects)
            if made_objects:
                fsync_dir(self.root)

    def read(self, sha256: str, ext: str) -> bytes:
        """
        Return the object's bytes.

        Raises:
            StoreError: the object is missing or unreadable.
        """
        target = self.path(sha256, ext)
        try:
            return target.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read {target}: {exc.strerror or exc}") from exc

    def iter_objects(self) -> Iterator[tuple[str, str]]:
        """Yield ``(sha256, ext)`` of every object, sorted, skipping temp and stray files."""
        for shard in self._shards():
            with os.scandir(shard) as entries:
                names = sorted(entry.name for entry in entries if entry.is_file())
            for name in names:
                match = _OBJECT_NAME.fullmatch(name)
                if match is not None and match["sha"][:2] == shard.name:
                    yield match["sha"], match["ext"]

    def remove(self, sha256: str, ext: str) -> bool:
        """
        Delete the object; tell whether it existed.

        Raises:
            StoreError: the file exists but cannot be removed.
        """
        target = self.path(sha256, ext)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot remove {target}: {exc.strerror or exc}") from exc
        return True

    def cleanup_temp(self, older_than: float = 3600.0) -> int:
        """
        Remove temp files left by killed writers; return how many went.

        Only files older than ``older_than`` seconds go, so a writer still running keeps its own.
        """
        cutoff = time.time() - older_than
        removed = 0
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
            with os.scandir(self.objects) as entries:
                names = sorted(
                    entry.name
                    for entry in entries
                    if entry.is_dir(follow_symlinks=False) and _SHARD.fullmatch(entry.name)
                )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {self.objects}: {exc.strerror or exc}") from exc
        return [self.objects / name for name in names]
