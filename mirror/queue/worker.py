"""
``mirror worker``: fetch → verify → store → manifest for queued sources, on any machine.

A worker is a procrastinate worker on the ``mirror-fetch`` queue running up to
``queue.concurrency`` (else ``fetch.jobs``) tasks at once, each a batch of one host's sources
whose downloads run side by side (``fetch.per_host`` at once per host, in this process and, by
:class:`~mirror.queue.hosts.HostSlots`, across every worker). It holds what a run of ``mirror
fetch`` holds (one :class:`~mirror.fetch.Fetcher`, the store, the manifest). A task claims its
sources (:mod:`mirror.queue.claims`), asks the manifest about all of them at once, skips those
mirrored (and the object there) or failed and not due yet, downloads the rest as the pipeline
does and records each outcome as it comes (a failure's backoff as the pipeline computes it),
many sources per transaction when they finish together (:class:`Recorder`).

Every ``queue.heartbeat`` seconds the worker tells procrastinate it is alive and looks for the
tasks of workers silent for ``queue.stalled_after`` (killed with SIGKILL, a machine lost): those
are queued again (procrastinate's stalled jobs, retried by hand as its documentation says; the
version pinned has no automatic retry). SIGTERM or SIGINT stops it: running tasks get
``SHUTDOWN_SECONDS`` to finish, then are cancelled and queued again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable

import procrastinate
import psycopg
from procrastinate import exceptions as queue_errors
from procrastinate.worker import Worker as QueueWorker

from mirror.config import Config
from mirror.downloader import Downloader, Outcome
from mirror.errors import QueueError
from mirror.fetch import Fetcher
from mirror.manifest import SourceResult, SourceRow, open_manifest
from mirror.manifest.base import Manifest
from mirror.manifest.postgres import redact
from mirror.queue.app import QUEUE, RUNNER, Batch, Payload, WorkerJobs, build_app, identity
from mirror.queue.claims import Claims
from mirror.queue.hosts import HostSlots
from mirror.queue.schema import ensure_schema
from mirror.store import open_store
from mirror.store.base import ObjectStore

log = logging.getLogger("mirror.fetch")

# Running tasks get this long to finish on SIGTERM; the rest are cancelled and queued again.
SHUTDOWN_SECONDS = 10.0
# A failed source is retried after failure_backoff * 2**(failures-1), at most a week later
# (the rule of pipeline.Job._resolve, which a queued source follows too).
MAX_BACKOFF = 7 * 24 * 3600.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def failure_due(config: Config, outcome: Outcome, failures: int, now: float) -> float:
    """Return when a failed source is due again: the pipeline's backoff; host-down at once."""
    backoff = min(MAX_BACKOFF, config.fetch.failure_backoff * 2 ** (failures - 1))
    return now if outcome.reason == "host-down" else now + backoff


async def open_queue(config: Config, *, pool_size: int = 4) -> procrastinate.App:
    """
    Bring the queue's schema up to date and return the app, not yet open.

    Raises:
        UsageError: the manifest is not PostgreSQL.
        QueueError: the database cannot be reached or refused the schema.
    """
    app = build_app(config, pool_size=pool_size)
    url = config.manifest.url
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise QueueError(f"queue {redact(url)}: cannot connect: {redact(str(exc))}") from exc
    try:
        await ensure_schema(conn, time.time())
    finally:
        await conn.close()
    return app


class Recorder:
    """
    Group commit of results: what finishes while a write is on its way goes in the next one.

    Under load one transaction records many sources, and each task still returns only once its
    results are in the manifest (a worker killed after that never fetches them again).
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._pending: list[tuple[SourceResult, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, result: SourceResult) -> None:
        """Return once ``result`` is in the manifest (ManifestError when it could not be)."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((result, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="queue-recorder")
        await done

    async def _write(self) -> None:
        while self._pending:  # bounded: each pass empties the list; tasks refill it
            batch, self._pending = self._pending, []
            try:
                await self.manifest.record_results([result for result, _ in batch])
            except Exception as exc:  # handed to every task whose result it was
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def aclose(self) -> None:
        """Wait for the write on its way, before the manifest closes."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)


class Runner:
    """What a task calls: the worker's resources and the job of one batch."""

    def __init__(
        self,
        config: Config,
        manifest: Manifest,
        store: ObjectStore,
        downloader: Downloader,
        slots: HostSlots,
        claims: Claims,
        clock: Callable[[], float],
        downloads: int,
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.store = store
        self.downloader = downloader
        self.slots = slots
        self.claims = claims
        self.recorder = Recorder(manifest)
        # A task's sources download side by side: at most this many of the worker's at once.
        self.downloads = asyncio.Semaphore(downloads)
        self.clock = clock
        self.outcomes: Counter[str] = Counter()

    async def fetch(self, batch: Batch, job: int) -> None:
        """
        Fetch each source of ``batch`` that needs it, under its claim; record each outcome.

        A source another worker (or another task of this one) has claimed is waited for, then
        asked about again: bounded by that worker, which records it or dies and lets it go.

        Raises:
            StoreError, ManifestError, QueueError: the task is tried again (Retry).
        """
        todo = {p.source: p for p in batch.payloads}
        claimed: list[str] = []
        try:
            while todo:
                claimed = await self.claims.take(list(todo))
                if not claimed:
                    await asyncio.sleep(self.config.queue.poll_interval)
                    continue
                rows = await self.manifest.get_many(claimed)
                mine = [todo.pop(source) for source in claimed]
                done = await asyncio.gather(
                    *(self._one(p, rows.get(p.source)) for p in mine), return_exceptions=True
                )
                await self.claims.give(claimed, job)
                claimed = []
                failed = next((e for e in done if isinstance(e, BaseException)), None)
                if failed is not None:
                    raise failed
        finally:
            if claimed:
                with contextlib.suppress(QueueError):
                    await asyncio.shield(self.claims.give(claimed, job))

    async def _one(self, payload: Payload, row: SourceRow | None) -> None:
        source, now = payload.source, self.clock()
        if row is not None and row.status == "mirrored" and row.sha256 and row.ext:
            if await self.store.stat(row.sha256, row.ext) is not None:
                self.outcomes["already"] += 1
                return
        elif row is not None and (row.next_attempt or 0) > now:
            self.outcomes["not-due"] += 1
            return
        async with self.downloads:
            outcome = await self.downloader.download(source, payload.refs(), payload.context(), {})
        if outcome.status != "mirrored":
            due = failure_due(self.config, outcome, (row.failures if row else 0) + 1, now)
            if outcome.reason == "host-down":
                due = max(due, self.slots.down_until(payload.host) or due)
            outcome = dataclasses.replace(outcome, next_attempt=due)
        await self.recorder.record(outcome.result(source, now))
        self.outcomes[outcome.status] += 1


async def _register(app: procrastinate.App, worker_id: int, concurrency: int) -> None:
    hostname, pid = identity()
    await app.connector.execute_query_async(
        query="INSERT INTO queue_workers VALUES (%(id)s, %(host)s, %(pid)s, %(n)s, %(at)s)",
        id=worker_id,
        host=hostname,
        pid=pid,
        n=concurrency,
        at=time.time(),
    )


async def reap(app: procrastinate.App, stalled_after: float) -> int:
    """
    Queue again the tasks of workers silent for ``stalled_after`` seconds; count them.

    A task whose source was queued again meanwhile is ended instead (its twin will run).
    """
    manager = app.job_manager
    await manager.prune_stalled_workers(stalled_after)
    requeued = 0
    for job in await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=stalled_after):
        try:
            await manager.retry_job(job)
            requeued += 1
            batch = Batch.from_json(job.task_kwargs)
            log.warning(
                "queued again the task of a silent worker: %d sources of %s",
                len(batch.payloads),
                batch.host,
            )
        except queue_errors.UniqueViolation:
            with contextlib.suppress(queue_errors.ConnectorException):
                await manager.finish_job(
                    job, status=procrastinate.jobs.Status.ABORTED, delete_job=False
                )
        except queue_errors.ConnectorException as exc:
            # Another worker's reaper retried it first: it is no longer "doing".
            log.debug("stalled task %s: %s", job.id, exc)
    return requeued


async def _reap_every(app: procrastinate.App, config: Config) -> None:
    # Bounded by the worker: cancelled when it stops.
    while True:
        try:
            await reap(app, config.queue.stalled_after)
        except queue_errors.ConnectorException as exc:
            log.warning("cannot look for stalled tasks: %s", redact(str(exc)))
        await asyncio.sleep(config.queue.heartbeat)


async def run_worker(
    config: Config,
    concurrency: int | None = None,
    *,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> Counter[str]:
    """
    Work the queue until SIGTERM or SIGINT (or ``stop``); return the outcomes counted.

    Raises:
        UsageError: the manifest is not PostgreSQL.
        QueueError, ManifestError, StoreError: the queue, manifest or store cannot be opened.
    """
    jobs = concurrency or config.queue.concurrency or config.fetch.jobs
    app = await open_queue(config, pool_size=4)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.open_async())
        manifest = await stack.enter_async_context(open_manifest(config, clock=clock))
        store = await stack.enter_async_context(open_store(config))
        fetcher = await stack.enter_async_context(Fetcher(config))
        slots = await stack.enter_async_context(HostSlots(config.manifest.url, config, clock=clock))
        # The per-run breaker is off: the shared one (slots) stands in for it.
        downloader = Downloader(config, fetcher, store, manifest, clock, breaker=False, guard=slots)
        claims = await stack.enter_async_context(Claims(config.manifest.url))
        runner = Runner(config, manifest, store, downloader, slots, claims, clock, jobs)
        # Before the manifest closes (the stack unwinds last in, first out).
        stack.push_async_callback(runner.recorder.aclose)

        async def registered(worker_id: int) -> None:
            await _register(app, worker_id, jobs)

        app.job_manager = WorkerJobs(app.connector, registered)
        worker = QueueWorker(
            app,
            queues=[QUEUE],
            name="mirror",
            concurrency=jobs,
            install_signal_handlers=False,
            additional_context={RUNNER: runner},
            update_heartbeat_interval=config.queue.heartbeat,
            stalled_worker_timeout=config.queue.stalled_after,
            fetch_job_polling_interval=config.queue.poll_interval,
            abort_job_polling_interval=config.queue.poll_interval,
            shutdown_graceful_timeout=SHUTDOWN_SECONDS,
        )
        for sig in SIGNALS:
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)
        running = asyncio.create_task(worker.run(), name="queue-worker")  # type: ignore[no-untyped-call]
        reaper = asyncio.create_task(_reap_every(app, config), name="queue-reaper")
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            worker.stop()  # type: ignore[no-untyped-call]
            stopping.cancel()
            reaper.cancel()
            await asyncio.gather(reaper, stopping, return_exceptions=True)
            await running
    return runner.outcomes
