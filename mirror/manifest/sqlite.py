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
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from mirror.atomic import DIR_FLAGS, TEMP_NAME, temp_name
from mirror.errors import ManifestError
from mirror.manifest.sqlite_posts import PostsMixin
from mirror.manifest.sqlite_rows import (
    STATUSES,
    Attempt,
    CatalogRow,
    ObjectRow,
    PostState,
    RecordedSpan,
    Rewrite,
    SourceResult,
    SourceRow,
    attempt_json,
    load_attempts,
)
from mirror.manifest.sqlite_serve import ServeMixin
from mirror.manifest.sqlite_sources import SourcesMixin

# The row records moved to sqlite_rows; importing them from here keeps working.
__all__ = [
    "BUSY_TIMEOUT_MS",
    "MANIFEST_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATUSES",
    "Attempt",
    "CatalogRow",
    "Manifest",
    "ObjectRow",
    "PostState",
    "RecordedSpan",
    "Rewrite",
    "SourceResult",
    "SourceRow",
    "attempt_json",
    "load_attempts",
    "manifest_path",
]

MANIFEST_NAME = "manifest.sqlite3"
BUSY_TIMEOUT_MS = 10_000
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


def manifest_path(store_root: Path) -> Path:
    """Return where the manifest of the store at ``store_root`` lives."""
    return store_root / MANIFEST_NAME


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


class Manifest(SourcesMixin, PostsMixin, ServeMixin):
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
