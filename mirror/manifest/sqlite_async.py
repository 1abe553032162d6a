"""
The SQLite backend of the manifest seam: :class:`SQLiteManifest`, async over the synchronous
:class:`mirror.manifest.sqlite.Manifest`.

Calls run directly on the event loop, as the synchronous callers do: a query here costs a few
microseconds to a few milliseconds, and a hop to a thread costs more than that (measured: see
the CHANGELOG). The exception is waiting for SQLite's write lock, which another process may hold
for seconds: this connection has no busy timeout, so a write that finds the lock taken fails at
once (nothing of it happened), and the adapter sleeps on the loop and tries again, in the steps
SQLite's own busy handler sleeps, until ``BUSY_TIMEOUT_MS`` have passed. Other tasks run
meanwhile; those using this manifest queue behind a gate, which also keeps them out of a
transaction another task holds open across an ``await``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

from mirror.errors import ManifestError
from mirror.lock import StoreLock
from mirror.manifest import sqlite as backend
from mirror.manifest.base import Delete, NegativeEntry, ReportRows
from mirror.manifest.sqlite import (
    CatalogRow,
    Manifest,
    ObjectRow,
    PostState,
    Rewrite,
    SourceResult,
    SourceRow,
)
from mirror.models import Span

T = TypeVar("T")
# What SQLite's busy handler sleeps between tries, in seconds; the last step repeats.
_BUSY_STEPS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)


def _busy(exc: ManifestError) -> bool:
    cause = exc.__cause__
    code = getattr(cause, "sqlite_errorcode", 0) & 0xFF
    return isinstance(cause, sqlite3.OperationalError) and code == sqlite3.SQLITE_BUSY


class SQLiteManifest:
    """
    The manifest in a SQLite file, behind the async protocol of :mod:`mirror.manifest.base`.

    ``poll_interval`` is how often :meth:`wait_for_change` and :meth:`wait_released` look at
    the file (SQLite cannot wake a waiter in another process).
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: str = "crash",
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.05,
        on_connect: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        """Describe the manifest at ``path``; nothing is opened yet."""
        self.sync = Manifest(
            path, durability=durability, readonly=readonly, clock=clock, on_connect=on_connect
        )
        self.path = path
        self.poll_interval = poll_interval
        self._gate = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._seen = 0

    @property
    def name(self) -> str:
        """Return the file's path."""
        return str(self.path)

    async def open(self) -> Self:
        """
        Open the file, creating or migrating it, in a thread (a migration may wait for a lock).

        Raises:
            ManifestError: locked, corrupt, from a newer mirror, or not writable.
        """
        await asyncio.to_thread(self.sync.open)
        # From now on a taken write lock fails at once; _call waits for it on the loop.
        self.sync.conn.execute("PRAGMA busy_timeout = 0")
        return self

    async def close(self) -> None:
        """Close the file; safe to call twice."""
        self.sync.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _retry(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn``, sleeping and calling again while another process holds the write lock."""
        deadline = asyncio.get_running_loop().time() + backend.BUSY_TIMEOUT_MS / 1000
        step = 0
        while True:
            try:
                return fn(*args)
            except ManifestError as exc:
                # A busy failure comes from BEGIN: the call had not started, so it may run again.
                left = deadline - asyncio.get_running_loop().time()
                if not _busy(exc) or left <= 0:
                    raise
            await asyncio.sleep(min(_BUSY_STEPS[min(step, len(_BUSY_STEPS) - 1)], left))
            step += 1

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._owner is not None and self._owner is asyncio.current_task():
            return fn(*args)
        async with self._gate:
            return await self._retry(fn, *args)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if self._owner is not None and self._owner is task:
            yield
            return
        async with self._gate:
            with ExitStack() as stack:
                # A fresh context each try: a failed BEGIN has closed the last one.
                await self._retry(lambda: stack.enter_context(self.sync.transaction()))
                self._owner = task
                try:
                    yield
                finally:
                    self._owner = None

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Group the writes made inside into one SQLite transaction."""
        return self._transaction()

    async def schema_version(self) -> int:
        """Return the file's schema version."""
        return await self._call(self.sync.schema_version)

    async def record_results(self, rows: Iterable[SourceResult]) -> None:
        """Merge a batch of results (see the synchronous method)."""
        await self._call(self.sync.record_results, list(rows))

    async def get(self, source: str) -> SourceRow | None:
        """Return the row for ``source``, or None."""
        return await self._call(self.sync.get, source)

    async def get_many(self, sources: Iterable[str]) -> dict[str, SourceRow]:
        """Return the rows that exist among ``sources``."""
        return await self._call(self.sync.get_many, list(sources))

    async def mirrored_mapping(self, base_url: str) -> dict[str, str]:
        """Return source -> local URL for every mirrored source."""
        return await self._call(self.sync.mirrored_mapping, base_url)

    async def counts(self) -> dict[str, int]:
        """Return how many sources have each status."""
        return await self._call(self.sync.counts)

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
        """Record a post as scanned (and rewritten) now."""

        def record() -> None:
            self.sync.record_post(
                path, size, mtime_ns, inode, sha256,
                rewritten=rewritten, next_check=next_check, mode=mode,
            )  # fmt: skip

        await self._call(record)

    async def record_posts(
        self, rows: Iterable[tuple[str, int, int, int, str, float | None, str | None]]
    ) -> None:
        """Record finished posts."""
        await self._call(self.sync.record_posts, list(rows))

    async def post_states_in(self, folder: str) -> dict[str, PostState]:
        """Return every recorded post under ``folder``."""
        return await self._call(self.sync.post_states_in, folder)

    async def post_state(self, path: str) -> PostState | None:
        """Return what ``path`` looked like when last recorded."""
        return await self._call(self.sync.post_state, path)

    async def record_spans(
        self,
        post: str,
        spans: Sequence[Span],
        sources: Sequence[str | None],
        *,
        before_sha256: str | None = None,
        after_sha256: str | None = None,
    ) -> int | None:
        """Record one rewrite of ``post``; return its generation."""

        def record() -> int | None:
            return self.sync.record_spans(
                post, spans, sources, before_sha256=before_sha256, after_sha256=after_sha256
            )

        return await self._call(record)

    async def spans_for(self, post: str) -> list[Rewrite]:
        """Return the rewrites of ``post``, newest first."""
        return await self._call(self.sync.spans_for, post)

    async def rewritten_posts(self) -> list[str]:
        """Return the key of every post with a recorded rewrite, sorted by code point."""
        return await self._call(self.sync.rewritten_posts)

    async def forget_rewrite(self, post: str, generation: int) -> None:
        """Drop one generation of ``post``'s rewrites."""
        await self._call(self.sync.forget_rewrite, post, generation)

    async def catalog(self) -> tuple[list[CatalogRow], int]:
        """Return every catalog row and the cursor they are current at."""
        rows, cursor = await self._call(self.sync.catalog_snapshot)
        self._seen = cursor
        return rows, cursor

    async def catalog_changes(self, since: int) -> tuple[list[CatalogRow], list[str], int]:
        """Return what changed after ``since`` (see the protocol)."""
        rows, removed, cursor = await self._call(self.sync.catalog_changes, since)
        self._seen = cursor
        return rows, removed, cursor

    async def wait_for_change(self, timeout: float) -> bool:  # noqa: ASYNC109 - issue #12's API
        """Poll the change cursor every ``poll_interval`` s until it moves or ``timeout`` ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if await self._call(self.sync.change_cursor) != self._seen:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(self.poll_interval, left))

    async def record_served(self, source: str, result: SourceResult) -> None:
        """Record what open mode fetched for a URL no post names."""
        await self._call(self.sync.record_served, source, result)

    async def touch_served(self, seen: Mapping[str, float]) -> None:
        """Note when open-mode sources were last served."""
        await self._call(self.sync.touch_served, dict(seen))

    async def evict_served(self, max_bytes: int, delete: Delete) -> list[tuple[str, str]]:
        """
        Evict beyond ``max_bytes`` in one ``BEGIN IMMEDIATE`` transaction, files deleted inside.

        Pins and other writers wait for the write lock meanwhile.
        """
        evicted: list[tuple[str, str]] = []
        failure: BaseException | None = None
        async with self.transaction():
            for sha256, ext in self.sync.evict_plan(max_bytes):
                try:
                    await delete(sha256, ext)
                except BaseException as exc:
                    # Commit what is deleted: rolling back would leave rows naming lost files.
                    failure = exc
                    break
                evicted.append((sha256, ext))
            self.sync.drop_objects(sha for sha, _ext in evicted)
        if failure is not None:
            raise failure
        return evicted

    async def objects(self) -> list[ObjectRow]:
        """Return every object with the URLs naming it."""
        return await self._call(self.sync.objects)

    async def forget_objects(self, reasons: Mapping[str, str]) -> int:
        """Forget objects so that their sources are fetched again."""
        return await self._call(self.sync.forget_objects, dict(reasons))

    async def host_profile(self, host: str) -> str | None:
        """Return the request profile that last worked for ``host``."""
        return await self._call(self.sync.host_profile, host)

    async def record_host_profile(self, host: str, profile: str | None) -> None:
        """Remember which request profile worked for ``host``."""
        await self._call(self.sync.record_host_profile, host, profile)

    async def report_rows(self) -> ReportRows:
        """Return what ``mirror report`` shows."""
        return await self._call(self.sync.report_rows)

    async def pin(self, sha256s: Iterable[str], holder: str, until: float) -> set[str]:
        """Pin objects; return those already gone."""
        return await self._call(self.sync.pin, list(sha256s), holder, until)

    async def unpin(self, holder: str) -> None:
        """Drop every pin of ``holder``."""
        await self._call(self.sync.unpin, holder)

    async def lease(self, key: str, holder: str, ttl: float) -> bool:
        """Take or renew a lease."""
        return await self._call(self.sync.lease, key, holder, ttl)

    async def release(self, key: str, holder: str) -> None:
        """Give a lease back."""
        await self._call(self.sync.release, key, holder)

    async def wait_released(self, key: str, timeout: float) -> bool:  # noqa: ASYNC109 - as above
        """Poll the lease every ``poll_interval`` s until it is free or ``timeout`` ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if await self._call(self.sync.lease_held, key) is None:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(self.poll_interval, left))

    async def negative_get(self, key: str) -> NegativeEntry | None:
        """Return the remembered failure of ``key``."""
        return await self._call(self.sync.negative_get, key)

    async def negative_put(
        self, key: str, until: float, count: int, status: int, reason: str
    ) -> None:
        """Remember a failure of ``key``."""
        await self._call(self.sync.negative_put, key, until, count, status, reason)

    async def negative_forget(self, key: str) -> None:
        """Forget the remembered failure of ``key``."""
        await self._call(self.sync.negative_forget, key)

    @asynccontextmanager
    async def _store_lock(self, command: str) -> AsyncIterator[None]:
        # flock never waits (LOCK_NB), so taking it on the loop is fine.
        with StoreLock(self.path.parent, command):
            yield

    def lock(self, command: str) -> AbstractAsyncContextManager[None]:
        """Return the ``flock`` on ``mirror.lock`` beside the file, as the commands take today."""
        return self._store_lock(command)
