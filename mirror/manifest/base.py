"""
The manifest seam: the async protocol both backends implement, and the records only it passes.

Two backends live beside this module: :mod:`mirror.manifest.sqlite_async` (the embedded SQLite
file, an adapter over the synchronous :class:`mirror.manifest.sqlite.Manifest`) and
:mod:`mirror.manifest.postgres` (a PostgreSQL database several processes and machines share).
:func:`mirror.manifest.open_manifest` builds the one ``[manifest] url`` names. The records of
the synchronous API (``SourceResult``, ``SourceRow``, ``CatalogRow``...) are the same records
here; their merging rules are written once, in :mod:`mirror.manifest.sqlite`.

What the seam adds to the synchronous API:

- **The change feed.** Every write that changes what :meth:`Manifest.catalog` shows (a
  ``sources`` or ``served`` row added, changed or removed) appends the source to a change log in
  the same transaction, under a counter that only grows. ``catalog()`` returns the rows with the
  counter (the cursor); ``catalog_changes(cursor)`` returns only what changed since. The log is
  trimmed to its newest entries; a cursor older than the trimmed part raises
  :class:`CursorExpired`, and the node reloads with ``catalog()``.
- **Pins.** A job pins the objects its posts are about to name before it writes them;
  :meth:`Manifest.evict_served` decides and deletes in one critical section that excludes live
  pins and every object a ``sources`` row names. A pin is ordered either before an eviction (the
  object is spared) or after it (``pin`` reports the object gone, and the job writes it again).
- **Leases and the shared negative cache**, so several ``serve`` nodes fetch an unknown URL once
  and remember a failure together; keys are stored as their SHA-256.
- **The store lock** (:meth:`Manifest.lock`): an ``flock`` beside a SQLite manifest, a
  PostgreSQL session advisory lock otherwise; both raise :class:`~mirror.lock.LockedError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self

from mirror.errors import ManifestError

if TYPE_CHECKING:
    from mirror.manifest.sqlite import (
        Attempt,
        CatalogRow,
        ObjectRow,
        PostState,
        Rewrite,
        SourceResult,
        SourceRow,
    )
    from mirror.models import Span

# The store's delete, as evict_served calls it: (sha256, ext) -> whether the object was there.
Delete = Callable[[str, str], Awaitable[object]]
# A negative-cache row stays this long past its expiry, so a repeated failure still doubles
# its TTL (serve's longest negative TTL is an hour); older rows are trimmed on every write.
NEGATIVE_KEPT = 3600.0


class CursorExpired(ManifestError):
    """A change-feed cursor is older than the trimmed log (or not from this manifest)."""


def key_hash(key: str) -> bytes:
    """Return the fixed-size key a lease or negative-cache entry is stored under."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class ReportSource:
    """The part of a ``sources`` row that ``mirror report`` shows."""

    source: str
    status: str
    reason: str | None
    sha256: str | None
    attempts: tuple[Attempt, ...]
    failures: int
    via: str | None = None
    fetched_from: str | None = None


@dataclass(frozen=True, slots=True)
class GalleryObject:
    """An object a mirrored source names, for the report's gallery."""

    sha256: str
    ext: str
    size: int
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class ReportRows:
    """
    What ``mirror report`` reads, from one consistent snapshot.

    ``sources`` in no particular order; ``objects`` and ``object_bytes`` count every object;
    ``gallery`` lists the objects a mirrored source names, oldest first (then by sha256).
    """

    sources: tuple[ReportSource, ...]
    objects: int
    object_bytes: int
    gallery: tuple[GalleryObject, ...]


@dataclass(frozen=True, slots=True)
class NegativeEntry:
    """A remembered failure of one URL: answer ``status``/``reason`` without a fetch until then."""

    until: float
    count: int
    status: int
    reason: str


class Manifest(Protocol):
    """
    A manifest, SQLite or PostgreSQL; every method is a coroutine.

    Enter it (``async with``) or call :meth:`open` and :meth:`close`. Each write method is one
    transaction; :meth:`transaction` groups several into one (nested uses join the outer one;
    do not hand the manifest to other tasks inside it). Every failure of the database is a
    :class:`~mirror.errors.ManifestError` whose message names the manifest (never a password).
    The methods named like those of :class:`mirror.manifest.sqlite.Manifest` take the same
    arguments and keep the same semantics; see its docstrings.
    """

    @property
    def name(self) -> str:
        """Return the manifest's name for messages: its path, or its URL without a password."""
        ...

    async def open(self) -> Self:
        """Connect and bring the schema up to date (check it, when read-only)."""
        ...

    async def close(self) -> None:
        """Close every connection; safe to call twice."""
        ...

    async def __aenter__(self) -> Self:
        """Open."""
        ...

    async def __aexit__(self, *exc: object) -> None:
        """Close."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Group the writes made inside into one transaction, kept whole or not at all."""
        ...

    async def schema_version(self) -> int:
        """Return the schema version the database is at."""
        ...

    async def record_results(self, rows: Iterable[SourceResult]) -> None:
        """Merge a batch of results, adding the objects mirrored rows name."""
        ...

    async def get(self, source: str) -> SourceRow | None:
        """Return the row for ``source``, or None."""
        ...

    async def get_many(self, sources: Iterable[str]) -> dict[str, SourceRow]:
        """Return the rows that exist among ``sources``, by source."""
        ...

    async def mirrored_mapping(self, base_url: str) -> dict[str, str]:
        """Return source -> local URL for every mirrored source."""
        ...

    async def counts(self) -> dict[str, int]:
        """Return how many sources have each status, zero included."""
        ...

    async def record_post(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        inode: int,
        sha256: str,
        *,
        rewritten: bool = False,
        next_check: float | None = None,
        mode: str | None = None,
    ) -> None:
        """Record a post as scanned now (and as rewritten now, with ``rewritten``)."""
        ...

    async def record_posts(
        self, rows: Iterable[tuple[str, int, int, int, str, float | None, str | None]]
    ) -> None:
        """Record finished posts: (path, size, mtime_ns, inode, sha256, next_check, mode)."""
        ...

    async def post_states_in(self, folder: str) -> dict[str, PostState]:
        """Return every recorded post under ``folder``, by path."""
        ...

    async def post_state(self, path: str) -> PostState | None:
        """Return what ``path`` looked like when last recorded, or None."""
        ...

    async def record_spans(
        self,
        post: str,
        spans: Sequence[Span],
        sources: Sequence[str | None],
        *,
        before_sha256: str | None = None,
        after_sha256: str | None = None,
    ) -> int | None:
        """Record one rewrite of ``post``; return its generation (None for no spans)."""
        ...

    async def spans_for(self, post: str) -> list[Rewrite]:
        """Return the rewrites of ``post``, newest first."""
        ...

    async def rewritten_posts(self) -> list[str]:
        """Return the key of every post with a recorded rewrite, sorted by code point."""
        ...

    async def forget_rewrite(self, post: str, generation: int) -> None:
        """Drop one generation of ``post``'s rewrites."""
        ...

    async def catalog(self) -> tuple[list[CatalogRow], int]:
        """Return every catalog row and the change cursor they are current at."""
        ...

    async def catalog_changes(self, since: int) -> tuple[list[CatalogRow], list[str], int]:
        """
        Return what changed in the catalog after cursor ``since``.

        Returns:
            The current rows of every source that changed (a source's rows replace what the
            caller had for it), the changed sources that now have no row, and the new cursor.

        Raises:
            CursorExpired: ``since`` is older than the trimmed log; reload with :meth:`catalog`.
        """
        ...

    async def wait_for_change(self, timeout: float) -> bool:  # noqa: ASYNC109 - issue #12's API
        """
        Wait until the catalog changed past the cursor this manifest last returned.

        Returns at once when it already has. Returns False when ``timeout`` seconds passed
        without a change.
        """
        ...

    async def record_served(self, source: str, result: SourceResult) -> None:
        """Record what open mode fetched for a URL no post names."""
        ...

    async def touch_served(self, seen: Mapping[str, float]) -> None:
        """Note when open-mode sources were last served."""
        ...

    async def evict_served(self, max_bytes: int, delete: Delete) -> list[tuple[str, str]]:
        """
        Evict the least recently served open-mode objects beyond ``max_bytes``, files included.

        Decides and deletes in one critical section that pins and other evictions wait for:
        objects a ``sources`` row names or a live pin holds are never candidates. Each
        candidate's rows are removed and ``await delete(sha256, ext)`` runs before the section
        ends. When a delete fails, the objects already deleted are forgotten, the rest keep
        their rows, and the error is raised.

        Returns:
            ``(sha256, ext)`` of the objects evicted.
        """
        ...

    async def objects(self) -> list[ObjectRow]:
        """Return every object with the sources and served URLs naming it, by sha256."""
        ...

    async def forget_objects(self, reasons: Mapping[str, str]) -> int:
        """Forget objects so that the sources naming them are fetched again; count those."""
        ...

    async def host_profile(self, host: str) -> str | None:
        """Return the request profile that last worked for ``host``, or None."""
        ...

    async def record_host_profile(self, host: str, profile: str | None) -> None:
        """Remember which request profile worked for ``host``."""
        ...

    async def report_rows(self) -> ReportRows:
        """Return what ``mirror report`` shows, from one snapshot."""
        ...

    async def pin(self, sha256s: Iterable[str], holder: str, until: float) -> set[str]:
        """
        Pin objects for ``holder`` until ``until`` (Unix seconds), so no eviction takes them.

        Returns:
            The pinned sha256s that have no object any more: an eviction came first, and the
            holder must write those objects again before relying on them.
        """
        ...

    async def unpin(self, holder: str) -> None:
        """Drop every pin of ``holder``."""
        ...

    async def lease(self, key: str, holder: str, ttl: float) -> bool:
        """Take (or renew) the lease ``key`` for ``ttl`` seconds; tell whether ``holder`` has it."""
        ...

    async def release(self, key: str, holder: str) -> None:
        """Give the lease ``key`` back, if ``holder`` has it, and wake its waiters."""
        ...

    async def wait_released(self, key: str, timeout: float) -> bool:  # noqa: ASYNC109 - as above
        """Wait until nobody holds ``key`` (released or expired); False after ``timeout`` s."""
        ...

    async def negative_get(self, key: str) -> NegativeEntry | None:
        """Return the remembered failure of ``key`` (expired or not), or None."""
        ...

    async def negative_put(
        self, key: str, until: float, count: int, status: int, reason: str
    ) -> None:
        """Remember a failure of ``key`` until ``until``; trims long-expired entries."""
        ...

    async def negative_forget(self, key: str) -> None:
        """
        Forget the remembered failure of ``key``: it has just been fetched.

        So the next failure counts as the first again (its backoff starts over), and no node
        answers the old failure meanwhile.
        """
        ...

    def lock(self, command: str) -> AbstractAsyncContextManager[None]:
        """
        Return the store lock for ``command``: entering takes it at once or raises.

        Raises:
            LockedError: another live mirror holds it (the message names the holder).
        """
        ...
