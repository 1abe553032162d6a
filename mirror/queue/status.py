"""
``mirror status``: the queue per origin host (queued / running / done / failed) and the workers
alive, as a table or ``--json``.

Each source counts once, by its newest task (a batch of one host's sources): ``queued`` waits
(a retry scheduled later included), ``running`` is in a task a worker holds and not recorded
since it started, ``done`` finished (or recorded) with the source mirrored, ``failed`` finished
without (the manifest's row says why; ``mirror report`` shows it) or the task itself failed
past its retries. A worker is alive while its heartbeat is younger than
``queue.stalled_after``. Reads only: nothing is created, and a database without a queue says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from mirror.config import Config
from mirror.errors import QueueError
from mirror.manifest.postgres import redact
from mirror.queue.app import QUEUE, require_postgres
from mirror.queue.schema import has_schema

# The manifest's ``sources`` table (mirror/manifest/postgres_schema.py) says how a task ended,
# and, while a task runs, which of its sources it has recorded since it started. A job of one
# source (queued by a mirror before batches) is its own one-element batch.
_HOSTS = """
WITH items AS (
    SELECT item->>'source' AS source, COALESCE(j.args->>'host', item->>'host') AS host,
           j.id, j.status::text AS status
      FROM procrastinate_jobs j
     CROSS JOIN LATERAL jsonb_array_elements(
           CASE WHEN j.args ? 'sources' THEN j.args->'sources' ELSE jsonb_build_array(j.args)
           END) AS item
     WHERE j.queue_name = %s
), latest AS (
    SELECT DISTINCT ON (source) source, host, id, status FROM items ORDER BY source, id DESC
), started AS (
    SELECT e.job_id, EXTRACT(EPOCH FROM max(e.at))::float8 AS at
      FROM procrastinate_events e JOIN latest l ON l.id = e.job_id AND l.status = 'doing'
     WHERE e.type = 'started' GROUP BY e.job_id
), counted AS (
    SELECT l.host, s.status AS row_status,
           CASE WHEN l.status = 'doing' AND s.last_attempt >= t.at THEN 'succeeded'
                ELSE l.status END AS status
      FROM latest l LEFT JOIN sources s ON s.source = l.source
      LEFT JOIN started t ON t.job_id = l.id
)
SELECT host,
       count(*) FILTER (WHERE status = 'todo'),
       count(*) FILTER (WHERE status = 'doing'),
       count(*) FILTER (WHERE status = 'succeeded' AND row_status = 'mirrored'),
       count(*) FILTER (WHERE status IN ('failed', 'aborted', 'cancelled')
                           OR (status = 'succeeded' AND row_status IS DISTINCT FROM 'mirrored'))
  FROM counted GROUP BY host ORDER BY host
"""
_WORKERS = """
SELECT w.id, q.hostname, q.pid, q.concurrency, q.started,
       EXTRACT(EPOCH FROM now() - w.last_heartbeat)::float8,
       (SELECT count(*) FROM procrastinate_jobs j WHERE j.worker_id = w.id AND j.status = 'doing')
  FROM procrastinate_workers w LEFT JOIN queue_workers q ON q.id = w.id
 WHERE w.last_heartbeat > now() - make_interval(secs => %s)
 ORDER BY q.hostname, q.pid, w.id
"""
_PENDING = (
    "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = %s AND status IN ('todo', 'doing')"
)


@dataclass(frozen=True, slots=True)
class HostCounts:
    """One origin host's sources in the queue."""

    host: str
    queued: int
    running: int
    done: int
    failed: int


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker alive: where it runs, since when, how fresh its heartbeat, what it holds."""

    id: int
    hostname: str | None
    pid: int | None
    concurrency: int | None
    started: float | None
    heartbeat_age: float
    running: int


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """The whole answer of ``mirror status``."""

    hosts: tuple[HostCounts, ...]
    workers: tuple[WorkerRow, ...]

    def totals(self) -> HostCounts:
        """Return the counts over every host."""
        return HostCounts(
            "all",
            sum(h.queued for h in self.hosts),
            sum(h.running for h in self.hosts),
            sum(h.done for h in self.hosts),
            sum(h.failed for h in self.hosts),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the status as ``mirror status --json`` prints it."""
        return {
            "hosts": [asdict(h) for h in self.hosts],
            "totals": {k: v for k, v in asdict(self.totals()).items() if k != "host"},
            "workers": [asdict(w) for w in self.workers],
        }

    def lines(self, now: float) -> list[str]:
        """Return the status as a table of hosts, then one line per worker alive."""
        rows = [("host", "queued", "running", "done", "failed")]
        for h in (*self.hosts, self.totals()):
            rows.append((h.host, str(h.queued), str(h.running), str(h.done), str(h.failed)))
        width = max(len(r[0]) for r in rows)
        lines = [f"{r[0]:<{width}}  " + "  ".join(f"{c:>7}" for c in r[1:]) for r in rows]
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        lines.append("")
        lines.append(f"workers alive: {len(self.workers)}")
        for w in self.workers:
            since = f"up {now - w.started:.0f} s" if w.started is not None else "unknown start"
            where = f"{w.hostname} pid {w.pid}" if w.hostname is not None else "(not mirror's)"
            lines.append(
                f"  #{w.id} {where}: {w.running} of {w.concurrency or '?'} running, {since}, "
                f"heartbeat {w.heartbeat_age:.1f} s ago"
            )
        return lines


async def _rows(conn: psycopg.AsyncConnection[Any], query: str, args: tuple[Any, ...]) -> list[Any]:
    return await (await conn.execute(query, args)).fetchall()


async def read_status(config: Config) -> QueueStatus | None:
    """
    Read the queue's status; None when the database has no queue yet.

    Raises:
        UsageError: the manifest is not PostgreSQL.
        QueueError: the database cannot be reached or read.
    """
    url = require_postgres(config, "mirror status")
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if not await has_schema(conn):
                return None
            hosts = await _rows(conn, _HOSTS, (QUEUE,))
            workers = await _rows(conn, _WORKERS, (config.queue.stalled_after,))
    except psycopg.Error as exc:
        raise QueueError(f"queue {redact(url)}: {redact(str(exc).strip())}") from exc
    return QueueStatus(
        tuple(HostCounts(str(h[0]), *(int(n) for n in h[1:])) for h in hosts),
        tuple(
            WorkerRow(int(w[0]), w[1], w[2], w[3], w[4], float(w[5]), int(w[6])) for w in workers
        ),
    )


async def pending(conn: psycopg.AsyncConnection[Any]) -> int:
    """Return how many tasks wait or run (0: the queue has drained)."""
    rows = await _rows(conn, _PENDING, (QUEUE,))
    return int(rows[0][0])
