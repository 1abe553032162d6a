"""
The PostgreSQL manifest's sources, objects and hosts: recording results, reading rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mirror.manifest import sqlite_rows as rules
from mirror.manifest.base import (
    GalleryObject,
    ReportRows,
    ReportSource,
)
from mirror.manifest.postgres_conn import (
    _LOCK_FEED,
    Base,
    Conn,
    _floats,
)
from mirror.manifest.sqlite import (
    STATUSES,
    ObjectRow,
    SourceResult,
    SourceRow,
)
from mirror.store import local_url

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


class SourcesMixin(Base):
    """Record and read sources, objects, hosts and the report's rows."""

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
                "SELECT source, status, reason, sha256, attempts::text, failures, via,"
                " fetched_from FROM sources",
            )
            totals = await self._all(conn, "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM objects")
            shown = await self._all(
                conn,
                """SELECT o.sha256, o.ext, o.bytes, o.width, o.height FROM objects o
                WHERE EXISTS (SELECT 1 FROM sources s WHERE s.sha256 = o.sha256
                AND s.status = 'mirrored') ORDER BY o.created, o.sha256""",
            )
        sources = tuple(
            ReportSource(
                src, status, reason, sha, rules.load_attempts(tried), int(failures), via, fetched
            )
            for src, status, reason, sha, tried, failures, via, fetched in found
        )
        gallery = tuple(GalleryObject(sha, ext, int(size), w, h) for sha, ext, size, w, h in shown)
        return ReportRows(sources, int(totals[0][0]), int(totals[0][1]), gallery)
