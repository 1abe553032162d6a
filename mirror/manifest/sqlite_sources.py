"""
The SQLite manifest's sources, objects and hosts: recording results, reading rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from mirror.manifest.base import (
    GalleryObject,
    ReportRows,
    ReportSource,
)
from mirror.manifest.sqlite_conn import _CHUNK, Base
from mirror.manifest.sqlite_rows import (
    _UPSERT_SQL,
    STATUSES,
    ObjectRow,
    SourceResult,
    SourceRow,
    _merge,
    _row,
    _upsert_values,
    load_attempts,
)
from mirror.store import local_url

_ROW_SQL = """SELECT s.source, s.status, s.reason, s.sha256, o.ext, o.bytes, o.format, o.width,
    o.height, s.fetched_from, s.attempts, s.etag, s.last_modified, s.first_seen, s.last_attempt,
    s.next_attempt, s.failures, s.via FROM sources s LEFT JOIN objects o ON o.sha256 = s.sha256"""


class SourcesMixin(Base):
    """Record and read sources, objects, hosts and the report's rows."""

    def record_results(self, rows: Iterable[SourceResult]) -> None:
        """
        Merge a batch of results in one transaction, adding the objects mirrored rows name.

        Write each object to the store before calling this (see the module docstring).
        """
        now = self._clock()
        batch = list(rows)
        with self.transaction() as conn, self._errors("recording results"):
            merged = self.get_many(r.source for r in batch)
            objects = [
                (r.sha256, r.ext, r.size, r.format, r.width, r.height, now)
                for r in batch
                if r.status == "mirrored"
            ]
            conn.executemany(
                "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", objects
            )
            final: dict[str, SourceRow] = {}
            for result in batch:
                row = _merge(merged.get(result.source), result, now)
                if row is not None:
                    # A later duplicate in the batch merges onto this row, not the stored one.
                    merged[result.source] = final[result.source] = row
            conn.executemany(_UPSERT_SQL, map(_upsert_values, final.values()))

    def get(self, source: str) -> SourceRow | None:
        """Return the row for ``source``, or None when it was never recorded."""
        return self.get_many([source]).get(source)

    def get_many(self, sources: Iterable[str]) -> dict[str, SourceRow]:
        """Return the rows that exist among ``sources``, by source."""
        wanted = list(dict.fromkeys(sources))
        found: dict[str, SourceRow] = {}
        with self._lock, self._errors("reading sources"):
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for values in self.conn.execute(f"{_ROW_SQL} WHERE s.source IN ({marks})", chunk):
                    found[values[0]] = _row(values)
        return found

    def mirrored_mapping(self, base_url: str) -> dict[str, str]:
        """Return source -> local URL for every mirrored source."""
        sql = """SELECT s.source, o.sha256, o.ext FROM sources s JOIN objects o
            ON o.sha256 = s.sha256 WHERE s.status = 'mirrored'"""
        with self._lock, self._errors("reading the mapping"):
            return {src: local_url(base_url, sha, ext) for src, sha, ext in self.conn.execute(sql)}

    def counts(self) -> dict[str, int]:
        """Return how many sources have each status, zero included."""
        result = dict.fromkeys(STATUSES, 0)
        with self._lock, self._errors("counting"):
            sql = "SELECT status, COUNT(*) FROM sources GROUP BY status"
            result.update(self.conn.execute(sql))
        return result

    def objects(self) -> list[ObjectRow]:
        """Return every ``objects`` row, by sha256, with the sources and served URLs naming it."""
        # One statement, so one consistent snapshot even beside a writer.
        sql = """SELECT o.sha256, o.ext, o.bytes,
            (SELECT json_group_array(s.source) FROM sources s WHERE s.sha256 = o.sha256),
            (SELECT json_group_array(v.source) FROM served v WHERE v.sha256 = o.sha256)
            FROM objects o ORDER BY o.sha256"""
        with self._lock, self._errors("reading objects"):
            rows = self.conn.execute(sql).fetchall()
        return [
            ObjectRow(sha, ext, size, tuple(sorted(json.loads(by))), tuple(sorted(json.loads(sv))))
            for sha, ext, size, by, sv in rows
        ]

    def forget_objects(self, reasons: Mapping[str, str]) -> int:
        """
        Forget objects (sha256 -> reason) so that the sources naming them are fetched again.

        Each ``sources`` row naming one becomes ``failed`` with that reason, without object,
        validators or backoff (``next_attempt`` NULL: due at once); the ``served`` rows naming
        one and its ``objects`` row are deleted; every post is due again, so the stat fast path
        does not skip a post that now lacks a reference. One transaction. The caller deletes the
        files *after* this commits, so no row ever names a missing file. Returns how many
        sources were marked.
        """
        sql = """UPDATE sources SET status = 'failed', reason = ?, sha256 = NULL,
            fetched_from = NULL, via = NULL, etag = NULL, last_modified = NULL, next_attempt = NULL
            WHERE sha256 = ?"""
        marked = 0
        with self.transaction() as conn, self._errors("forgetting objects"):
            for sha256, reason in reasons.items():
                marked += conn.execute(sql, (reason, sha256)).rowcount
                conn.execute("DELETE FROM served WHERE sha256 = ?", (sha256,))
                conn.execute("DELETE FROM objects WHERE sha256 = ?", (sha256,))
            if reasons:
                conn.execute("UPDATE posts SET next_check = 0")
        return marked

    def host_profile(self, host: str) -> str | None:
        """Return the request profile that last worked for ``host``, or None."""
        with self._lock, self._errors("reading a host"):
            found = self.conn.execute("SELECT profile FROM hosts WHERE host = ?", (host,))
            row = found.fetchone()
        return None if row is None else row[0]

    def record_host_profile(self, host: str, profile: str | None) -> None:
        """Remember which request profile worked for ``host`` (None: the default request)."""
        sql = "INSERT OR REPLACE INTO hosts VALUES (?, ?, ?)"
        with self.transaction() as conn, self._errors("recording a host"):
            conn.execute(sql, (host, profile, self._clock()))

    def report_rows(self) -> ReportRows:
        """Return what ``mirror report`` shows, from one snapshot."""
        with self._snapshot("reading the report") as conn:
            sql = (
                "SELECT source, status, reason, sha256, attempts, failures, via, fetched_from"
                " FROM sources"
            )
            sources = tuple(
                ReportSource(source, status, reason, sha, load_attempts(tried), failures, *where)
                for source, status, reason, sha, tried, failures, *where in conn.execute(sql)
            )
            sql = "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM objects"
            count, total = conn.execute(sql).fetchone()
            sql = """SELECT o.sha256, o.ext, o.bytes, o.width, o.height FROM objects o
                WHERE EXISTS (SELECT 1 FROM sources s WHERE s.sha256 = o.sha256
                AND s.status = 'mirrored') ORDER BY o.created, o.sha256"""
            gallery = tuple(GalleryObject(*values) for values in conn.execute(sql))
        return ReportRows(sources, count, total, gallery)
