"""
The SQLite manifest's side for serve: catalog and change feed, open-mode objects, pins,
leases and the negative cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

from mirror.manifest.base import (
    NEGATIVE_KEPT,
    CursorExpired,
    NegativeEntry,
    key_hash,
)
from mirror.manifest.sqlite_conn import _CHUNK, Base
from mirror.manifest.sqlite_rows import (
    CatalogRow,
    SourceResult,
)

_CATALOG_OF_SQL = """SELECT s.source, s.status, s.sha256, o.ext, o.bytes, o.format
    FROM sources s LEFT JOIN objects o ON o.sha256 = s.sha256 WHERE s.source IN ({marks})
    UNION ALL SELECT v.source, 'served', v.sha256, o.ext, o.bytes, o.format FROM served v
    JOIN objects o ON o.sha256 = v.sha256 WHERE v.source IN ({marks})"""
_CURSOR_SQL = "SELECT seq FROM sqlite_sequence WHERE name = 'catalog_log'"
# Open-mode objects no post names and no live pin holds, most recently served first.
_EVICTABLE_SQL = """SELECT o.sha256, o.ext, o.bytes FROM served v JOIN objects o
    ON o.sha256 = v.sha256
    WHERE NOT EXISTS (SELECT 1 FROM sources s WHERE s.sha256 = v.sha256)
    AND NOT EXISTS (SELECT 1 FROM pins p WHERE p.sha256 = v.sha256 AND p.until > ?)
    GROUP BY o.sha256 ORDER BY MAX(v.last_served) DESC, o.sha256"""


class ServeMixin(Base):
    """Feed serve's catalog and hold the state several serve workers share."""

    def catalog(self) -> list[CatalogRow]:
        """Return every source and open-mode row with its object, for ``serve``'s URL map."""
        sql = """SELECT s.source, s.status, s.sha256, o.ext, o.bytes, o.format FROM sources s
            LEFT JOIN objects o ON o.sha256 = s.sha256
            UNION ALL SELECT v.source, 'served', v.sha256, o.ext, o.bytes, o.format FROM served v
            JOIN objects o ON o.sha256 = v.sha256"""
        with self._lock, self._errors("reading the catalog"):
            return [CatalogRow(*values) for values in self.conn.execute(sql)]

    def record_served(self, source: str, result: SourceResult) -> None:
        """Record what open mode fetched for a URL no post names (``result`` is mirrored)."""
        if result.status != "mirrored":
            raise ValueError(f"only a mirrored result is served, not {result.status!r}")
        now = self._clock()
        obj = (result.sha256, result.ext, result.size, result.format, result.width, result.height)
        with self.transaction() as conn, self._errors("recording a served object"):
            conn.execute(
                "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (*obj, now),
            )
            conn.execute(
                "INSERT OR REPLACE INTO served VALUES (?, ?, ?)", (source, result.sha256, now)
            )

    def touch_served(self, seen: Mapping[str, float]) -> None:
        """Note when open-mode sources were last served (one batch, one transaction)."""
        sql = "UPDATE served SET last_served = MAX(last_served, ?) WHERE source = ?"
        with self.transaction() as conn, self._errors("noting served objects"):
            conn.executemany(sql, [(when, source) for source, when in seen.items()])

    def evict_served(self, max_bytes: int) -> list[tuple[str, str]]:
        """
        Forget the least recently served open-mode objects beyond ``max_bytes`` in all.

        Objects a ``sources`` row names or a live pin holds are never candidates. Returns
        ``(sha256, ext)`` of the objects forgotten; the caller deletes their files *after* this
        commits, so no row ever names a missing file.
        """
        with self.transaction():
            evicted = self.evict_plan(max_bytes)
            self.drop_objects(sha for sha, _ext in evicted)
        return evicted

    @staticmethod
    def _cursor(conn: sqlite3.Connection) -> int:
        found = conn.execute(_CURSOR_SQL).fetchone()
        return 0 if found is None else int(found[0])

    def change_cursor(self) -> int:
        """Return the change feed's cursor: one cheap query, for polling."""
        with self._lock, self._errors("reading the change cursor"):
            return self._cursor(self.conn)

    def catalog_snapshot(self) -> tuple[list[CatalogRow], int]:
        """Return :meth:`catalog` and the change cursor it is current at."""
        with self._snapshot("reading the catalog"):
            return self.catalog(), self._cursor(self.conn)

    def catalog_changes(self, since: int) -> tuple[list[CatalogRow], list[str], int]:
        """
        Return the catalog rows of the sources changed after ``since``, those now gone, the cursor.

        Raises:
            CursorExpired: ``since`` is older than the trimmed log or newer than the cursor.
        """
        with self._snapshot("reading catalog changes") as conn:
            cursor = self._cursor(conn)
            horizon: int = conn.execute("SELECT seq FROM catalog_horizon").fetchone()[0]
            if since < horizon or since > cursor:
                raise CursorExpired(
                    f"manifest {self.path}: change cursor {since} is outside {horizon}..{cursor}"
                )
            sql = "SELECT DISTINCT source FROM catalog_log WHERE seq > ?"
            changed = [source for (source,) in conn.execute(sql, (since,))]
            rows: list[CatalogRow] = []
            for start in range(0, len(changed), _CHUNK // 2):
                chunk = changed[start : start + _CHUNK // 2]
                marks = ",".join("?" * len(chunk))
                found = conn.execute(_CATALOG_OF_SQL.format(marks=marks), chunk + chunk)
                rows += (CatalogRow(*values) for values in found)
        present = {row.source for row in rows}
        return rows, [source for source in changed if source not in present], cursor

    def pin(self, sha256s: Iterable[str], holder: str, until: float) -> set[str]:
        """Pin objects for ``holder`` until ``until``; return those that have no object."""
        wanted = list(dict.fromkeys(sha256s))
        sql = """INSERT INTO pins VALUES (?, ?, ?)
            ON CONFLICT (sha256, holder) DO UPDATE SET until = excluded.until"""
        missing = set(wanted)
        with self.transaction() as conn, self._errors("pinning objects"):
            conn.executemany(sql, [(sha, holder, until) for sha in wanted])
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found = conn.execute(f"SELECT sha256 FROM objects WHERE sha256 IN ({marks})", chunk)
                missing.difference_update(sha for (sha,) in found)
        return missing

    def unpin(self, holder: str) -> None:
        """Drop every pin of ``holder``."""
        with self.transaction() as conn, self._errors("unpinning objects"):
            conn.execute("DELETE FROM pins WHERE holder = ?", (holder,))

    def evict_plan(self, max_bytes: int) -> list[tuple[str, str]]:
        """
        Return ``(sha256, ext)`` of the open-mode objects beyond ``max_bytes``, to evict.

        Call it inside :meth:`transaction` and forget them with :meth:`drop_objects` in the same
        one, so nothing can pin or name them in between. Expired pins are dropped here.
        """
        now = self._clock()
        with self.transaction() as conn, self._errors("evicting served objects"):
            conn.execute("DELETE FROM pins WHERE until <= ?", (now,))
            kept = 0
            evicted: list[tuple[str, str]] = []
            for sha256, ext, size in conn.execute(_EVICTABLE_SQL, (now,)).fetchall():
                kept += size
                if kept > max_bytes:
                    evicted.append((sha256, ext))
        return evicted

    def drop_objects(self, sha256s: Iterable[str]) -> None:
        """Delete the ``served`` and ``objects`` rows of evicted objects."""
        shas = list(sha256s)
        with self.transaction() as conn, self._errors("evicting served objects"):
            for start in range(0, len(shas), _CHUNK):
                chunk = shas[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM served WHERE sha256 IN ({marks})", chunk)
                conn.execute(f"DELETE FROM objects WHERE sha256 IN ({marks})", chunk)

    def lease(self, key: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease ``key`` for ``ttl`` seconds; tell whether ``holder`` has it."""
        now = self._clock()
        sql = """INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE
            SET holder = excluded.holder, until = excluded.until
            WHERE leases.until <= ? OR leases.holder = excluded.holder"""
        with self.transaction() as conn, self._errors("taking a lease"):
            taken = conn.execute(sql, (key_hash(key), holder, now + ttl, now)).rowcount
        return taken == 1

    def release(self, key: str, holder: str) -> None:
        """Give the lease ``key`` back if ``holder`` has it."""
        sql = "DELETE FROM leases WHERE key = ? AND holder = ?"
        with self.transaction() as conn, self._errors("releasing a lease"):
            conn.execute(sql, (key_hash(key), holder))

    def lease_held(self, key: str) -> float | None:
        """Return until when someone holds the lease ``key``, or None when it is free."""
        sql = "SELECT until FROM leases WHERE key = ? AND until > ?"
        with self._lock, self._errors("reading a lease"):
            found = self.conn.execute(sql, (key_hash(key), self._clock())).fetchone()
        return None if found is None else float(found[0])

    def negative_get(self, key: str) -> NegativeEntry | None:
        """Return the remembered failure of ``key`` (expired or not), or None."""
        sql = "SELECT until, count, status, reason FROM negative WHERE key = ?"
        with self._lock, self._errors("reading the negative cache"):
            found = self.conn.execute(sql, (key_hash(key),)).fetchone()
        return None if found is None else NegativeEntry(*found)

    def negative_put(self, key: str, until: float, count: int, status: int, reason: str) -> None:
        """Remember a failure of ``key`` until ``until``; trim entries long expired."""
        sql = "INSERT OR REPLACE INTO negative VALUES (?, ?, ?, ?, ?)"
        with self.transaction() as conn, self._errors("writing the negative cache"):
            conn.execute("DELETE FROM negative WHERE until < ?", (self._clock() - NEGATIVE_KEPT,))
            conn.execute(sql, (key_hash(key), until, count, status, reason))

    def negative_forget(self, key: str) -> None:
        """Forget the remembered failure of ``key`` (it has just been fetched)."""
        with self.transaction() as conn, self._errors("writing the negative cache"):
            conn.execute("DELETE FROM negative WHERE key = ?", (key_hash(key),))
