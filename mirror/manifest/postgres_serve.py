"""
The PostgreSQL manifest's side for serve: catalog and change feed, open-mode objects, pins,
leases and the negative cache.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

from mirror.manifest.base import (
    NEGATIVE_KEPT,
    CursorExpired,
    Delete,
    NegativeEntry,
    key_hash,
)
from mirror.manifest.lock import EVICT_KEY
from mirror.manifest.postgres_conn import (
    _LOCK_FEED,
    Base,
    Conn,
    _floats,
    _Listener,
)
from mirror.manifest.sqlite import (
    CatalogRow,
    SourceResult,
)

_CATALOG_SQL = """SELECT s.source, s.status, s.sha256, o.ext, o.bytes, o.format FROM sources s
    LEFT JOIN objects o ON o.sha256 = s.sha256 {where_s}
    UNION ALL SELECT v.source, 'served', v.sha256, o.ext, o.bytes, o.format FROM served v
    JOIN objects o ON o.sha256 = v.sha256 {where_v}"""
_EVICTABLE_SQL = """SELECT o.sha256, o.ext, o.bytes FROM served v JOIN objects o
    ON o.sha256 = v.sha256
    WHERE NOT EXISTS (SELECT 1 FROM sources s WHERE s.sha256 = v.sha256)
    AND NOT EXISTS (SELECT 1 FROM pins p WHERE p.sha256 = v.sha256 AND p.until > %s)
    GROUP BY o.sha256, o.ext, o.bytes ORDER BY MAX(v.last_served) DESC, o.sha256"""


class ServeMixin(Base):
    """Feed serve's catalog and hold the state several serve nodes share."""

    _listener: _Listener | None  # set up by PostgresManifest.__init__

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

    async def negative_forget(self, key: str) -> None:
        """Forget the remembered failure of ``key`` (it has just been fetched)."""
        async with self._write("writing the negative cache") as conn:
            await conn.execute("DELETE FROM negative WHERE key = %s", (key_hash(key),))
