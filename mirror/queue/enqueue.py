"""
``mirror enqueue``: scan the posts where they live and queue the sources to fetch, in tasks of
up to ``queue.batch`` sources of one origin host.

A source is queued when the manifest has no row for it, or a failure of it is due again; one
already mirrored, in backoff, or waiting or running in the queue is not. What the pipeline
fetches is what is queued: every wrapped reference's source, and with ``scan.raw = "all"``
every raw one's too. The first post naming a source gives its payload (declared size, wrapper,
alternates, date), as the first post to reach a source does in a run.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import procrastinate
import procrastinate.jobs
import psycopg
from procrastinate import exceptions as queue_errors

from mirror.config import Config
from mirror.errors import QueueError
from mirror.extract import Extractor, post_date
from mirror.manifest.base import Manifest
from mirror.manifest.postgres import redact
from mirror.models import ImageRef
from mirror.queue.app import QUEUE, TASK, Batch, Payload
from mirror.rewrite import decode
from mirror.scan import iter_posts

# Sources queued in one transaction, about.
BATCH = 500
# Sources remembered as handled in this enqueue; older ones are asked about again (cheaply).
RECENT = 65536
# The key is a btree key: a longer source URL is keyed by its hash.
LOCK_CHARS = 1000


def lock_for(source: str) -> str:
    """Return the ``queue_sources`` key of ``source``: the URL, or its hash when long."""
    if len(source) <= LOCK_CHARS:
        return source
    return "sha256:" + hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class EnqueueSummary:
    """What an enqueue found and did, counted by distinct source."""

    posts: int = 0
    references: int = 0
    sources: int = 0
    queued: int = 0
    in_queue: int = 0
    mirrored: int = 0
    not_due: int = 0
    hosts: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        """Return the summary as ``mirror enqueue --json`` prints it."""
        return {
            "posts": self.posts,
            "references": self.references,
            "sources": self.sources,
            "queued": self.queued,
            "already_queued": self.in_queue,
            "mirrored": self.mirrored,
            "not_due": self.not_due,
            "queued_by_host": dict(self.hosts.most_common()),
        }


def targets(refs: Sequence[ImageRef], config: Config) -> dict[str, list[ImageRef]]:
    """Return the references a run acts on, by source (the pipeline's rule)."""
    found: dict[str, list[ImageRef]] = {}
    for ref in refs:
        if ref.proxied or config.scan.raw == "all":
            found.setdefault(ref.source, []).append(ref)
    return found


_QUEUED = """
SELECT q.lock FROM queue_sources q JOIN procrastinate_jobs j ON j.id = q.job
 WHERE q.lock = ANY(%(locks)s) AND j.status IN ('todo', 'doing')
"""
_RECORD = """
INSERT INTO queue_sources (lock, job) SELECT * FROM unnest(%(locks)s::text[], %(jobs)s::bigint[])
    ON CONFLICT (lock) DO UPDATE SET job = EXCLUDED.job
"""


class Enqueuer:
    """
    Queues payloads in batches of one host's sources, skipping sources already waiting or
    running. A host's batch is sent when it is full (``queue.batch``) and :data:`BATCH` sources
    are ready, or when :data:`BATCH` x 10 wait in partial batches, and at the end.
    """

    def __init__(self, app: procrastinate.App, summary: EnqueueSummary, size: int) -> None:
        self.app = app
        self.summary = summary
        self.size = size
        self.partial: dict[str, list[Payload]] = {}
        self.waiting = 0
        self.full: list[Batch] = []

    async def add(self, payload: Payload) -> None:
        """Queue ``payload`` with its host's next batch."""
        group = self.partial.setdefault(payload.host, [])
        group.append(payload)
        self.waiting += 1
        if len(group) >= self.size:
            self.full.append(Batch(payload.host, tuple(self.partial.pop(payload.host))))
        if len(self.full) * self.size >= BATCH:
            batches, self.full = self.full, []
            await self._send(batches)
        elif self.waiting >= 10 * BATCH:
            await self.flush()

    async def flush(self) -> None:
        """Send every batch, full or not."""
        batches = self.full + [Batch(h, tuple(g)) for h, g in self.partial.items()]
        self.full, self.partial = [], {}
        await self._send(batches)

    async def _send(self, batches: list[Batch]) -> None:
        """
        Queue ``batches`` less the sources whose task still waits or runs, in one transaction:
        one query for those, one insert of the jobs, one of their sources.
        """
        self.waiting -= sum(len(b.payloads) for b in batches)
        locks = [lock_for(p.source) for b in batches for p in b.payloads]
        if not locks:
            return
        connector = self.app.connector
        assert isinstance(connector, procrastinate.PsycopgConnector)  # build_app's
        try:
            async with connector.pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(_QUEUED, {"locks": locks})
                queued = {row[0] for row in await cursor.fetchall()}
                fresh = [
                    Batch(b.host, kept)
                    for b in batches
                    if (kept := tuple(p for p in b.payloads if lock_for(p.source) not in queued))
                ]
                self.summary.in_queue += len(queued)
                jobs = (
                    await self.app.job_manager.batch_defer_jobs_async(
                        [_job(b) for b in fresh], connection=conn
                    )
                    if fresh
                    else []
                )
                pairs = [
                    (lock_for(p.source), j.id)
                    for b, j in zip(fresh, jobs, strict=True)
                    for p in b.payloads
                ]
                await conn.execute(
                    _RECORD, {"locks": [k for k, _ in pairs], "jobs": [j for _, j in pairs]}
                )
        except (queue_errors.ConnectorException, psycopg.Error) as exc:
            raise QueueError(f"cannot queue sources: {redact(str(exc))}") from exc
        self.summary.queued += len(pairs)
        self.summary.hosts.update(p.host for b in fresh for p in b.payloads)


def _job(batch: Batch) -> procrastinate.jobs.Job:
    # No procrastinate lock: the sources' claims (mirror.queue.claims) keep one worker at a time.
    return procrastinate.jobs.Job(
        id=None,
        queue=QUEUE,
        lock=None,
        queueing_lock=None,
        task_name=TASK,
        task_kwargs=batch.to_json(),
    )


async def enqueue(
    config: Config,
    paths: Sequence[Path],
    app: procrastinate.App,
    manifest: Manifest,
    *,
    clock: Callable[[], float] = time.time,
) -> EnqueueSummary:
    """
    Queue every source under ``paths`` that needs fetching (see the module docstring).

    Args:
        config: the tree (``scan`` decides what a reference is).
        paths: post files or folders.
        app: the queue's app, open.
        manifest: the shared manifest, open.
        clock: what "now" is, for failures that are due.

    Raises:
        QueueError: the queue refused; ManifestError: the manifest did.
    """
    summary = EnqueueSummary()
    extractor = Extractor(config.scan)
    queue = Enqueuer(app, summary, config.queue.batch)
    seen: OrderedDict[str, None] = OrderedDict()
    now = clock()
    for post in iter_posts(paths, config.scan):
        summary.posts += 1
        text = decode(post.data)
        refs = extractor(text, post.rel)
        summary.references += len(refs)
        found = targets(refs, config)
        new = [s for s in found if s not in seen]
        if not new:
            continue
        rows = await manifest.get_many(new)
        date = post_date(text)
        for source in new:
            seen[source] = None
            if len(seen) > RECENT:
                seen.popitem(last=False)
            summary.sources += 1
            row = rows.get(source)
            if row is not None and row.status == "mirrored":
                summary.mirrored += 1
            elif row is not None and (row.next_attempt or 0) > now:
                summary.not_due += 1
            else:
                await queue.add(Payload.from_refs(source, found[source], refs, date))
    await queue.flush()
    return summary
