"""
The in-memory URL map of ``serve``: source URL -> stored object, so a hit never reads the manifest.

It is loaded from the manifest once, then kept current incrementally through the manifest's
change feed (``catalog_changes``: only the rows of the sources changed since the last refresh).
Over a SQLite file the file and its write-ahead log are stat()ed every ``serve.refresh_interval``
seconds, and a change in either (every commit appends to the log; a checkpoint rewrites the
file) reads the feed in a thread. Over PostgreSQL (``feed``: the async manifest, on a connection
of its own) the refresh waits on ``wait_for_change``, which a commit anywhere wakes, at most
``serve.refresh_interval`` s. A cursor the feed has trimmed away, or a manifest replaced by
another file, loads everything again. What this process fetches itself is added at once with
:meth:`Catalog.add`; :meth:`Catalog.sync` catches up at once (a miss another node answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import ManifestError
from mirror.manifest import CatalogRow, CursorExpired, Manifest
from mirror.manifest import base as seam
from mirror.verify import KINDS

log = logging.getLogger(__name__)

_MIME_BY_EXT = {ext: mime for ext, mime in KINDS.values()}


def mime_for(ext: str) -> str:
    """Return the Content-Type of an object by its extension (which came from verification)."""
    return _MIME_BY_EXT.get(ext, "application/octet-stream")


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored object as a URL leads to it."""

    sha256: str
    ext: str
    size: int

    @property
    def mime(self) -> str:
        """The Content-Type to serve it with."""
        return mime_for(self.ext)


def _signature(path: Path) -> tuple[int, ...]:
    parts: list[int] = []
    for name in (path, path.with_name(path.name + "-wal")):
        try:
            st = name.stat()
        except FileNotFoundError:
            parts += [0, 0, 0]
        else:
            parts += [st.st_ino, st.st_size, st.st_mtime_ns]
    return tuple(parts)


def _apply(
    rows: list[CatalogRow],
    gone: list[str],
    entries: dict[str, Entry],
    known: set[str],
    served: set[str],
) -> None:
    """
    Make the maps say what ``rows`` say of each source in them, and forget the ``gone`` ones.

    Each source is set in one step (never removed, then added back), so a lookup from the loop
    while a refresh runs sees either the old answer or the new one.
    """
    for source in gone:
        entries.pop(source, None)
        known.discard(source)
        served.discard(source)
    now: dict[str, tuple[bool, bool, Entry | None]] = {}
    for row in rows:
        is_known, is_served, entry = now.get(row.source, (False, False, None))
        # A row names an object only when mirrored (a failed refresh keeps the object).
        if row.sha256 and row.ext and row.size is not None:
            entry = Entry(row.sha256, row.ext, row.size)
        if row.status == "served":
            is_served = True
        else:
            is_known = True
        now[row.source] = (is_known, is_served, entry)
    for source, (is_known, is_served, entry) in now.items():
        if entry is None:
            entries.pop(source, None)
        else:
            entries[source] = entry
        (known.add if is_known else known.discard)(source)
        (served.add if is_served else served.discard)(source)


class Catalog:
    """
    ``lookup`` (mirrored sources) and ``knows`` (any source a post named) for the closed world.

    Open-mode rows (``served``) count as mirrored but not as known: they do not widen the closed
    world.
    """

    def __init__(self, manifest: Path | None = None, *, feed: seam.Manifest | None = None) -> None:
        """
        Map the SQLite file ``manifest``, or the async manifest ``feed`` (PostgreSQL).

        Raises:
            ValueError: neither or both given.
        """
        if (manifest is None) == (feed is None):
            raise ValueError("a catalog reads either a SQLite file or an async manifest")
        self.path = manifest
        self.feed = feed
        self._lock = asyncio.Lock()
        self.entries: dict[str, Entry] = {}
        self.known: set[str] = set()
        self.served: set[str] = set()
        self.loaded = False
        # What the refreshes did, for the status page and the tests: full loads, rows read.
        self.full_loads = 0
        self.rows_read = 0
        self._signature: tuple[int, ...] | None = None
        # The change feed's cursor of the last load, and the file it belongs to (its inode).
        self._cursor: int | None = None
        self._inode = 0

    def lookup(self, source: str) -> Entry | None:
        """Return the object stored for ``source``, or None."""
        return self.entries.get(source)

    def knows(self, source: str) -> bool:
        """Tell whether a post named ``source`` (the manifest has a ``sources`` row for it)."""
        return source in self.known

    def add(self, source: str, entry: Entry) -> None:
        """Add what this process just fetched, without waiting for the next reload."""
        self.entries[source] = entry

    def forget(self, source: str) -> None:
        """Drop a source whose object turned out to be missing."""
        self.entries.pop(source, None)

    def reload(self) -> bool:
        """
        Reload the map when the manifest changed since the last load; tell whether it did.

        Synchronous: call it from a thread (:meth:`refresh`).

        Raises:
            ManifestError: the manifest exists but cannot be read.
        """
        assert self.path is not None, "reload() is for a SQLite file; sync() reads a feed"
        signature = _signature(self.path)
        if signature == self._signature:
            return False
        if not self.path.is_file():
            self._signature = signature
            self.loaded = True
            return False
        inode = signature[0]
        with Manifest(self.path, readonly=True) as manifest:
            if self._cursor is not None and inode == self._inode:
                try:
                    rows, gone, cursor = manifest.catalog_changes(self._cursor)
                except CursorExpired:
                    pass
                else:
                    if cursor == self._cursor:
                        # The file changed but not the catalog (a checkpoint, another table).
                        self._signature = signature
                        return False
                    _apply(rows, gone, self.entries, self.known, self.served)
                    self._done(signature, cursor, inode, len(rows))
                    return True
            rows, cursor = manifest.catalog_snapshot()
        self._swap(rows)
        self._done(signature, cursor, inode, len(rows))
        return True

    def _done(self, signature: tuple[int, ...] | None, cursor: int, inode: int, rows: int) -> None:
        self._signature, self._cursor, self._inode = signature, cursor, inode
        self.rows_read += rows
        self.loaded = True

    def _swap(self, rows: list[CatalogRow]) -> None:
        # Built aside and swapped in: a lookup meanwhile sees the old map, never a half one.
        entries: dict[str, Entry] = {}
        known: set[str] = set()
        served: set[str] = set()
        _apply(rows, [], entries, known, served)
        self.entries, self.known, self.served = entries, known, served
        self.full_loads += 1

    async def sync(self) -> bool:
        """
        Catch up with the manifest now; tell whether the map changed.

        Raises:
            ManifestError: the manifest cannot be read.
        """
        async with self._lock:  # the refresh task and a miss may both ask
            if self.feed is None:
                return await asyncio.to_thread(self.reload)
            if self._cursor is not None:
                try:
                    rows, gone, cursor = await self.feed.catalog_changes(self._cursor)
                except CursorExpired:
                    pass
                else:
                    if cursor == self._cursor:
                        return False
                    _apply(rows, gone, self.entries, self.known, self.served)
                    self._done(None, cursor, 0, len(rows))
                    return True
            rows, cursor = await self.feed.catalog()
            self._swap(rows)
            self._done(None, cursor, 0, len(rows))
            return True

    async def readable(self) -> None:
        """
        Read the manifest once, for ``/readyz``.

        Raises:
            ManifestError: it cannot be read.
        """
        if self.feed is not None:
            await self.feed.counts()
            return
        assert self.path is not None
        await asyncio.to_thread(_counts, self.path)

    async def refresh(self, interval: float) -> None:
        """Reload whenever the manifest changes, until cancelled."""
        while True:
            try:
                if self.feed is not None:
                    # Woken by a commit on any node; the interval only bounds one wait.
                    await self.feed.wait_for_change(interval)
                if await self.sync():
                    log.debug("catalog reloaded: %d objects", len(self.entries))
            except ManifestError as exc:
                # Keep serving what is known; /readyz reports the manifest as unreadable.
                log.warning("cannot reload the URL map: %s", exc)
                self._signature = None
                if self.feed is not None:
                    await asyncio.sleep(interval)  # a database that is down answers at once
            if self.feed is None:
                await asyncio.sleep(interval)

    async def run_refresh(self, interval: float) -> asyncio.Task[None]:
        """Load once now, then start :meth:`refresh` in the background; return its task."""
        with contextlib.suppress(ManifestError):
            await self.sync()
        return asyncio.create_task(self.refresh(interval), name="catalog-refresh")


def _counts(path: Path) -> None:
    with Manifest(path, readonly=True) as manifest:
        manifest.counts()
