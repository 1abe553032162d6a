"""
``mirror enqueue``: scan the posts where they live and queue one task per source to fetch.

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
from procrastinate import exceptions as queue_errors

from mirror.config import Config
from mirror.errors import QueueError
from mirror.extract import Extractor, post_date
from mirror.manifest.base import Manifest
from mirror.manifest.postgres import redact
from mirror.models import ImageRef
from mirror.queue.app import QUEUE, TASK, Payload
from mirror.rewrite import decode
from mirror.scan import iter_posts

# Payloads deferred in one statement.
BATCH = 500
# Sources remembered as handled in this enqueue; older ones are asked about again (cheaply).
RECENT = 65536
# A lock is a btree key: a longer source URL is locked by its hash.
LOCK_CHARS = 1000


def lock_for(source: str) -> str:
    """Return the job lock (and queueing lock) of ``source``: the URL, or its hash when long."""
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


class Enqueuer:
    """Queues payloads in batches, skipping sources already waiting or running."""

    def __init__(self, app: procrastinate.App, summary: EnqueueSummary) -> None:
        self.app = app
        self.summary = summary
        self.pending: list[Payload] = []

    async def add(self, payload: Payload) -> None:
        """Queue ``payload`` with the next batch."""
        self.pending.append(payload)
        if len(self.pending) >= BATCH:
            await self.flush()

    async def flush(self) -> None:
        """Defer the pending batch: one query for what is in the queue, one insert."""
        batch, self.pending = self.pending, []
        if not batch:
            return
        connector = self.app.connector
        try:
            rows = await connector.execute_query_all_async(
                query="SELECT lock FROM procrastinate_jobs WHERE queue_name = %(queue)s "
                "AND status IN ('todo', 'doing') AND lock = ANY(%(locks)s)",
                queue=QUEUE,
                locks=[lock_for(p.source) for p in batch],
            )
            queued = {row["lock"] for row in rows}
            fresh = [p for p in batch if lock_for(p.source) not in queued]
            self.summary.in_queue += len(batch) - len(fresh)
            try:
                await self.app.job_manager.batch_defer_jobs_async([_job(p) for p in fresh])
                done = fresh
            except queue_errors.AlreadyEnqueued:
                # Another enqueue queued one of them since: one at a time, skipping those.
                done = []
                for payload in fresh:
                    try:
                        await self.app.job_manager.defer_job_async(_job(payload))
                        done.append(payload)
                    except queue_errors.AlreadyEnqueued:
                        self.summary.in_queue += 1
        except queue_errors.ConnectorException as exc:
            raise QueueError(f"cannot queue sources: {redact(str(exc))}") from exc
        self.summary.queued += len(done)
        self.summary.hosts.update(p.host for p in done)


def _job(payload: Payload) -> procrastinate.jobs.Job:
    lock = lock_for(payload.source)
    return procrastinate.jobs.Job(
        id=None,
        queue=QUEUE,
        lock=lock,
        queueing_lock=lock,
        task_name=TASK,
        task_kwargs=payload.to_json(),
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
    queue = Enqueuer(app, summary)
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
