"""
The SQLite manifest: what every source URL became, which objects exist, how posts were rewritten.

One SQLite file, ``<store>/manifest.sqlite3``, in WAL mode so readers (``serve``, reports) never
block the one writer. Times are Unix seconds (REAL). Tables:

``objects``  sha256 PK, ext, bytes (``size`` in Python), format, width, height, created.
``sources``  source PK (the URL as written in the post); status (mirrored|failed|blocked|skipped);
             reason (the report's reason code; on a mirrored row, why the latest refresh failed);
             sha256 -> objects (set iff the source has an object); fetched_from (the URL that
             delivered the bytes, after redirects); via (the source kind and profile:
             origin|proxy|https|alternates|wayback|origin/<profile>); attempts (JSON list of
             {source, url, outcome, detail} from the latest try); etag,
             last_modified; first_seen, last_attempt, next_attempt (backoff); failures
             (consecutive). What an object is (ext, size, format, size in pixels) lives only in
             ``objects``; :class:`SourceRow` joins it back.
``posts``    path PK (as given), size, mtime_ns, inode, sha256 of the content, scanned_at,
             rewritten_at; mode (the command that last finished it: fetch or run) and next_check
             (when a reference it still lacks is due again; NULL when it lacks none), which
             let an unchanged post be skipped without reading it (the stat fast path).
``hosts``    host PK, profile (the request profile that last worked there), updated.
``rewrites`` (post, generation) PK, before_sha256, after_sha256, created: one row per rewrite of
             a post; generations count up from 1.
``spans``    (post, generation, seq) PK, offset, old, new, source: what that rewrite replaced;
             ``offset`` is a byte offset into the content *before* that generation.
``served``   source PK, sha256 -> objects, last_served: what ``serve`` in open mode fetched for
             URLs no post names. Such objects are evictable (least recently served first) unless
             a ``sources`` row also names them; ``last_served`` is updated in batches.

Merging a result into an existing ``sources`` row (:meth:`Manifest.record_results`):
``mirrored`` replaces the row and zeroes ``failures``; ``failed`` adds one to ``failures``;
``failed``/``blocked`` over a mirrored row keep its object (the mirror exists to outlive the
origin) and only note the failure; ``skipped`` never changes a row that exists.

Invariant: a row never points at a missing object file. The caller writes the object to the store
first, then records the row; a crash in between leaves an unreferenced file, never a dangling row.

Revert: undo generations newest first (:meth:`Manifest.spans_for` returns them in that order).
Record a rewrite's spans *before* writing the post. If the post's sha256 then equals the newest
generation's ``before_sha256``, that generation never landed (or was already undone) and is
dropped with :meth:`Manifest.forget_rewrite`; recording again from the same ``before_sha256``
replaces it rather than stacking a second copy.

Single writer: one :class:`Manifest` writes; each write method is one transaction, and
:meth:`Manifest.transaction` groups several into one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mirror.atomic import DIR_FLAGS, TEMP_NAME, temp_name
from mirror.errors import ManifestError
from mirror.manifest.base import (
    NEGATIVE_KEPT,
    CursorExpired,
    GalleryObject,
    NegativeEntry,
    ReportRows,
    ReportSource,
    key_hash,
)
from mirror.models import Span
from mirror.store import local_url

MANIFEST_NAME = "manifest.sqlite3"
STATUSES = ("mirrored", "failed", "blocked", "skipped")
BUSY_TIMEOUT_MS = 10_000
_CHUNK = 500  # under SQLite's oldest host-parameter limit (999)

# Append only: a released migration is never edited, its index + 1 is the schema version.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE objects (
            sha256 TEXT PRIMARY KEY, ext TEXT NOT NULL, bytes INTEGER NOT NULL,
            format TEXT, width INTEGER, height INTEGER, created REAL NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE sources (
            source TEXT PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('mirrored', 'failed', 'blocked', 'skipped')),
            reason TEXT, sha256 TEXT REFERENCES objects (sha256), fetched_from TEXT,
            attempts TEXT NOT NULL DEFAULT '[]', etag TEXT, last_modified TEXT,
            first_seen REAL NOT NULL, last_attempt REAL, next_attempt REAL,
            failures INTEGER NOT NULL DEFAULT 0,
            CHECK (status != 'mirrored' OR sha256 IS NOT NULL))""",
        "CREATE INDEX sources_status ON sources (status)",
        "CREATE INDEX sources_sha256 ON sources (sha256)",
        """CREATE TABLE posts (
            path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL, sha256 TEXT NOT NULL, scanned_at REAL NOT NULL,
            rewritten_at REAL) WITHOUT ROWID""",
        """CREATE TABLE rewrites (
            post TEXT NOT NULL, generation INTEGER NOT NULL, before_sha256 TEXT,
            after_sha256 TEXT, created REAL NOT NULL,
            PRIMARY KEY (post, generation)) WITHOUT ROWID""",
        """CREATE TABLE spans (
            post TEXT NOT NULL, generation INTEGER NOT NULL, seq INTEGER NOT NULL,
            offset INTEGER NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL, source TEXT,
            PRIMARY KEY (post, generation, seq),
            FOREIGN KEY (post, generation) REFERENCES rewrites (post, generation)
                ON DELETE CASCADE) WITHOUT ROWID""",
    ),
    (
        """CREATE TABLE served (
            source TEXT PRIMARY KEY, sha256 TEXT NOT NULL REFERENCES objects (sha256),
            last_served REAL NOT NULL) WITHOUT ROWID""",
        "CREATE INDEX served_sha256 ON served (sha256)",
    ),
    (
        "ALTER TABLE posts ADD COLUMN next_check REAL",
        "ALTER TABLE posts ADD COLUMN mode TEXT",
        """CREATE TABLE hosts (
            host TEXT PRIMARY KEY, profile TEXT, updated REAL NOT NULL) WITHOUT ROWID""",
    ),
    (
        # fetched_from used to hold the source kind; it now holds the URL, which old rows never
        # recorded: the kind moves to via and the URL stays unknown (NULL).
        "ALTER TABLE sources ADD COLUMN via TEXT",
        "UPDATE sources SET via = fetched_from, fetched_from = NULL WHERE fetched_from IS NOT NULL",
    ),
    (
        # The change feed (mirror.manifest.base): every write that changes what catalog()
        # shows logs the source in the same transaction, by trigger, so no writer can forget.
        # Writers are serialised, so seq grows in commit order and MAX(seq) is the cursor.
        """CREATE TABLE catalog_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL)""",
        "CREATE TABLE catalog_horizon (seq INTEGER NOT NULL)",
        "INSERT INTO catalog_horizon VALUES (0)",
        """CREATE TRIGGER sources_log_insert AFTER INSERT ON sources
            BEGIN INSERT INTO catalog_log (source) VALUES (NEW.source); END""",
        """CREATE TRIGGER sources_log_update AFTER UPDATE OF status, sha256 ON sources
            WHEN OLD.status IS NOT NEW.status OR OLD.sha256 IS NOT NEW.sha256
            BEGIN INSERT INTO catalog_log (source) VALUES (NEW.source); END""",
        """CREATE TRIGGER sources_log_delete AFTER DELETE ON sources
            BEGIN INSERT INTO catalog_log (source) VALUES (OLD.source); END""",
        """CREATE TRIGGER served_log_insert AFTER INSERT ON served
            BEGIN INSERT INTO catalog_log (source) VALUES (NEW.source); END""",
        """CREATE TRIGGER served_log_update AFTER UPDATE OF sha256 ON served
            WHEN OLD.sha256 IS NOT NEW.sha256
            BEGIN INSERT INTO catalog_log (source) VALUES (NEW.source); END""",
        """CREATE TRIGGER served_log_delete AFTER DELETE ON served
            BEGIN INSERT INTO catalog_log (source) VALUES (OLD.source); END""",
        # Keep the newest 65,536 entries (as PostgreSQL does), trimming every 1,024; a cursor
        # at or past the horizon still sees every change after it.
        """CREATE TRIGGER catalog_log_trim AFTER INSERT ON catalog_log WHEN NEW.seq % 1024 = 0
            BEGIN
                DELETE FROM catalog_log WHERE seq <= NEW.seq - 65536;
                UPDATE catalog_horizon SET seq = NEW.seq - 65536 WHERE seq < NEW.seq - 65536;
            END""",
        # Pins (issue #13 row 1): objects a job is about to make a post name; never evicted.
        """CREATE TABLE pins (
            sha256 TEXT NOT NULL, holder TEXT NOT NULL, until REAL NOT NULL,
            PRIMARY KEY (sha256, holder)) WITHOUT ROWID""",
        "CREATE INDEX pins_holder ON pins (holder)",
        # serve nodes' single flight and shared negative cache, keyed by the key's SHA-256.
        """CREATE TABLE leases (
            key BLOB PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE negative (
            key BLOB PRIMARY KEY, until REAL NOT NULL, count INTEGER NOT NULL,
            status INTEGER NOT NULL, reason TEXT NOT NULL) WITHOUT ROWID""",
        "CREATE INDEX negative_until ON negative (until)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
# An I/O error with less room than this left on the manifest's disk is reported as a full disk.
_FULL_BELOW = 1 << 20
# Why a hard link can fail where a rename works: a file system without links.
_NO_LINK = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one URL: which source (origin, proxy...), how it ended, and what happened."""

    source: str
    url: str
    outcome: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SourceResult:
    """What one run learned about one source URL; a mirrored result names its object."""

    source: str
    status: str
    reason: str | None = None
    sha256: str | None = None
    ext: str | None = None
    size: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    fetched_from: str | None = None
    attempts: tuple[Attempt, ...] = ()
    etag: str | None = None
    last_modified: str | None = None
    attempted_at: float | None = None
    via: str | None = None
    next_attempt: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.status == "mirrored" and (
            self.sha256 is None or self.ext is None or self.size is None
        ):
            raise ValueError(f"a mirrored result needs sha256, ext and size: {self.source}")


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A ``sources`` row joined with its object."""

    source: str
    status: str
    reason: str | None
    sha256: str | None
    ext: str | None
    size: int | None
    format: str | None
    width: int | None
    height: int | None
    fetched_from: str | None
    attempts: tuple[Attempt, ...]
    etag: str | None
    last_modified: str | None
    first_seen: float
    last_attempt: float | None
    next_attempt: float | None
    failures: int
    via: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """One source URL as ``serve`` sees it: ``status`` is ``served`` for an open-mode row."""

    source: str
    status: str
    sha256: str | None
    ext: str | None
    size: int | None
    format: str | None


@dataclass(frozen=True, slots=True)
class PostState:
    """What a post looked like when last scanned or rewritten."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str
    scanned_at: float
    rewritten_at: float | None
    next_check: float | None = None
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedSpan:
    """One replacement of a rewrite, with the source URL it was made for."""

    offset: int
    old: str
    new: str
    source: str | None


@dataclass(frozen=True, slots=True)
class Rewrite:
    """One generation of rewriting a post, spans in the order they were recorded."""

    post: str
    generation: int
    before_sha256: str | None
    after_sha256: str | None
    created: float
    spans: tuple[RecordedSpan, ...]


@dataclass(frozen=True, slots=True)
class ObjectRow:
    """An ``objects`` row with the ``sources`` and ``served`` rows that name it."""

    sha256: str
    ext: str
    size: int
    sources: tuple[str, ...]
    served: tuple[str, ...]


_ROW_SQL = """SELECT s.source, s.status, s.reason, s.sha256, o.ext, o.bytes, o.format, o.width,
    o.height, s.fetched_from, s.attempts, s.etag, s.last_modified, s.first_seen, s.last_attempt,
    s.next_attempt, s.failures, s.via FROM sources s LEFT JOIN objects o ON o.sha256 = s.sha256"""


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
_POST_SQL = "SELECT * FROM posts WHERE path = ?"
_POSTS_IN_SQL = "SELECT * FROM posts WHERE path > ? AND path < ?"


def manifest_path(store_root: Path) -> Path:
    """Return where the manifest of the store at ``store_root`` lives."""
    return store_root / MANIFEST_NAME


def attempt_json(attempt: Attempt) -> dict[str, str | None]:
    """Return one attempt as the manifest and the JSON report write it."""
    return {
        "source": attempt.source,
        "url": attempt.url,
        "outcome": attempt.outcome,
        "detail": attempt.detail,
    }


def load_attempts(text: str) -> tuple[Attempt, ...]:
    """Read the manifest's ``attempts`` JSON (rows from before details have none)."""
    return tuple(
        Attempt(a["source"], a["url"], a["outcome"], a.get("detail")) for a in json.loads(text)
    )


def _dump_attempts(attempts: Iterable[Attempt]) -> str:
    items = [attempt_json(a) for a in attempts]
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def _row(values: Sequence[Any]) -> SourceRow:
    attempts = load_attempts(values[10])
    fields = list(values)
    fields[10] = attempts
    return SourceRow(*fields)


# On a failed refresh of a mirrored source, these stay as they were: the object still stands.
_KEPT: tuple[str, ...] = ("status", "sha256", "ext", "size", "format", "width", "height")
_KEPT += ("fetched_from", "via", "etag", "last_modified")
_COLUMNS: tuple[str, ...] = ("source", "status", "reason", "sha256", "fetched_from", "via")
_COLUMNS += ("attempts",)
_COLUMNS += ("etag", "last_modified", "first_seen", "last_attempt", "next_attempt", "failures")
# _merge has already folded in the stored row, so replacing it whole is correct.
_MARKS = ", ".join("?" * len(_COLUMNS))
_UPSERT_SQL = f"INSERT OR REPLACE INTO sources ({', '.join(_COLUMNS)}) VALUES ({_MARKS})"


def _merge(old: SourceRow | None, new: SourceResult, now: float) -> SourceRow | None:
    """Return the row that results from ``new`` landing on ``old``, or None to keep ``old``."""
    if old is not None and new.status == "skipped":
        return None
    failures = old.failures if old is not None else 0
    if new.status == "mirrored":
        failures = 0
    elif new.status == "failed":
        failures += 1
    keep = old is not None and old.status == "mirrored" and new.status != "mirrored"
    base: SourceRow | SourceResult = old if keep and old is not None else new
    return SourceRow(
        source=new.source,
        reason=new.reason,
        attempts=new.attempts,
        first_seen=old.first_seen if old is not None else now,
        last_attempt=None if new.status == "skipped" else (new.attempted_at or now),
        next_attempt=new.next_attempt,
        failures=failures,
        **{name: getattr(base, name) for name in _KEPT},
    )


def _upsert_values(row: SourceRow) -> tuple[Any, ...]:
    values = {name: getattr(row, name) for name in _COLUMNS}
    values["attempts"] = _dump_attempts(row.attempts)
    return tuple(values.values())


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Apply the migrations after ``version``, inside the caller's transaction."""
    for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        for statement in statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")


def _build(conn: sqlite3.Connection) -> None:
    """Create the whole schema in the fresh file ``conn`` is open on, in one transaction."""
    # No journal file beside the temp file: a failed build is thrown away whole anyway.
    conn.execute("PRAGMA journal_mode = MEMORY")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        _migrate(conn, 0)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _disk_full(exc: sqlite3.Error, folder: Path) -> bool:
    """Tell whether ``exc`` means the disk is full (SQLITE_FULL, or an I/O error with no room)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return True
    if code != sqlite3.SQLITE_IOERR:
        return False
    # SQLite reports ENOSPC while growing the WAL index as a plain I/O error.
    try:
        room = os.statvfs(folder)
    except OSError:
        return False
    return room.f_bavail * room.f_frsize < _FULL_BELOW


class Manifest:
    """
    The manifest file, opened by one writer (or, with ``readonly``, by any number of readers).

    Use as a context manager, or call :meth:`open` and :meth:`close`. Methods are synchronous and
    serialised by a lock, so threads may share one instance; the caller batches, one transaction
    per call.
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: str = "crash",
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
        on_connect: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        """
        Describe the manifest at ``path``; nothing is opened yet.

        ``on_connect`` runs on every connection right after it is made, the one that builds a
        new manifest included (tests cap its size there with ``PRAGMA max_page_count``).
        """
        if durability not in ("crash", "power"):
            raise ValueError(f"durability must be 'crash' or 'power', not {durability!r}")
        self.path = path
        self.durability = durability
        self.readonly = readonly
        self._clock = clock
        self._on_connect = on_connect
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._depth = 0

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc)
            if _disk_full(exc, self.path.parent):
                raise ManifestError(
                    f"manifest {self.path}: the disk is full while {doing} ({text}); "
                    "nothing was half-written"
                ) from exc
            if "locked" in text or "busy" in text:
                why = f"is locked by another process (waited {BUSY_TIMEOUT_MS / 1000:g} s)"
            elif isinstance(exc, sqlite3.DatabaseError) and (
                "not a database" in text or "malformed" in text
            ):
                why = "is corrupt or not a SQLite database"
            else:
                why = f"failed: {text}"
            raise ManifestError(f"manifest {self.path} {why} while {doing}") from exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ManifestError(
                    f"manifest {self.path}: the disk is full while {doing}; "
                    "nothing was half-written"
                ) from exc
            raise ManifestError(
                f"manifest {self.path} failed while {doing}: {exc.strerror or exc}"
            ) from exc

    def open(self) -> Self:
        """
        Connect, then bring the schema up to date (a writer) or check it is current (a reader).

        Raises:
            ManifestError: the file is locked, corrupt, from a newer mirror, or not writable.
        """
        if self._conn is not None:
            return self
        with self._errors("opening"):
            if self.readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ManifestError(
                        f"manifest {self.path}: cannot create folder: {exc}"
                    ) from exc
                # ":memory:" (a dry run's stand-in) is SQLite's name for no file at all.
                if os.fspath(self.path) != ":memory:" and not self.path.exists():
                    with self._errors("creating it"):
                        self._create()
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                if self._on_connect is not None:
                    self._on_connect(conn)
                self._configure(conn)
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        return self

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ManifestError(
                f"manifest {self.path} has schema {version}; this mirror knows {SCHEMA_VERSION}"
            )
        if self.readonly:
            if version < SCHEMA_VERSION:
                raise ManifestError(f"manifest {self.path} needs upgrading by a writing command")
            return
        conn.execute("PRAGMA journal_mode = WAL")
        sync = "FULL" if self.durability == "power" else "NORMAL"
        conn.execute(f"PRAGMA synchronous = {sync}")
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another writer may have migrated meanwhile.
            _migrate(conn, conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL does).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _create(self) -> None:
        """
        Build the whole schema in a temp file beside the manifest, then link it in by name.

        So no half-made manifest ever stands under the real name: a full disk, a crash or a kill
        leaves the name free, and at most a temp file that the next creation removes. A manifest
        another writer linked in meanwhile wins; this one is dropped.
        """
        folder = self.path.parent
        tmp = folder / temp_name(self.path.name)
        dir_fd = os.open(folder, DIR_FLAGS)
        try:
            # Creators hold the folder shared while building, so one that gets it exclusively
            # knows every temp manifest there was left by a creator that died.
            try:
                fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                self._sweep(folder)
            fcntl.flock(dir_fd, fcntl.LOCK_SH)
            try:
                conn = sqlite3.connect(tmp, isolation_level=None)
                try:
                    if self._on_connect is not None:
                        self._on_connect(conn)
                    _build(conn)
                finally:
                    conn.close()
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    pass
                except OSError as exc:
                    if exc.errno not in _NO_LINK or self.path.exists():
                        raise
                    tmp.replace(self.path)  # no hard links here: a plain rename
                os.fsync(dir_fd)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        finally:
            os.close(dir_fd)

    def _sweep(self, folder: Path) -> None:
        for entry in folder.iterdir():
            found = TEMP_NAME.fullmatch(entry.name)
            if found is not None and found["name"] == self.path.name:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        """Return the open connection (for reports that need their own queries)."""
        if self._conn is None:
            raise ManifestError(f"manifest {self.path} is not open")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """
        Group writes into one transaction; nested uses join the outer one.

        Raises:
            ManifestError: the write failed; nothing of the transaction was kept.
        """
        with self._lock:
            conn = self.conn
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            with self._errors("writing"):
                conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
                with self._errors("committing"):
                    conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

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

    def record_post(
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
        sql = """INSERT INTO posts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE
            SET size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode,
            sha256 = excluded.sha256, scanned_at = excluded.scanned_at,
            rewritten_at = COALESCE(excluded.rewritten_at, posts.rewritten_at),
            next_check = excluded.next_check, mode = excluded.mode"""
        stamp = now if rewritten else None
        values = (path, size, mtime_ns, inode, sha256, now, stamp, next_check, mode)
        with self.transaction() as conn, self._errors("recording a post"):
            conn.execute(sql, values)

    def record_posts(
        self, rows: Iterable[tuple[str, int, int, int, str, float | None, str | None]]
    ) -> None:
        """Record finished posts: (path, size, mtime_ns, inode, sha256, next_check, mode) each."""
        now = self._clock()
        sql = """INSERT INTO posts VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)
            ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
            inode = excluded.inode, sha256 = excluded.sha256, scanned_at = excluded.scanned_at,
            next_check = excluded.next_check, mode = excluded.mode"""
        values = [
            (p, size, mtime, ino, sha, now, due, mode)
            for p, size, mtime, ino, sha, due, mode in rows
        ]
        with self.transaction() as conn, self._errors("recording posts"):
            conn.executemany(sql, values)

    def post_states_in(self, folder: str) -> dict[str, PostState]:
        """Every recorded post under ``folder`` (subfolders included), by path, in one query."""
        low, high = folder + "/", folder + "0"  # "0" follows "/": the range is the prefix
        with self._lock, self._errors("reading posts"):
            rows = self.conn.execute(_POSTS_IN_SQL, (low, high)).fetchall()
        return {row[0]: PostState(*row) for row in rows}

    def post_state(self, path: str) -> PostState | None:
        """Return what ``path`` looked like when last recorded, or None."""
        # Called once per post by the no-op re-run: the error wrapper is entered only on error.
        try:
            with self._lock:
                values = self.conn.execute(_POST_SQL, (path,)).fetchone()
        except sqlite3.Error:
            with self._errors("reading a post"):
                values = self.conn.execute(_POST_SQL, (path,)).fetchone()
        return None if values is None else PostState(*values)

    def record_spans(
        self,
        post: str,
        spans: Sequence[Span],
        sources: Sequence[str | None],
        *,
        before_sha256: str | None = None,
        after_sha256: str | None = None,
    ) -> int | None:
        """
        Record one rewrite of ``post``; return its generation, or None when ``spans`` is empty.

        ``sources[i]`` is the URL ``spans[i]`` was made for. A rewrite from the same
        ``before_sha256`` as the newest generation replaces that generation.
        """
        if len(spans) != len(sources):
            raise ValueError(f"{len(spans)} spans but {len(sources)} sources for {post}")
        if not spans:
            return None
        with self.transaction() as conn, self._errors("recording spans"):
            newest = conn.execute(
                "SELECT generation, before_sha256 FROM rewrites WHERE post = ? "
                "ORDER BY generation DESC LIMIT 1",
                (post,),
            ).fetchone()
            generation = 1 if newest is None else newest[0] + 1
            if newest is not None and before_sha256 is not None and newest[1] == before_sha256:
                generation = newest[0]
                conn.execute(
                    "DELETE FROM rewrites WHERE post = ? AND generation = ?", (post, generation)
                )
            conn.execute(
                "INSERT INTO rewrites VALUES (?, ?, ?, ?, ?)",
                (post, generation, before_sha256, after_sha256, self._clock()),
            )
            conn.executemany(
                "INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (post, generation, seq, span.offset, span.old, span.new, source)
                    for seq, (span, source) in enumerate(zip(spans, sources, strict=True))
                ],
            )
        return generation

    def spans_for(self, post: str) -> list[Rewrite]:
        """Return the rewrites of ``post``, newest first: the order to undo them in."""
        with self._lock, self._errors("reading spans"):
            heads = self.conn.execute(
                "SELECT generation, before_sha256, after_sha256, created FROM rewrites "
                "WHERE post = ? ORDER BY generation DESC",
                (post,),
            ).fetchall()
            spans: dict[int, list[RecordedSpan]] = {head[0]: [] for head in heads}
            sql = """SELECT generation, offset, old, new, source FROM spans WHERE post = ?
                ORDER BY generation, seq"""
            for generation, *rest in self.conn.execute(sql, (post,)):
                spans[generation].append(RecordedSpan(*rest))
        return [
            Rewrite(post, g, before, after, created, tuple(spans[g]))
            for g, before, after, created in heads
        ]

    def forget_rewrite(self, post: str, generation: int) -> None:
        """Drop one generation of ``post``'s rewrites, once it is undone or never landed."""
        with self.transaction() as conn, self._errors("forgetting a rewrite"):
            conn.execute(
                "DELETE FROM rewrites WHERE post = ? AND generation = ?", (post, generation)
            )

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

    # --- the seam's additions (mirror.manifest.base); SQLiteManifest awaits these -------------

    def schema_version(self) -> int:
        """Return the schema version the file is at."""
        with self._lock, self._errors("reading the schema version"):
            version: int = self.conn.execute("PRAGMA user_version").fetchone()[0]
        return version

    @contextmanager
    def _snapshot(self, doing: str) -> Iterator[sqlite3.Connection]:
        """Read inside one transaction, so several queries see one committed state."""
        with self._lock, self._errors(doing):
            conn = self.conn
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

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

    def report_rows(self) -> ReportRows:
        """Return what ``mirror report`` shows, from one snapshot."""
        with self._snapshot("reading the report") as conn:
            sql = "SELECT source, status, reason, sha256, attempts, failures FROM sources"
            sources = tuple(
                ReportSource(source, status, reason, sha, load_attempts(tried), failures)
                for source, status, reason, sha, tried, failures in conn.execute(sql)
            )
            sql = "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM objects"
            count, total = conn.execute(sql).fetchone()
            sql = """SELECT o.sha256, o.ext, o.bytes, o.width, o.height FROM objects o
                WHERE EXISTS (SELECT 1 FROM sources s WHERE s.sha256 = o.sha256
                AND s.status = 'mirrored') ORDER BY o.created, o.sha256"""
            gallery = tuple(GalleryObject(*values) for values in conn.execute(sql))
        return ReportRows(sources, count, total, gallery)

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
