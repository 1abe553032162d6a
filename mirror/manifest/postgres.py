"""
The PostgreSQL backend of the manifest seam: :class:`PostgresManifest` (psycopg 3, async).

Several processes and machines share one database: ``mirror serve`` nodes and jobs. Queries go
through a small connection pool (autocommit connections; every write method is one explicit
transaction). Batches are one statement each (``unnest`` of arrays), and a
:meth:`~PostgresManifest.record_results` batch runs in pipeline mode, so 256 results cost two
round trips. The schema and the change feed are described in :mod:`mirror.manifest.postgres_schema`.

Concurrency: the writers of ``sources`` and ``served`` take the change counter's row lock first
(see that module), so their merges never lose an update; pins take a shared advisory lock and
eviction the exclusive one (both transaction-level), so a pin is ordered before or after an
eviction, never inside it. LISTEN/NOTIFY wakes :meth:`~PostgresManifest.wait_for_change` and
:meth:`~PostgresManifest.wait_released` at once, on one listening connection per manifest.

The password never comes from the URL (the config refuses one): libpq reads PGPASSWORD,
~/.pgpass (PGPASSFILE) or a service file. Messages name the URL without any password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Self

import psycopg
from psycopg_pool import AsyncConnectionPool

from mirror.errors import ManifestError
from mirror.manifest import sqlite_rows as rules
from mirror.manifest.base import (
    NEGATIVE_KEPT,
    CursorExpired,
    Delete,
    GalleryObject,
    NegativeEntry,
    ReportRows,
    ReportSource,
    key_hash,
)
from mirror.manifest.lock import EVICT_KEY, MIGRATE_KEY, AdvisoryStoreLock
from mirror.manifest.postgres_schema import MIGRATIONS, SCHEMA_VERSION
from mirror.manifest.sqlite import (
    STATUSES,
    CatalogRow,
    ObjectRow,
    PostState,
    RecordedSpan,
    Rewrite,
    SourceResult,
    SourceRow,
)
from mirror.models import Span
from mirror.store import local_url

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]
_PASSWORD = re.compile(r"(://[^/?#@:]*):[^/?#@]*@|(password\s*=\s*)[^&\s]*", re.IGNORECASE)
# The columns of a sources upsert and their array types (rules._COLUMNS is the source of truth).
_TYPES = {"source": "text", "status": "text", "reason": "text", "sha256": "text"}
_TYPES |= {
    "fetched_from": "text",
    "via": "text",
    "attempts": "jsonb",
    "etag": "text",
    "last_modified": "text",
}
_TYPES |= {"first_seen": "float8", "last_attempt": "float8", "next_attempt": "float8"}
_TYPES |= {"failures": "int8"}
_FLOATS = frozenset(name for name, kind in _TYPES.items() if kind == "float8")
_COLS = ", ".join(rules._COLUMNS)
_UNNEST = ", ".join(f"%s::{_TYPES[name]}[]" for name in rules._COLUMNS)
_SET = ", ".join(f"{name} = EXCLUDED.{name}" for name in rules._COLUMNS[1:])
_UPSERT_SQL = f"""INSERT INTO sources ({_COLS}) SELECT * FROM unnest({_UNNEST})
    ON CONFLICT (source) DO UPDATE SET {_SET}"""
_OBJECTS_SQL = """INSERT INTO objects SELECT * FROM unnest(%s::text[], %s::text[], %s::int8[],
    %s::text[], %s::int8[], %s::int8[], %s::float8[]) ON CONFLICT DO NOTHING"""
_ROW_SQL = """SELECT s.source, s.status, s.reason, s.sha256, o.ext, o.bytes, o.format, o.width,
    o.height, s.fetched_from, s.attempts::text, s.etag, s.last_modified, s.first_seen,
    s.last_attempt, s.next_attempt, s.failures, s.via FROM sources s
    LEFT JOIN objects o ON o.sha256 = s.sha256"""
_CATALOG_SQL = """SELECT s.source, s.status, s.sha256, o.ext, o.bytes, o.format FROM sources s
    LEFT JOIN objects o ON o.sha256 = s.sha256 {where_s}
    UNION ALL SELECT v.source, 'served', v.sha256, o.ext, o.bytes, o.format FROM served v
    JOIN objects o ON o.sha256 = v.sha256 {where_v}"""
_POST_COLUMNS = "path, size, mtime_ns, inode, sha256, scanned_at, rewritten_at, next_check, mode"
# Taken first by every writer of sources or served (see mirror.manifest.postgres_schema).
_LOCK_FEED = "SELECT seq FROM catalog_counter FOR UPDATE"
_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_EVICTABLE_SQL = """SELECT o.sha256, o.ext, o.bytes FROM served v JOIN objects o
    ON o.sha256 = v.sha256
    WHERE NOT EXISTS (SELECT 1 FROM sources s WHERE s.sha256 = v.sha256)
    AND NOT EXISTS (SELECT 1 FROM pins p WHERE p.sha256 = v.sha256 AND p.until > %s)
    GROUP BY o.sha256, o.ext, o.bytes ORDER BY MAX(v.last_served) DESC, o.sha256"""


def redact(url: str) -> str:
    """Return ``url`` without any password in it, for messages."""
    return _PASSWORD.sub(lambda m: f"{m[1]}@" if m[1] else f"{m[2]}***", url)


@asynccontextmanager
async def wrap_errors(name: str, doing: str) -> AsyncIterator[None]:
    """Turn a psycopg error into a ManifestError naming the manifest ``name``."""
    try:
        yield
    except psycopg.Error as exc:
        text = redact(str(exc).strip() or type(exc).__name__)
        raise ManifestError(f"manifest {name} failed while {doing}: {text}") from exc


def _floats(values: Iterable[Any]) -> list[float | None]:
    return [None if v is None else float(v) for v in values]


class _Listener:
    """One LISTEN connection; each notification wakes the waiters of its channel (and key)."""

    CHANNELS = ("mirror_catalog", "mirror_lease")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self._events: dict[str, asyncio.Event] = {}
        self.task = asyncio.create_task(self._run(), name="manifest-listen")

    def event(self, topic: str) -> asyncio.Event:
        """Return the event the next notification of ``topic`` sets (take it before checking)."""
        return self._events.setdefault(topic, asyncio.Event())

    def _wake(self, topic: str) -> None:
        event = self._events.pop(topic, None)
        if event is not None:
            event.set()

    async def _run(self) -> None:
        try:
            async for note in self.conn.notifies():
                topic = "catalog" if note.channel == "mirror_catalog" else f"lease:{note.payload}"
                self._wake(topic)
        except psycopg.Error as exc:
            log.warning("manifest notifications stopped: %s", redact(str(exc)))
        finally:
            # Waiters look at the database again; the next wait listens anew.
            for topic in list(self._events):
                self._wake(topic)

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
            await self.task
        await self.conn.close()


class PostgresManifest:
    """The manifest in a PostgreSQL database, behind the protocol of :mod:`mirror.manifest.base`."""

    def __init__(
        self,
        url: str,
        *,
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
        pool_size: int = 4,
    ) -> None:
        """Describe the manifest at ``url`` (``postgresql://user@host:port/db``); nothing opens."""
        self.url = url
        self.readonly = readonly
        self.pool_size = pool_size
        self._clock = clock
        self._name = redact(url)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._held: dict[asyncio.Task[Any], Conn] = {}
        self._listener: _Listener | None = None
        self._listen_lock = asyncio.Lock()
        self._seen = 0

    @property
    def name(self) -> str:
        """Return the URL without a password."""
        return self._name

    def _errors(self, doing: str) -> AbstractAsyncContextManager[None]:
        return wrap_errors(self._name, doing)

    async def open(self) -> Self:
        """
        Connect, then migrate the schema (a writer) or check that it is current (a reader).

        Raises:
            ManifestError: unreachable, refused, from a newer mirror, or not up to date.
        """
        if self._pool is not None:
            return self
        async with self._errors("connecting"):
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        try:
            await self._migrate(conn)
        finally:
            await conn.close()

        async def configure(conn: Conn) -> None:
            if self.readonly:
                await conn.execute("SET default_transaction_read_only = on")

        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True},
            configure=configure,
            open=False,
            name="mirror-manifest",
        )
        try:
            async with self._errors("connecting"):
                await pool.open(wait=True, timeout=30.0)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return self

    async def _version(self, conn: Conn) -> int:
        found = await (await conn.execute("SELECT to_regclass('mirror_schema')")).fetchone()
        if found is None or found[0] is None:
            return 0
        row = await (await conn.execute("SELECT MAX(version) FROM mirror_schema")).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def _check(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise ManifestError(
                f"manifest {self._name} has schema {version}; this mirror knows {SCHEMA_VERSION}"
            )

    async def _migrate(self, conn: Conn) -> None:
        async with self._errors("opening"):
            version = await self._version(conn)
            self._check(version)
            if self.readonly:
                if version < SCHEMA_VERSION:
                    raise ManifestError(
                        f"manifest {self._name} needs upgrading by a writing command"
                    )
                return
            if version == SCHEMA_VERSION:
                return
            async with conn.transaction():
                # DDL is transactional: a failed migration leaves the schema as it was.
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATE_KEY)
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS mirror_schema (
                    version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"""
                )
                version = await self._version(conn)  # another writer may have migrated
                self._check(version)
                for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO mirror_schema VALUES (%s, %s)", (number, self._clock())
                    )

    async def close(self) -> None:
        """Close the pool and the listening connection; safe to call twice."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        """Return the open pool."""
        if self._pool is None:
            raise ManifestError(f"manifest {self._name} is not open")
        return self._pool

    @asynccontextmanager
    async def _begun(self, doing: str, begin: str) -> AsyncIterator[Conn]:
        """
        Yield a connection inside a transaction: the caller's, or a new one in pipeline mode.

        Statements are sent without waiting for their results until one is fetched, and BEGIN
        and COMMIT by hand: psycopg's ``transaction()`` waits for each of them, which made a
        batch five round trips instead of two.
        """
        held = self._held.get(asyncio.current_task())  # type: ignore[arg-type]
        async with self._errors(doing):
            if held is not None:
                yield held
                return
            async with self.pool.connection() as conn:
                try:
                    # Leaving the pipeline waits for COMMIT (an explicit sync costs one more trip).
                    async with conn.pipeline():
                        await conn.execute(begin)
                        yield conn
                        await conn.execute("COMMIT")
                except BaseException:
                    # Hand the pool an idle connection, whatever state the failure left.
                    with contextlib.suppress(psycopg.Error):
                        await conn.rollback()
                    raise

    def _write(self, doing: str) -> AbstractAsyncContextManager[Conn]:
        return self._begun(doing, "BEGIN")

    @asynccontextmanager
    async def _read(self, doing: str, *, snapshot: bool = False) -> AsyncIterator[Conn]:
        """Yield a connection; with ``snapshot``, inside one repeatable-read transaction."""
        held = self._held.get(asyncio.current_task())  # type: ignore[arg-type]
        async with self._errors(doing):
            if held is not None:
                yield held
                return
            if snapshot:
                async with self._begun(doing, _SNAPSHOT) as conn:
                    yield conn
                return
            async with self.pool.connection() as conn:
                yield conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None  # always called from a coroutine
        if task in self._held:
            yield
            return
        async with self._errors("writing"), self.pool.connection() as conn, conn.transaction():
            self._held[task] = conn
            try:
                yield
            finally:
                del self._held[task]

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Group the writes made inside (by this task) into one transaction."""
        return self._transaction()

    async def schema_version(self) -> int:
        """Return the schema version the database is at."""
        async with self._read("reading the schema version") as conn:
            return await self._version(conn)

    async def _all(self, conn: Conn, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await (await conn.execute(sql, params)).fetchall()

    async def _rows(self, conn: Conn, sources: list[str]) -> dict[str, SourceRow]:
        found = await self._all(conn, f"{_ROW_SQL} WHERE s.source = ANY(%s::text[])", [sources])
        return {values[0]: rules._row(values) for values in found}

    async def record_results(self, rows: Iterable[SourceResult]) -> None:
        """Merge a batch of results in one transaction of two round trips (see the sync class)."""
        now = self._clock()
        batch = list(rows)
        if not batch:
            return
        async with self._write("recording results") as conn:
            await conn.execute(_LOCK_FEED)
            merged = await self._rows(conn, list(dict.fromkeys(r.source for r in batch)))
            objects = sorted(
                {r.sha256: r for r in batch if r.status == "mirrored" and r.sha256}.values(),
                key=lambda r: r.sha256 or "",
            )
            if objects:
                columns = ("sha256", "ext", "size", "format", "width", "height")
                arrays: list[list[Any]] = [[getattr(r, c) for r in objects] for c in columns]
                await conn.execute(_OBJECTS_SQL, [*arrays, [float(now)] * len(objects)])
            final: dict[str, SourceRow] = {}
            for result in batch:
                row = rules._merge(merged.get(result.source), result, now)
                if row is not None:
                    merged[result.source] = final[result.source] = row
            if final:
                values = [rules._upsert_values(row) for row in final.values()]
                columns_of = [list(column) for column in zip(*values, strict=True)]
                arrays = [
                    _floats(column) if name in _FLOATS else column
                    for name, column in zip(rules._COLUMNS, columns_of, strict=True)
                ]
                await conn.execute(_UPSERT_SQL, arrays)

    async def get(self, source: str) -> SourceRow | None:
        """Return the row for ``source``, or None."""
        return (await self.get_many([source])).get(source)

    async def get_many(self, sources: Iterable[str]) -> dict[str, SourceRow]:
        """Return the rows that exist among ``sources``, in one query."""
        wanted = list(dict.fromkeys(sources))
        async with self._read("reading sources") as conn:
            return await self._rows(conn, wanted)

    async def mirrored_mapping(self, base_url: str) -> dict[str, str]:
        """Return source -> local URL for every mirrored source."""
        sql = """SELECT s.source, o.sha256, o.ext FROM sources s JOIN objects o
            ON o.sha256 = s.sha256 WHERE s.status = 'mirrored'"""
        async with self._read("reading the mapping") as conn:
            found = await self._all(conn, sql)
        return {src: local_url(base_url, sha, ext) for src, sha, ext in found}

    async def counts(self) -> dict[str, int]:
        """Return how many sources have each status, zero included."""
        result = dict.fromkeys(STATUSES, 0)
        async with self._read("counting") as conn:
            found = await self._all(conn, "SELECT status, COUNT(*) FROM sources GROUP BY status")
        result.update((status, int(count)) for status, count in found)
        return result

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
        now = self._clock()
        sql = f"""INSERT INTO posts ({_POST_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (path) DO UPDATE SET size = EXCLUDED.size,
            mtime_ns = EXCLUDED.mtime_ns, inode = EXCLUDED.inode, sha256 = EXCLUDED.sha256,
            scanned_at = EXCLUDED.scanned_at,
            rewritten_at = COALESCE(EXCLUDED.rewritten_at, posts.rewritten_at),
            next_check = EXCLUDED.next_check, mode = EXCLUDED.mode"""
        stamp = now if rewritten else None
        values = (path, size, mtime_ns, inode, sha256, now, stamp, next_check, mode)
        async with self._write("recording a post") as conn:
            await conn.execute(sql, values)

    async def record_posts(
        self, rows: Iterable[tuple[str, int, int, int, str, float | None, str | None]]
    ) -> None:
        """Record finished posts in one statement."""
        batch = list(rows)
        if not batch:
            return
        now = float(self._clock())
        paths, sizes, mtimes, inodes, shas, dues, modes = (
            list(c) for c in zip(*batch, strict=True)
        )
        sql = f"""INSERT INTO posts ({_POST_COLUMNS}) SELECT p, s, m, i, h, %s, NULL, d, o
            FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::int8[], %s::text[],
            %s::float8[], %s::text[]) AS u(p, s, m, i, h, d, o)
            ON CONFLICT (path) DO UPDATE SET size = EXCLUDED.size,
            mtime_ns = EXCLUDED.mtime_ns, inode = EXCLUDED.inode, sha256 = EXCLUDED.sha256,
            scanned_at = EXCLUDED.scanned_at, next_check = EXCLUDED.next_check,
            mode = EXCLUDED.mode"""
        params = [now, paths, sizes, mtimes, inodes, shas, _floats(dues), modes]
        async with self._write("recording posts") as conn:
            await conn.execute(sql, params)

    async def post_states_in(self, folder: str) -> dict[str, PostState]:
        """Return every recorded post under ``folder`` (subfolders included), by path."""
        low, high = folder + "/", folder + "0"  # "0" follows "/": the range is the prefix
        sql = f"SELECT {_POST_COLUMNS} FROM posts WHERE path > %s AND path < %s"
        async with self._read("reading posts") as conn:
            found = await self._all(conn, sql, (low, high))
        return {row[0]: PostState(*row) for row in found}

    async def post_state(self, path: str) -> PostState | None:
        """Return what ``path`` looked like when last recorded, or None."""
        sql = f"SELECT {_POST_COLUMNS} FROM posts WHERE path = %s"
        async with self._read("reading a post") as conn:
            found = await self._all(conn, sql, (path,))
        return PostState(*found[0]) if found else None

    async def record_spans(
        self,
        post: str,
        spans: Sequence[Span],
        sources: Sequence[str | None],
        *,
        before_sha256: str | None = None,
        after_sha256: str | None = None,
    ) -> int | None:
        """Record one rewrite of ``post``; return its generation, or None for no spans."""
        if len(spans) != len(sources):
            raise ValueError(f"{len(spans)} spans but {len(sources)} sources for {post}")
        if not spans:
            return None
        async with self._write("recording spans") as conn:
            newest = await self._all(
                conn,
                "SELECT generation, before_sha256 FROM rewrites WHERE post = %s "
                "ORDER BY generation DESC LIMIT 1 FOR UPDATE",
                (post,),
            )
            generation = 1 if not newest else int(newest[0][0]) + 1
            if newest and before_sha256 is not None and newest[0][1] == before_sha256:
                generation = int(newest[0][0])
                await conn.execute(
                    "DELETE FROM rewrites WHERE post = %s AND generation = %s", (post, generation)
                )
            await conn.execute(
                "INSERT INTO rewrites VALUES (%s, %s, %s, %s, %s)",
                (post, generation, before_sha256, after_sha256, self._clock()),
            )
            await conn.execute(
                """INSERT INTO spans SELECT %s, %s, seq - 1, o, a, b, s FROM unnest(%s::int8[],
                %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS u(o, a, b, s, seq)""",
                (
                    post,
                    generation,
                    [span.offset for span in spans],
                    [span.old for span in spans],
                    [span.new for span in spans],
                    list(sources),
                ),
            )
        return generation

    async def spans_for(self, post: str) -> list[Rewrite]:
        """Return the rewrites of ``post``, newest first: the order to undo them in."""
        async with self._read("reading spans", snapshot=True) as conn:
            heads = await self._all(
                conn,
                "SELECT generation, before_sha256, after_sha256, created FROM rewrites "
                "WHERE post = %s ORDER BY generation DESC",
                (post,),
            )
            found = await self._all(
                conn,
                """SELECT generation, "offset", old, new, source FROM spans WHERE post = %s
                ORDER BY generation, seq""",
                (post,),
            )
        spans: dict[int, list[RecordedSpan]] = {int(head[0]): [] for head in heads}
        for generation, *rest in found:
            spans[int(generation)].append(RecordedSpan(*rest))
        return [
            Rewrite(post, int(g), before, after, created, tuple(spans[int(g)]))
            for g, before, after, created in heads
        ]

    async def forget_rewrite(self, post: str, generation: int) -> None:
        """Drop one generation of ``post``'s rewrites, once it is undone or never landed."""
        async with self._write("forgetting a rewrite") as conn:
            await conn.execute(
                "DELETE FROM rewrites WHERE post = %s AND generation = %s", (post, generation)
            )

    async def _counter(self, conn: Conn) -> tuple[int, int]:
        found = await self._all(conn, "SELECT seq, horizon FROM catalog_counter")
        return int(found[0][0]), int(found[0][1])

    async def catalog(self) -> tuple[list[CatalogRow], int]:
        """Return every catalog row and the change cursor they are current at."""
        async with self._read("reading the catalog", snapshot=True) as conn:
            cursor, _horizon = await self._counter(conn)
            found = await self._all(conn, _CATALOG_SQL.format(where_s="", where_v=""))
        self._seen = cursor
        return [CatalogRow(*values) for values in found], cursor

    async def catalog_changes(self, since: int) -> tuple[list[CatalogRow], list[str], int]:
        """Return what changed after cursor ``since`` (see the protocol)."""
        async with self._read("reading catalog changes", snapshot=True) as conn:
            cursor, horizon = await self._counter(conn)
            if since < horizon or since > cursor:
                raise CursorExpired(
                    f"manifest {self._name}: change cursor {since} is outside {horizon}..{cursor}"
                )
            sql = "SELECT DISTINCT source FROM catalog_log WHERE seq > %s"
            changed = [source for (source,) in await self._all(conn, sql, (since,))]
            found: list[tuple[Any, ...]] = []
            if changed:
                sql = _CATALOG_SQL.format(
                    where_s="WHERE s.source = ANY(%s::text[])",
                    where_v="WHERE v.source = ANY(%s::text[])",
                )
                found = await self._all(conn, sql, (changed, changed))
        rows = [CatalogRow(*values) for values in found]
        present = {row.source for row in rows}
        self._seen = cursor
        return rows, [source for source in changed if source not in present], cursor

    async def _listening(self) -> _Listener:
        async with self._listen_lock:
            if self._listener is not None and not self._listener.task.done():
                return self._listener
            if self._listener is not None:
                await self._listener.close()
                self._listener = None
            async with self._errors("listening for changes"):
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                try:
                    for channel in _Listener.CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                except BaseException:
                    await conn.close()
                    raise
            self._listener = _Listener(conn)
            return self._listener

    async def wait_for_change(self, timeout: float) -> bool:  # noqa: ASYNC109 - issue #12's API
        """Wait for a NOTIFY of a commit past the cursor last returned, up to ``timeout`` s."""
        listener = await self._listening()
        event = listener.event("catalog")  # before the check, so no commit slips between
        async with self._read("reading the change cursor") as conn:
            cursor, _horizon = await self._counter(conn)
        if cursor != self._seen:
            return True
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def record_served(self, source: str, result: SourceResult) -> None:
        """Record what open mode fetched for a URL no post names (``result`` is mirrored)."""
        if result.status != "mirrored":
            raise ValueError(f"only a mirrored result is served, not {result.status!r}")
        now = self._clock()
        obj = (result.sha256, result.ext, result.size, result.format, result.width, result.height)
        async with self._write("recording a served object") as conn:
            await conn.execute(_LOCK_FEED)
            await conn.execute(
                "INSERT INTO objects VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (*obj, now),
            )
            await conn.execute(
                """INSERT INTO served VALUES (%s, %s, %s) ON CONFLICT (source) DO UPDATE
                SET sha256 = EXCLUDED.sha256, last_served = EXCLUDED.last_served""",
                (source, result.sha256, now),
            )

    async def touch_served(self, seen: Mapping[str, float]) -> None:
        """Note when open-mode sources were last served (one statement)."""
        if not seen:
            return
        sql = """UPDATE served SET last_served = GREATEST(served.last_served, u.at)
            FROM unnest(%s::text[], %s::float8[]) AS u(src, at) WHERE served.source = u.src"""
        async with self._write("noting served objects") as conn:
            await conn.execute(sql, (list(seen), _floats(seen.values())))

    async def evict_served(self, max_bytes: int, delete: Delete) -> list[tuple[str, str]]:
        """Evict beyond ``max_bytes`` under the exclusive eviction lock, files deleted inside."""
        evicted: list[tuple[str, str]] = []
        failure: BaseException | None = None
        now = self._clock()
        async with self._write("evicting served objects") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", EVICT_KEY)
            await conn.execute(_LOCK_FEED)
            await conn.execute("DELETE FROM pins WHERE until <= %s", (now,))
            kept = 0
            plan: list[tuple[str, str]] = []
            for sha256, ext, size in await self._all(conn, _EVICTABLE_SQL, (now,)):
                kept += size
                if kept > max_bytes:
                    plan.append((sha256, ext))
            for sha256, ext in plan:
                try:
                    await delete(sha256, ext)
                except BaseException as exc:
                    # Commit what is deleted: rolling back would leave rows naming lost files.
                    failure = exc
                    break
                evicted.append((sha256, ext))
            if evicted:
                shas = [sha for sha, _ext in evicted]
                await conn.execute("DELETE FROM served WHERE sha256 = ANY(%s::text[])", (shas,))
                await conn.execute("DELETE FROM objects WHERE sha256 = ANY(%s::text[])", (shas,))
        if failure is not None:
            raise failure
        return evicted

    async def objects(self) -> list[ObjectRow]:
        """Return every ``objects`` row, by sha256, with the URLs naming it (one statement)."""
        sql = """SELECT o.sha256, o.ext, o.bytes,
            ARRAY(SELECT s.source FROM sources s WHERE s.sha256 = o.sha256),
            ARRAY(SELECT v.source FROM served v WHERE v.sha256 = o.sha256)
            FROM objects o ORDER BY o.sha256"""
        async with self._read("reading objects") as conn:
            found = await self._all(conn, sql)
        return [
            ObjectRow(sha, ext, int(size), tuple(sorted(by)), tuple(sorted(sv)))
            for sha, ext, size, by, sv in found
        ]

    async def forget_objects(self, reasons: Mapping[str, str]) -> int:
        """Forget objects (sha256 -> reason) so the sources naming them are fetched again."""
        if not reasons:
            return 0
        shas, why = list(reasons), list(reasons.values())
        sql = """UPDATE sources s SET status = 'failed', reason = r.why, sha256 = NULL,
            fetched_from = NULL, via = NULL, etag = NULL, last_modified = NULL, next_attempt = NULL
            FROM unnest(%s::text[], %s::text[]) AS r(sha, why) WHERE s.sha256 = r.sha
            RETURNING 1"""
        async with self._write("forgetting objects") as conn:
            await conn.execute(_LOCK_FEED)
            marked = len(await self._all(conn, sql, (shas, why)))
            await conn.execute("DELETE FROM served WHERE sha256 = ANY(%s::text[])", (shas,))
            await conn.execute("DELETE FROM objects WHERE sha256 = ANY(%s::text[])", (shas,))
            await conn.execute("UPDATE posts SET next_check = 0")
        return marked

    async def host_profile(self, host: str) -> str | None:
        """Return the request profile that last worked for ``host``, or None."""
        async with self._read("reading a host") as conn:
            found = await self._all(conn, "SELECT profile FROM hosts WHERE host = %s", (host,))
        return found[0][0] if found else None

    async def record_host_profile(self, host: str, profile: str | None) -> None:
        """Remember which request profile worked for ``host`` (None: the default request)."""
        sql = """INSERT INTO hosts VALUES (%s, %s, %s) ON CONFLICT (host) DO UPDATE
            SET profile = EXCLUDED.profile, updated = EXCLUDED.updated"""
        async with self._write("recording a host") as conn:
            await conn.execute(sql, (host, profile, self._clock()))

    async def report_rows(self) -> ReportRows:
        """Return what ``mirror report`` shows, from one snapshot."""
        async with self._read("reading the report", snapshot=True) as conn:
            found = await self._all(
                conn,
                "SELECT source, status, reason, sha256, attempts::text, failures FROM sources",
            )
            totals = await self._all(conn, "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM objects")
            shown = await self._all(
                conn,
                """SELECT o.sha256, o.ext, o.bytes, o.width, o.height FROM objects o
                WHERE EXISTS (SELECT 1 FROM sources s WHERE s.sha256 = o.sha256
                AND s.status = 'mirrored') ORDER BY o.created, o.sha256""",
            )
        sources = tuple(
            ReportSource(src, status, reason, sha, rules.load_attempts(tried), int(failures))
            for src, status, reason, sha, tried, failures in found
        )
        gallery = tuple(GalleryObject(sha, ext, int(size), w, h) for sha, ext, size, w, h in shown)
        return ReportRows(sources, int(totals[0][0]), int(totals[0][1]), gallery)

    async def pin(self, sha256s: Iterable[str], holder: str, until: float) -> set[str]:
        """Pin objects under the shared eviction lock; return those that have no object."""
        wanted = list(dict.fromkeys(sha256s))
        async with self._write("pinning objects") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", EVICT_KEY)
            await conn.execute(
                """INSERT INTO pins SELECT sha, %s, %s FROM unnest(%s::text[]) AS u(sha)
                ON CONFLICT (sha256, holder) DO UPDATE SET until = EXCLUDED.until""",
                (holder, float(until), wanted),
            )
            sql = "SELECT sha256 FROM objects WHERE sha256 = ANY(%s::text[])"
            present = {sha for (sha,) in await self._all(conn, sql, (wanted,))}
        return set(wanted) - present

    async def unpin(self, holder: str) -> None:
        """Drop every pin of ``holder``."""
        async with self._write("unpinning objects") as conn:
            await conn.execute("DELETE FROM pins WHERE holder = %s", (holder,))

    async def lease(self, key: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease ``key`` for ``ttl`` seconds; tell whether ``holder`` has it."""
        now = self._clock()
        sql = """INSERT INTO leases VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE
            SET holder = EXCLUDED.holder, until = EXCLUDED.until
            WHERE leases.until <= %s OR leases.holder = EXCLUDED.holder RETURNING 1"""
        async with self._write("taking a lease") as conn:
            found = await self._all(conn, sql, (key_hash(key), holder, now + ttl, now))
        return bool(found)

    async def release(self, key: str, holder: str) -> None:
        """Give the lease ``key`` back if ``holder`` has it; NOTIFY its waiters at commit."""
        digest = key_hash(key)
        async with self._write("releasing a lease") as conn:
            await conn.execute(
                "DELETE FROM leases WHERE key = %s AND holder = %s", (digest, holder)
            )
            await conn.execute("SELECT pg_notify('mirror_lease', %s)", (digest.hex(),))

    async def _lease_until(self, key: str) -> float | None:
        sql = "SELECT until FROM leases WHERE key = %s AND until > %s"
        async with self._read("reading a lease") as conn:
            found = await self._all(conn, sql, (key_hash(key), self._clock()))
        return float(found[0][0]) if found else None

    async def wait_released(self, key: str, timeout: float) -> bool:  # noqa: ASYNC109 - as above
        """Wait for the NOTIFY of the lease's release (or its expiry), up to ``timeout`` s."""
        listener = await self._listening()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        topic = f"lease:{key_hash(key).hex()}"
        while True:
            event = listener.event(topic)  # before the check, so no release slips between
            until = await self._lease_until(key)
            if until is None:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            expiry = max(until - self._clock(), 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, expiry))
            if listener.task.done():
                listener = await self._listening()

    async def negative_get(self, key: str) -> NegativeEntry | None:
        """Return the remembered failure of ``key`` (expired or not), or None."""
        sql = "SELECT until, count, status, reason FROM negative WHERE key = %s"
        async with self._read("reading the negative cache") as conn:
            found = await self._all(conn, sql, (key_hash(key),))
        if not found:
            return None
        until, count, status, reason = found[0]
        return NegativeEntry(float(until), int(count), int(status), reason)

    async def negative_put(
        self, key: str, until: float, count: int, status: int, reason: str
    ) -> None:
        """Remember a failure of ``key`` until ``until``; trim entries long expired."""
        sql = """INSERT INTO negative VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE
            SET until = EXCLUDED.until, count = EXCLUDED.count, status = EXCLUDED.status,
            reason = EXCLUDED.reason"""
        async with self._write("writing the negative cache") as conn:
            await conn.execute(
                "DELETE FROM negative WHERE until < %s", (self._clock() - NEGATIVE_KEPT,)
            )
            await conn.execute(sql, (key_hash(key), float(until), count, status, reason))

    def lock(self, command: str) -> AbstractAsyncContextManager[None]:
        """Return the store lock: a session advisory lock on a connection of its own."""
        return _held(AdvisoryStoreLock(self.url, self._name, command))


@asynccontextmanager
async def _held(lock: AdvisoryStoreLock) -> AsyncIterator[None]:
    async with lock:
        yield
