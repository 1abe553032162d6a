"""
The procrastinate app of the fetch queue: one task, ``mirror.fetch``, one job per batch.

A job is a :class:`Batch`: up to ``queue.batch`` sources of one origin host, each with its
:class:`Payload` (the declared size, the wrapper the post writes, the element's alternates and
the post's date: what the downloader reads from the posts). One job per source cost about a
dozen database round trips per image (fetching and finishing the job, its lock, its result);
a batch shares them. Jobs are idempotent by source: enqueue skips a source whose job still
waits or runs (``queue_sources``), a worker fetches only under the source's claim
(:mod:`mirror.queue.claims`, so one worker at a time) and only what the manifest does not hold.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import procrastinate
import procrastinate.jobs
from procrastinate.exceptions import JobAborted
from procrastinate.manager import JobManager

from mirror.config import Config
from mirror.downloader import Context
from mirror.errors import ManifestError, QueueError, StoreError, UsageError
from mirror.models import ImageRef
from mirror.source import origin_host

QUEUE = "mirror-fetch"
TASK = "mirror.fetch"
# Where a worker's task finds the worker's resources (JobContext.additional_context).
RUNNER = "mirror"
# A retried task waits 2, 4, 8... seconds: long enough for a database or bucket to come back.
RETRY_WAIT = 2


def require_postgres(config: Config, command: str) -> str:
    """
    Return the manifest's PostgreSQL URL, where the queue lives.

    Raises:
        UsageError: the manifest is a SQLite file (exit 2): a queue needs a server.
    """
    if config.manifest.scheme != "postgresql":
        raise UsageError(
            f"{command} needs the fetch queue, which lives in PostgreSQL: set [manifest] url = "
            '"postgresql://user@host/db" (one machine and no server: plain `mirror run`)'
        )
    return config.manifest.url


@dataclass(frozen=True, slots=True)
class Payload:
    """What a job carries: the source and what the downloader needs from its posts."""

    source: str
    host: str
    declared: tuple[int, int] | None = None
    kind: str | None = None
    proxy: str | None = None
    alternates: tuple[str, ...] = ()
    date: str | None = None

    @classmethod
    def from_refs(
        cls, source: str, refs: Sequence[ImageRef], every: Sequence[ImageRef], date: str | None
    ) -> Payload:
        """
        Build the payload of ``source`` from its references in one post (``refs``) and all of
        that post's references (``every``), as the pipeline hands them to the downloader.
        """
        sized = next((r for r in refs if r.declared and r.declared_kind != "display"), None)
        proxy = next((r.decoded.strip() for r in refs if r.proxied), None)
        # The other sources of the elements naming it (srcset, data-original...), as
        # pipeline._context finds them.
        elements = {r.element for r in every if r.source == source}
        alternates = dict.fromkeys(
            r.source for r in every if r.element in elements and r.source != source
        )
        return cls(
            source,
            origin_host(source),
            sized.declared if sized else None,
            sized.declared_kind if sized else None,
            proxy,
            tuple(alternates),
            date,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the job's task kwargs."""
        return {
            "source": self.source,
            "host": self.host,
            "declared": list(self.declared) if self.declared else None,
            "kind": self.kind,
            "proxy": self.proxy,
            "alternates": list(self.alternates),
            "date": self.date,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Payload:
        """Rebuild a payload from a job's task kwargs."""
        declared = data.get("declared")
        return cls(
            str(data["source"]),
            str(data.get("host") or origin_host(str(data["source"]))),
            (int(declared[0]), int(declared[1])) if declared else None,
            data.get("kind"),
            data.get("proxy"),
            tuple(str(a) for a in data.get("alternates") or ()),
            data.get("date"),
        )

    def refs(self) -> list[ImageRef]:
        """Return the one reference the downloader reads the size and wrapper from."""
        url = self.proxy or self.source
        return [
            ImageRef(
                "",
                0,
                0,
                0,
                url,
                url,
                self.source,
                "queue",
                self.declared,
                self.kind,
                self.proxy is not None,
                "",
                "",
                0,
            )
        ]

    def context(self) -> Context:
        """Return the downloader's context: the alternates and the post's date."""
        return Context(self.alternates, self.date)


@dataclass(frozen=True, slots=True)
class Batch:
    """What a job carries: some sources of one origin host."""

    host: str
    payloads: tuple[Payload, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the job's task kwargs."""
        return {"host": self.host, "sources": [p.to_json() for p in self.payloads]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Batch:
        """Rebuild a batch from a job's task kwargs (a job of one source, as queued before)."""
        if "sources" not in data:
            payload = Payload.from_json(data)
            return cls(payload.host, (payload,))
        payloads = tuple(Payload.from_json(p) for p in data["sources"])
        return cls(str(data.get("host") or payloads[0].host), payloads)


class Runner(Protocol):
    """What a worker puts in the job context for the task to call."""

    async def fetch(self, batch: Batch, job: int) -> None:
        """Fetch the sources of ``batch`` (job ``job``) that need it; record each."""
        ...


class WorkerJobs(JobManager):
    """procrastinate's job manager, telling mirror each worker it registers (for status)."""

    def __init__(
        self, connector: procrastinate.BaseConnector, on_register: Callable[[int], Awaitable[None]]
    ) -> None:
        super().__init__(connector)
        self.on_register = on_register

    async def register_worker(self) -> int:
        """Register the worker with procrastinate, then with mirror."""
        worker_id = await super().register_worker()
        await self.on_register(worker_id)
        return worker_id


class Retry(procrastinate.BaseRetryStrategy):
    """
    When a task is tried again: after the store, the manifest or the queue failed under it
    (``attempts`` times at most, waiting 2, 4, 8... s), and at once when its worker stopped
    mid-task. An origin's failure is never retried here: it is a recorded outcome.
    """

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts

    def get_retry_decision(
        self, *, exception: BaseException, job: procrastinate.jobs.Job
    ) -> procrastinate.RetryDecision | None:
        """Return when to run ``job`` again after ``exception``, or None for never."""
        if isinstance(exception, asyncio.CancelledError | JobAborted):
            return procrastinate.RetryDecision(retry_in={"seconds": 0})
        transient = isinstance(exception, StoreError | ManifestError | QueueError)
        if transient and job.attempts < self.attempts:
            return procrastinate.RetryDecision(retry_in={"seconds": RETRY_WAIT * 2**job.attempts})
        return None


async def _fetch(context: procrastinate.JobContext, /, **kwargs: Any) -> None:
    runner: Runner = context.additional_context[RUNNER]
    assert context.job.id is not None  # a job a worker fetched has its id
    await runner.fetch(Batch.from_json(kwargs), context.job.id)


def build_app(config: Config, *, pool_size: int = 4) -> procrastinate.App:
    """
    Build the app over the manifest's database; open it (``async with app.open_async()``).

    Raises:
        UsageError: the manifest is not PostgreSQL.
    """
    url = require_postgres(config, "the queue")
    connector = procrastinate.PsycopgConnector(
        conninfo=url, min_size=1, max_size=pool_size, name="mirror-queue"
    )
    app = procrastinate.App(connector=connector)
    retry = Retry(config.queue.retries)
    app.task(name=TASK, queue=QUEUE, pass_context=True, retry=retry)(_fetch)
    return app


def identity() -> tuple[str, int]:
    """Return this process's machine name and pid, as ``queue_workers`` records them."""
    return socket.gethostname(), os.getpid()
