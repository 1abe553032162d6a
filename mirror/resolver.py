"""
The miss path of ``serve``: one owner of all upstream fetching.

:class:`Resolver` decides whether a source URL may be fetched (closed world, open-mode host
allowlist, checked on every redirect hop too), remembers failures with backoff (the negative
cache), shares one fetch among all concurrent requests for a URL (:class:`SingleFlight`, which
cancels a fetch once every waiter has gone, unless it is storing), and fetches with the same
:class:`~mirror.fetch.Fetcher`, verification, limits and address policy as ``mirror run``, then
commits the object into the store (whichever backend, through its protocol) and records it before
answering.

With ``--workers N`` exactly one process owns a Resolver and the workers reach it over a Unix
socket (:mod:`mirror.workers`), so the fetch limits and single flight are global.

Everything is recorded through the async manifest (:mod:`mirror.manifest.base`). Over
PostgreSQL several ``serve`` nodes share one manifest and behave as one proxy
(:attr:`Resolver.shared`): a miss is fetched by the node that takes the lease ``fetch:<url>``,
the others wait for its release and answer from the catalog (caught up at once) or the negative
cache, which lives in the manifest (``negative_get``/``negative_put``; a success forgets the
URL's failure there, as the local cache does); eviction runs only on the node holding the lease
``evict``. The holder renews its fetch lease every third of its TTL while the fetch runs, so a
fetch slower than the TTL (a big image on a slow origin) is not started again by another node;
the renewals stop at :func:`fetch_budget`, the longest a fetch can run within ``[fetch]``'s
limits, so a wedged node frees the URL a TTL later. Over SQLite the single flight and the
negative cache are this process's, as one process owns the file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any, Generic, Protocol, TypeVar

from mirror.bounded import BoundedMap, url_key
from mirror.catalog import Catalog, Entry
from mirror.config import Config
from mirror.downloader import Context, Downloader
from mirror.errors import ManifestError
from mirror.manifest import SourceResult
from mirror.manifest import base as seam
from mirror.metrics import Metrics
from mirror.source import host_allowed, hostname, origin_host
from mirror.store import ObjectStore

log = logging.getLogger(__name__)

# Distinct URLs being fetched at once, queued ones included; more answer 503 at once so a flood
# of distinct URLs cannot pile up unbounded work.
MAX_IN_FLIGHT = 1024
# Remembered failures, keyed by a digest of the URL, the least recently asked for going first
# beyond either bound: an entry costs about 340 bytes, so 100,000 entries take about 34 MB and the
# byte bound is a backstop for answers that cannot be shared (see FailureCache).
MAX_FAILURES = 100_000
FAILURE_BYTES = 48 * 1024 * 1024
MAX_NEGATIVE_TTL = 3600.0
RECENT_FAILURES = 100
# What the status page shows of a failed URL (up to 8 KB each otherwise).
RECENT_SOURCE_CHARS = 256
# Distinct (status, reason, message) answers shared by every entry that gives them.
SHARED_ANSWERS = 256
# How often a node waiting on another's fetch lease tries again when the holder went away
# without an answer (its fetch was cancelled, or the lease expired); then it fetches itself.
LEASE_TRIES = 3
# A fetch lease outlives the request that started it by this much: storing runs to its end.
LEASE_MARGIN = 30.0
# The holder renews its fetch lease this many times per TTL: two renewals may fail (a database
# that hiccups) before another node sees the lease expire.
RENEWALS_PER_TTL = 3
EVICT_LEASE = "evict"

T = TypeVar("T")
Sleep = Callable[[float], Coroutine[Any, Any, None]]


def fetch_budget(config: Config) -> float:
    """
    The longest one miss's fetch can take within ``[fetch]``'s limits, recording included.

    Every request serve may send (the origin with each request profile, then the fallback
    proxy) running every attempt to ``total_timeout``, with the longest wait between attempts.
    """
    fetch = config.fetch
    wait = max(fetch.backoff_max, fetch.retry_after_cap)
    one = fetch.attempts * fetch.total_timeout + (fetch.attempts - 1) * wait
    return (len(fetch.profiles) + 2) * one + LEASE_MARGIN


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a miss ended: 200 with the stored object, or an HTTP error status and reason."""

    status: int
    reason: str | None = None
    message: str = ""
    entry: Entry | None = None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready form, for the workers' socket."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resolution:
        """Rebuild what :meth:`to_json` gave."""
        entry = data.get("entry")
        return cls(
            int(data["status"]),
            data.get("reason"),
            str(data.get("message", "")),
            Entry(**entry) if entry else None,
        )


class Resolves(Protocol):
    """What a worker needs from the fetch owner, in this process or over a socket."""

    async def resolve(self, source: str) -> Resolution:
        """Fetch (or refuse) a source the worker could not serve from the store."""
        ...

    async def touch(self, seen: dict[str, float]) -> None:
        """Note when open-mode sources were last served."""
        ...

    async def status(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """Merge this worker's metrics snapshot; return all metrics and recent failures."""
        ...


class SingleFlight(Generic[T]):
    """
    Concurrent calls for one key share one task; each caller waits at most ``wait`` s.

    The work is cancelled once every caller has gone (timed out or disconnected), so a fetch
    nobody waits for gives its slot back, unless the work has called :meth:`committing` (it is
    storing what it got, which must not be cut in half).
    """

    def __init__(self, limit: int = MAX_IN_FLIGHT) -> None:
        self.limit = limit
        self._tasks: dict[str, asyncio.Task[T]] = {}
        self._waiters: dict[asyncio.Task[T], int] = {}
        self._committing: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def do(self, key: str, make: Callable[[], Awaitable[T]], wait: float) -> tuple[T, bool]:
        """
        Return ``make()``'s result for ``key`` and whether this call joined one in flight.

        The work runs in its own task: a caller that times out or goes away leaves it running
        for the others; the last one to go cancels it (see the class docstring).

        Raises:
            TimeoutError: the work took longer than ``wait`` seconds.
            OverflowError: ``limit`` keys are already in flight.
        """
        task = self._tasks.get(key)
        joined = task is not None
        if task is None:
            if len(self._tasks) >= self.limit:
                raise OverflowError(f"{len(self._tasks)} fetches in flight")

            async def run() -> T:
                return await make()

            task = asyncio.ensure_future(run())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        self._waiters[task] = self._waiters.get(task, 0) + 1
        try:
            async with asyncio.timeout(wait):
                return await asyncio.shield(task), joined
        finally:
            self._leave(key, task)

    def committing(self) -> None:
        """Called from inside the work: from now on it runs to its end, waited for or not."""
        task = asyncio.current_task()
        if task is not None:
            self._committing.add(task)

    def _leave(self, key: str, task: asyncio.Task[T]) -> None:
        left = self._waiters.get(task, 0) - 1
        if left > 0:
            self._waiters[task] = left
            return
        self._waiters.pop(task, None)
        if task.done() or task in self._committing:
            return
        # A later caller must start afresh, not join work that is being cancelled.
        if self._tasks.get(key) is task:
            del self._tasks[key]
        task.cancel()

    def _done(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        self._waiters.pop(task, None)
        self._committing.discard(task)
        if not task.cancelled():
            # Retrieved here so a failure nobody waited for is not logged as "never retrieved".
            task.exception()

    async def close(self) -> None:
        """Cancel what is still in flight and wait for it to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_Failure = tuple[float, int, Resolution]  # (answer until, consecutive failures, the answer)


class FailureCache:
    """
    The negative cache: a failed source's answer until its backoff ends.

    Keyed by :func:`~mirror.bounded.url_key` of the normalized source, and bounded by entries
    and bytes (:class:`~mirror.bounded.BoundedMap`). Failures say one of a few answers
    ("upstream failed: http-404"), so equal answers are one shared object, not one per URL.
    """

    def __init__(self, max_entries: int = MAX_FAILURES, max_bytes: int = FAILURE_BYTES) -> None:
        self._answers: dict[tuple[int, str | None, str], Resolution] = {}
        self._map: BoundedMap[bytes, _Failure] = BoundedMap(max_entries, max_bytes, self._cost)

    def __len__(self) -> int:
        return len(self._map)

    @property
    def held(self) -> int:
        """The estimated bytes of every entry."""
        return self._map.held

    def _cost(self, key: bytes, value: _Failure) -> int:
        until, count, answer = value
        cost = sys.getsizeof(key) + sys.getsizeof(value) + sys.getsizeof(until)
        if count > 256:  # CPython shares the small ints
            cost += sys.getsizeof(count)
        if self._answers.get((answer.status, answer.reason, answer.message)) is not answer:
            cost += sys.getsizeof(answer) + sys.getsizeof(answer.message)
            cost += sys.getsizeof(answer.reason) if answer.reason else 0
        return cost

    def _shared(self, answer: Resolution) -> Resolution:
        # Shared answers are never dropped, so an entry's cost is the same when it goes.
        key = (answer.status, answer.reason, answer.message)
        if key not in self._answers and len(self._answers) < SHARED_ANSWERS:
            self._answers[key] = answer
        return self._answers.get(key, answer)

    def lookup(self, source: str, now: float) -> Resolution | None:
        """Return the remembered answer for ``source`` while its backoff lasts, else None."""
        found = self._map.get(url_key(source))
        if found is None or found[0] <= now:
            return None
        return found[2]

    def remember(self, source: str, answer: Resolution, now: float, ttl: float) -> None:
        """Remember a failure for ``ttl`` seconds, doubling per consecutive failure (capped)."""
        key = url_key(source)
        old = self._map.get(key)
        count = old[1] + 1 if old is not None else 1
        ttl = min(MAX_NEGATIVE_TTL, ttl * 2 ** min(count - 1, 32))
        self._map.put(key, (now + ttl, count, self._shared(answer)))

    def forget(self, source: str) -> None:
        """Drop what was remembered for ``source`` (it has just been fetched)."""
        self._map.pop(url_key(source))


class Resolver:
    """The one owner of upstream fetching for a ``serve`` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        store: ObjectStore,
        manifest: seam.Manifest,
        evictor: seam.Manifest,
        downloader: Downloader,
        catalog: Catalog,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """
        Own fetching for one serve process.

        Args:
            config: the tree (``serve`` and ``manifest.url``, which says whether nodes share).
            store: where objects go.
            manifest: records results, served URLs and hit times (and, shared, leases and
                the negative cache).
            evictor: the manifest on a connection of its own, for ``evict_served``.
            downloader: fetches and verifies.
            catalog: the URL map, told at once of what this process fetched.
            metrics: this process's counters.
            clock: monotonic time for the local negative cache, durations and the lease's
                renewal budget.
            wall: Unix time, which the nodes share: the shared negative cache's expiry.
            sleep: waits between renewals of a fetch lease (tests step it).
        """
        self.config = config
        self.store = store
        self.manifest = manifest
        self.evictor = evictor
        self.downloader = downloader
        self.catalog = catalog
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.shared = config.manifest.scheme == "postgresql"
        # Unique per process and start, so a restarted node never inherits its old leases.
        self.holder = f"serve:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.flight: SingleFlight[Resolution] = SingleFlight()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.failures = FailureCache()

    async def resolve(self, source: str) -> Resolution:
        """Answer a miss for ``source`` (already normalized); never raises for upstream faults."""
        entry = self.catalog.lookup(source)
        if entry is not None and await self.store.stat(entry.sha256, entry.ext) is not None:
            return Resolution(200, entry=entry)
        refused = self._refuse(source)
        if refused is not None:
            return refused
        remembered = await self._remembered(source)
        if remembered is not None:
            self.metrics.inc("mirror_negative_cache_hits_total")
            return remembered
        timeout = self.config.serve.request_timeout
        work = self._fetch_shared if self.shared else self._fetch
        try:
            resolution, joined = await self.flight.do(source, lambda: work(source), timeout)
        except OverflowError:
            return Resolution(503, "busy", "too many fetches in flight; try again")
        except TimeoutError:
            return Resolution(504, "timeout", f"no answer within {timeout:g} s")
        if joined:
            self.metrics.inc("mirror_coalesced_waiters_total")
        return resolution

    def _refuse(self, source: str) -> Resolution | None:
        serve = self.config.serve
        if not serve.open:
            if self.catalog.knows(source):
                return None
            return Resolution(404, "unknown-url", "no post names this URL (closed world)")
        if host_allowed(hostname(source), serve.allow_hosts):
            return None
        return Resolution(403, "not-allowed", "this host is not in serve.allow_hosts")

    async def _remembered(self, source: str) -> Resolution | None:
        """The negative cache's answer for ``source`` while its backoff lasts, else None."""
        if not self.shared:
            return self.failures.lookup(source, self.clock())
        found = await self.manifest.negative_get(source)
        if found is None or found.until <= self.wall():
            return None
        return Resolution(found.status, found.reason, f"upstream failed: {found.reason}")

    async def _answered(self, source: str) -> Resolution | None:
        """What another node's fetch of ``source`` left: its object or its failure, else None."""
        await self.catalog.sync()
        entry = self.catalog.lookup(source)
        if entry is not None and await self.store.stat(entry.sha256, entry.ext) is not None:
            return Resolution(200, entry=entry)
        remembered = await self._remembered(source)
        if remembered is not None:
            self.metrics.inc("mirror_negative_cache_hits_total")
        return remembered

    async def _fetch_shared(self, source: str) -> Resolution:
        """Fetch ``source`` once across the nodes: the lease holder fetches, the others wait."""
        key = f"fetch:{source}"
        ttl = self.config.serve.request_timeout + LEASE_MARGIN
        for _ in range(LEASE_TRIES):
            if await self.manifest.lease(key, self.holder, ttl):
                keeper = asyncio.create_task(self._keep_lease(key, ttl), name="fetch-lease")
                try:
                    # Another node may have finished between our miss and our lease.
                    done = await self._answered(source)
                    return done if done is not None else await self._fetch(source)
                finally:
                    # Ended before the release, so no renewal can take the lease back after it.
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
                    await self.manifest.release(key, self.holder)
            self.metrics.inc("mirror_lease_waits_total")
            if not await self.manifest.wait_released(key, self.config.serve.request_timeout):
                timeout = self.config.serve.request_timeout
                return Resolution(504, "timeout", f"no answer within {timeout:g} s")
            done = await self._answered(source)
            if done is not None:
                return done
        return await self._fetch(source)

    async def _keep_lease(self, key: str, ttl: float) -> None:
        """Renew the lease ``key`` every ``ttl / 3`` s until cancelled or past the fetch budget."""
        deadline = self.clock() + fetch_budget(self.config)
        while True:
            await self.sleep(ttl / RENEWALS_PER_TTL)
            if self.clock() >= deadline:
                log.warning("serve: %s outlived the fetch budget; its lease will expire", key)
                return
            try:
                held = await self.manifest.lease(key, self.holder, ttl)
            except ManifestError as exc:
                log.warning("serve: cannot renew %s (trying again): %s", key, exc)
                continue
            if not held:
                # Renewed too late: it expired and another node took it, and fetches too.
                log.warning("serve: lost %s to another node while fetching", key)
                return
            self.metrics.inc("mirror_lease_renewals_total")

    async def _fetch(self, source: str) -> Resolution:
        started = self.clock()
        fallback = self.config.serve.fallback_proxy
        context = Context(proxy=fallback + source if fallback else None)
        outcome = await self.downloader.download(
            source, [], context, {}, names=("origin", "proxy"), allow=self._allow()
        )
        obj = outcome.obj
        if obj is not None:
            # Stored already: record it even if every waiter has gone meanwhile.
            self.flight.committing()
            await self._record(source, outcome.result(source, time.time()))
            entry = Entry(obj.sha256, obj.ext, obj.size)
            self.catalog.add(source, entry)
            self.failures.forget(source)
            if self.shared:
                try:
                    await self.manifest.negative_forget(source)
                except ManifestError as exc:
                    # The object is stored and recorded; the stale entry only expires later.
                    log.warning("serve: cannot forget the failure of %s: %s", source, exc)
            self._observe(started, "ok", "ok")
            return Resolution(200, entry=entry)
        reason = outcome.reason or "error"
        log.info("serve: %s failed: %s", source, reason)
        # Only the reason goes back: exception texts can quote what the upstream sent.
        resolution = Resolution(outcome.http_status, reason, f"upstream failed: {reason}")
        if self.shared:
            await self._share_failure(source, resolution)
        self._remember(source, resolution)
        self._observe(started, "failed", reason)
        return resolution

    def _allow(self) -> Callable[[str], bool] | None:
        """In open mode, the allowlist every hop must pass (the fallback proxy's host besides)."""
        serve = self.config.serve
        if not serve.open or not serve.allow_hosts:
            return None
        proxy = hostname(serve.fallback_proxy).lower() if serve.fallback_proxy else None
        return lambda host: host == proxy or host_allowed(host, serve.allow_hosts)

    async def _record(self, source: str, result: SourceResult) -> None:
        if self.catalog.knows(source):
            await self.manifest.record_results([result])
            return
        await self.manifest.record_served(source, result)
        evicted = await self._evict()
        if evicted:
            self.metrics.inc("mirror_evicted_objects_total", by=len(evicted))
            log.info("open mode: evicted %d objects over serve.max_store_bytes", len(evicted))

    async def _evict(self) -> list[tuple[str, str]]:
        """
        Evict open-mode objects beyond the budget; shared, only on the ``evict`` lease's holder.

        Decided and deleted in one write transaction of the manifest, so a run's pin lands
        either before it (the object is spared) or after it (the run writes the object again).
        A node that finds the lease taken skips: the holder's eviction is deciding right now,
        and the next record on any node evicts again.
        """
        budget, delete = self.config.serve.max_store_bytes, self.store.delete
        if not self.shared:
            return await self.evictor.evict_served(budget, delete)
        ttl = self.config.serve.request_timeout + LEASE_MARGIN
        if not await self.evictor.lease(EVICT_LEASE, self.holder, ttl):
            self.metrics.inc("mirror_evictions_skipped_total")
            return []
        try:
            return await self.evictor.evict_served(budget, delete)
        finally:
            await self.evictor.release(EVICT_LEASE, self.holder)

    async def _share_failure(self, source: str, resolution: Resolution) -> None:
        """Put a failure in the manifest's negative cache: the nodes' count and backoff."""
        old = await self.manifest.negative_get(source)
        count = old.count + 1 if old is not None else 1
        ttl = min(MAX_NEGATIVE_TTL, self.config.serve.negative_ttl * 2 ** min(count - 1, 32))
        until, reason = self.wall() + ttl, resolution.reason or "error"
        await self.manifest.negative_put(source, until, count, resolution.status, reason)

    def _remember(self, source: str, resolution: Resolution) -> None:
        if not self.shared:
            ttl = self.config.serve.negative_ttl
            self.failures.remember(source, resolution, self.clock(), ttl)
        shown = source if len(source) <= RECENT_SOURCE_CHARS else source[:RECENT_SOURCE_CHARS] + "…"
        self.recent.append(
            {
                "time": time.time(),
                "host": origin_host(source)[:RECENT_SOURCE_CHARS],
                "source": shown,
                "status": resolution.status,
                "reason": resolution.reason,
            }
        )

    def _observe(self, started: float, outcome: str, reason: str) -> None:
        self.metrics.observe(self.clock() - started)
        self.metrics.inc("mirror_upstream_fetches_total", (outcome, reason))

    async def touch(self, seen: dict[str, float]) -> None:
        """Write open-mode hit times to the manifest in one transaction."""
        if seen:
            await self.manifest.touch_served(seen)

    async def status(self, snapshot: dict[str, Any], worker: str = "self") -> dict[str, Any]:
        """Keep ``worker``'s latest snapshot; return every snapshot and the recent failures."""
        self.snapshots[worker] = snapshot
        return {
            "snapshots": [self.metrics.snapshot(), *self.snapshots.values()],
            "failures": list(self.recent),
            "in_flight": len(self.flight),
        }
