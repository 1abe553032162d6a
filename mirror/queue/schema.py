"""
The queue's schema in PostgreSQL: procrastinate's own tables, and mirror's ``queue_*`` tables.

:func:`ensure_schema` runs when ``mirror enqueue``, ``mirror worker`` or ``mirror run --workers``
opens the queue (as the PostgreSQL manifest migrates when a writer opens it), in one transaction
under an advisory lock, so workers started together create it once:

- procrastinate's schema (``procrastinate_jobs``, ``procrastinate_workers``...), applied from
  the installed package when absent; when it was applied by an older procrastinate, that
  package's migration files between the two versions are applied in order (stop the workers
  first: procrastinate's "pre" and "post" migrations then both apply at once);
- mirror's migrations (:data:`MIGRATIONS`, recorded in ``queue_schema``): ``queue_hosts``, the
  circuit breaker every worker shares (consecutive host-level failures and ``down_until``, in
  Unix seconds); ``queue_workers``, which machine and pid each procrastinate worker is (gone
  with it); and the two functions that take and give back a per-host slot (a session advisory
  lock ``(hash(host), SLOT_BASE + slot)``, released by PostgreSQL itself when a worker dies);
  ``queue_sources``, which task each queued source is in (what enqueue skips), and a trigger
  on ``procrastinate_jobs`` announcing each task that ends (NOTIFY ``queue_tasks``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import procrastinate
import psycopg
from procrastinate.schema import SchemaManager

from mirror.errors import QueueError
from mirror.manifest.postgres import redact

Conn = psycopg.AsyncConnection[Any]

# pg_advisory_xact_lock(MIGRATE_KEY): one writer of the schema at a time ("mq").
MIGRATE_KEY = (0x6D71, 1)
# A slot's advisory lock is (hash(host), SLOT_BASE + slot); "mi" keeps clear of other users.
SLOT_BASE = 0x6D690000
# Where a released slot is announced (its payload: the host).
SLOT_CHANNEL = "queue_slots"
# Where a task that ended is announced (its payload: the queue's name).
TASK_CHANNEL = "queue_tasks"

# Append only: a released migration is never edited; its index + 1 is the queue schema version.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE queue_hosts (
            host TEXT COLLATE "C" PRIMARY KEY, failures BIGINT NOT NULL DEFAULT 0,
            down_until DOUBLE PRECISION)""",
        """CREATE TABLE queue_workers (
            id BIGINT PRIMARY KEY REFERENCES procrastinate_workers (id) ON DELETE CASCADE,
            hostname TEXT NOT NULL, pid BIGINT NOT NULL, concurrency BIGINT NOT NULL,
            started DOUBLE PRECISION NOT NULL)""",
        # One round trip per request: is the host down, else the first free slot (or -1).
        # Session advisory locks are re-entrant: the slots this session holds already are
        # passed in (held) and skipped, else two tasks of one worker would share a slot.
        f"""CREATE FUNCTION queue_take_slot(k INTEGER, slots INTEGER, h TEXT,
            now DOUBLE PRECISION, held INTEGER[],
            OUT o_slot INTEGER, OUT o_down DOUBLE PRECISION)
            LANGUAGE plpgsql AS $$
        BEGIN
            o_slot := -1;
            SELECT q.down_until INTO o_down FROM queue_hosts q WHERE q.host = h;
            IF o_down IS NOT NULL AND o_down > now THEN
                RETURN;
            END IF;
            o_down := NULL;
            FOR s IN 0 .. slots - 1 LOOP
                IF NOT (s = ANY(held)) AND pg_try_advisory_lock(k, {SLOT_BASE} + s) THEN
                    o_slot := s;
                    RETURN;
                END IF;
            END LOOP;
        END $$""",
        # Give a slot back and count the request for the breaker: 'failed' (host-level),
        # 'answered' (the host answered: the streak ends) or 'other'. Returns down_until when
        # this failure (or one before it, still in the streak) takes the host down.
        f"""CREATE FUNCTION queue_give_slot(k INTEGER, s INTEGER, h TEXT, outcome TEXT,
            threshold INTEGER, down_for DOUBLE PRECISION, now DOUBLE PRECISION)
            RETURNS DOUBLE PRECISION LANGUAGE plpgsql AS $$
        DECLARE
            f BIGINT;
            d DOUBLE PRECISION;
        BEGIN
            PERFORM pg_advisory_unlock(k, {SLOT_BASE} + s);
            PERFORM pg_notify('{SLOT_CHANNEL}', h);
            IF outcome = 'failed' THEN
                INSERT INTO queue_hosts AS q (host, failures) VALUES (h, 1)
                    ON CONFLICT (host) DO UPDATE SET failures = q.failures + 1
                    RETURNING q.failures INTO f;
                IF f >= threshold THEN
                    UPDATE queue_hosts SET down_until = now + down_for WHERE host = h
                        RETURNING down_until INTO d;
                END IF;
            ELSIF outcome = 'answered' THEN
                UPDATE queue_hosts SET failures = 0, down_until = NULL
                    WHERE host = h AND (failures > 0 OR down_until IS NOT NULL);
            END IF;
            RETURN d;
        END $$""",
    ),
    (
        # Which sources wait or run in which task (a task is a batch of one host's sources):
        # enqueue skips a source whose task is still 'todo' or 'doing'. Best effort; a row
        # whose task ended or vanished is stale and ignored, and a source queued twice is
        # still fetched once (the manifest is asked first, under the source's claim).
        """CREATE TABLE queue_sources (
            lock TEXT COLLATE "C" PRIMARY KEY, job BIGINT NOT NULL)""",
        "CREATE INDEX queue_sources_job ON queue_sources (job)",
        # Count outcomes for the breaker, in the order given, as queue_give_slot does, without
        # giving a slot back (a worker keeps the slots of a healthy host it is busy with).
        # Returns each named host's breaker row, for the worker to hear what the others did.
        """CREATE FUNCTION queue_report(hs TEXT[], outcomes TEXT[], threshold INTEGER,
            down_for DOUBLE PRECISION, now DOUBLE PRECISION)
            RETURNS TABLE (o_host TEXT, o_failures BIGINT, o_down DOUBLE PRECISION)
            LANGUAGE plpgsql AS $$
        DECLARE
            f BIGINT;
        BEGIN
            FOR i IN 1 .. coalesce(array_length(hs, 1), 0) LOOP
                IF outcomes[i] = 'failed' THEN
                    INSERT INTO queue_hosts AS q (host, failures) VALUES (hs[i], 1)
                        ON CONFLICT (host) DO UPDATE SET failures = q.failures + 1
                        RETURNING q.failures INTO f;
                    IF f >= threshold THEN
                        UPDATE queue_hosts SET down_until = now + down_for WHERE host = hs[i];
                    END IF;
                ELSIF outcomes[i] = 'answered' THEN
                    UPDATE queue_hosts SET failures = 0, down_until = NULL
                        WHERE host = hs[i] AND (failures > 0 OR down_until IS NOT NULL);
                END IF;
            END LOOP;
            RETURN QUERY SELECT q.host, q.failures, q.down_until FROM queue_hosts q
                WHERE q.host = ANY(hs);
        END $$""",
        # Give slots of one host back (announced once) and count the last request's outcome.
        f"""CREATE FUNCTION queue_give_slots(k INTEGER, ss INTEGER[], h TEXT, outcome TEXT,
            threshold INTEGER, down_for DOUBLE PRECISION, now DOUBLE PRECISION)
            RETURNS TABLE (o_host TEXT, o_failures BIGINT, o_down DOUBLE PRECISION)
            LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_advisory_unlock(k, {SLOT_BASE} + s) FROM unnest(ss) AS s;
            PERFORM pg_notify('{SLOT_CHANNEL}', h);
            RETURN QUERY SELECT * FROM queue_report(ARRAY[h], ARRAY[outcome], threshold,
                down_for, now);
        END $$""",
        # A task that ends is announced (payload: its queue), so `run --workers` sees the queue
        # drain at once instead of at its next look.
        f"""CREATE FUNCTION queue_task_ended() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{TASK_CHANNEL}', NEW.queue_name);
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER queue_task_ended AFTER UPDATE OF status ON procrastinate_jobs
            FOR EACH ROW WHEN (OLD.status = 'doing' AND NEW.status NOT IN ('todo', 'doing'))
            EXECUTE FUNCTION queue_task_ended()""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
_MIGRATION_NAME = re.compile(r"(\d+)\.(\d+)\.(\d+)_\d+_.*\.sql")


def _version_tuple(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]] + [0, 0, 0]
    return parts[0], parts[1], parts[2]


def procrastinate_migrations(since: str, until: str) -> list[Path]:
    """Return procrastinate's migration files after version ``since`` up to ``until``, in order."""
    folder = Path(SchemaManager.get_migrations_path())
    low, high = _version_tuple(since), _version_tuple(until)
    found = []
    for path in folder.glob("*.sql"):
        match = _MIGRATION_NAME.fullmatch(path.name)
        if match is not None:
            version = (int(match[1]), int(match[2]), int(match[3]))
            if low < version <= high:
                found.append(path)
    return sorted(found, key=lambda p: p.name)


async def _scalar(conn: Conn, query: str) -> Any:
    row = await (await conn.execute(query)).fetchone()
    return None if row is None else row[0]


async def ensure_schema(conn: Conn, now: float) -> None:
    """
    Bring procrastinate's and mirror's queue tables up to date, in one transaction.

    Raises:
        QueueError: the database refused, or its queue schema is from a newer mirror.
    """
    installed = procrastinate.__version__
    try:
        async with conn.transaction():
            # DDL is transactional: a failed step leaves the schema as it was.
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATE_KEY)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS queue_schema (
                version INTEGER PRIMARY KEY, procrastinate TEXT NOT NULL,
                applied DOUBLE PRECISION NOT NULL)"""
            )
            version = await _scalar(conn, "SELECT MAX(version) FROM queue_schema") or 0
            if version > SCHEMA_VERSION:
                raise QueueError(
                    f"the queue's schema is version {version}; this mirror knows {SCHEMA_VERSION}"
                )
            had = await _scalar(conn, "SELECT to_regclass('procrastinate_jobs')")
            if had is None:
                # No parameters: psycopg sends the script as it is, %-signs included.
                await conn.execute(SchemaManager.get_schema())
            else:
                applied = await _scalar(
                    conn, "SELECT procrastinate FROM queue_schema ORDER BY version DESC LIMIT 1"
                )
                for path in procrastinate_migrations(applied or installed, installed):
                    await conn.execute(path.read_text(encoding="utf-8"))
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO queue_schema VALUES (%s, %s, %s)", (number, installed, now)
                )
            if version == SCHEMA_VERSION and had is not None:
                await conn.execute(
                    "UPDATE queue_schema SET procrastinate = %s WHERE version = %s",
                    (installed, version),
                )
    except psycopg.Error as exc:
        raise QueueError(f"cannot set up the queue: {redact(str(exc).strip())}") from exc


async def has_schema(conn: Conn) -> bool:
    """Tell whether the queue's tables exist (``mirror status`` creates nothing)."""
    try:
        return await _scalar(conn, "SELECT to_regclass('queue_workers')") is not None
    except psycopg.Error as exc:
        raise QueueError(f"cannot read the queue: {redact(str(exc).strip())}") from exc
