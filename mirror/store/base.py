"""
The object-store seam: the protocol every backend implements and the records it passes.

An object is named by its bytes (``<sha256>.<ext>``), so a key never changes once written and
a backend never has to compare contents: the same name is the same bytes. Backends live beside
this module (:mod:`mirror.store.local`, :mod:`mirror.store.s3`) and are built by
:func:`mirror.store.open_store`; nothing outside the package knows which one it got.

A body reaches a store in three steps: the downloader streams it into a :class:`Staged` temp
file (hashing and counting as it goes), verification reads that file, and
:meth:`ObjectStore.commit` moves it into the backend, atomically and only when it is not there
already.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, Self

from mirror.models import StoredObject

SHA256 = re.compile(r"[0-9a-f]{64}")
EXT = re.compile(r"[a-z0-9]{1,10}")
SHARD = re.compile(r"[0-9a-f]{2}")
OBJECT_NAME = re.compile(r"(?P<sha>[0-9a-f]{64})\.(?P<ext>[a-z0-9]{1,10})")
# Objects never change (their name is their hash), so every cache may keep them for a year.
CACHE_CONTROL = "public, max-age=31536000, immutable"


def check_key(sha256: str, ext: str) -> None:
    """
    Refuse a sha256 or extension that could make a key escape the store.

    Raises:
        ValueError: ``sha256`` is not 64 lowercase hex digits, or ``ext`` not 1-10 of [a-z0-9].
    """
    if SHA256.fullmatch(sha256) is None:
        raise ValueError(f"not a lowercase hex sha256: {sha256!r}")
    if EXT.fullmatch(ext) is None:
        raise ValueError(f"not a file extension: {ext!r}")


def object_name(sha256: str, ext: str) -> str:
    """Return ``<ab>/<sha256>.<ext>``, the part of every key that depends on the object."""
    check_key(sha256, ext)
    return f"{sha256[:2]}/{sha256}.{ext}"


def parse_name(shard: str, name: str) -> tuple[str, str] | None:
    """Return ``(sha256, ext)`` when ``name`` in ``shard`` is an object's name, else None."""
    match = OBJECT_NAME.fullmatch(name)
    if match is None or match["sha"][:2] != shard:
        return None
    return match["sha"], match["ext"]


def local_url(base_url: str, sha256: str, ext: str) -> str:
    """Return the URL a rewritten post uses for an object: ``<base_url><ab>/<sha256>.<ext>``."""
    return f"{base_url}{object_name(sha256, ext)}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store knows about one object; ``modified`` is in unix seconds."""

    sha256: str
    ext: str
    size: int
    modified: float


@dataclass(slots=True)
class Staged:
    """
    A temp file in a store's staging area that a body streams into.

    ``file`` is open ``"w+b"``: the fetcher writes it, verification reads ``path`` (always on
    local disk). ``committed`` is set by the store once the file has moved into the backend, so
    leaving the staging context does not remove what is now an object.
    """

    path: Path
    file: BinaryIO
    committed: bool = False


class ObjectStore(Protocol):
    """
    A content-addressed object store (a local folder or an S3-compatible bucket).

    Use it as an async context manager: ``__aenter__`` opens what the backend needs (an S3
    client), ``__aexit__`` closes it. Every method that takes ``sha256`` and ``ext`` raises
    ValueError for a malformed one (see :func:`check_key`); failures of the backend itself are
    :class:`~mirror.errors.StoreError`.
    """

    description: str

    async def __aenter__(self) -> Self:
        """Open the backend's clients."""
        ...

    async def __aexit__(self, *exc: object) -> None:
        """Close what ``__aenter__`` opened."""
        ...

    def key(self, sha256: str, ext: str) -> str:
        """Return the object's key: ``objects/<ab>/<sha256>.<ext>``, ``<prefix>/<ab>/...``."""
        ...

    def public_url(self, sha256: str, ext: str) -> str | None:
        """Return where the public can fetch the object directly, when the backend says."""
        ...

    def local_file(self, sha256: str, ext: str) -> Path | None:
        """Return the object's path on this machine's disk, for a backend that has one."""
        ...

    def staging(self) -> AbstractAsyncContextManager[Staged]:
        """Return a context giving a fresh staged file, removed on exit unless committed."""
        ...

    async def commit(self, staged: Staged, sha256: str, ext: str, mime: str) -> StoredObject:
        """Move a staged body into the store; an object already there is not written again."""
        ...

    async def put(self, data: bytes, sha256: str, ext: str, mime: str) -> StoredObject:
        """Store ``data`` (through staging); an object already there is not written again."""
        ...

    async def stat(self, sha256: str, ext: str) -> ObjectInfo | None:
        """Return what the store knows about the object, or None when it is not there."""
        ...

    async def read(self, sha256: str, ext: str, start: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes (all, when None) from ``start``; past the end gives b""."""
        ...

    def stream(
        self, sha256: str, ext: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield the same bytes as :meth:`read` in chunks, never holding them all."""
        ...

    async def delete(self, sha256: str, ext: str) -> bool:
        """Delete the object; tell whether it was there."""
        ...

    def objects(self) -> AsyncIterator[ObjectInfo]:
        """Yield every object in key order, skipping temp and stray names."""
        ...

    async def cleanup(self, *, older_than: float) -> int:
        """Remove what interrupted writers left (staged files, multipart uploads); count it."""
        ...
