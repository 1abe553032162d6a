"""
Global politeness: per-host request slots and one circuit breaker, shared by every worker.

A request to an origin host first takes one of the host's ``fetch.per_host`` slots: a session
advisory lock ``(hash(host), SLOT_BASE + n)`` on this worker's slot connection, so at most
``per_host`` requests are in flight per host across all workers and machines, and a worker
that dies (SIGKILL, a lost machine) gives its slots back with its connection, without a word.
A slot given back is announced (NOTIFY ``queue_slots``) so waiters elsewhere try again at once;
silent releases are found by looking again every ``queue.poll_interval`` seconds.

The breaker is the ``queue_hosts`` row of the host: giving a slot back counts a host-level
failure (DNS, connection, timeout, TLS, truncation, 5xx), or ends the streak when the host
answered; at ``fetch.host_failures`` in a row the host is down for ``queue.host_down_for``
seconds for everyone. Taking a slot of a down host raises ``host-down`` at once (one round trip
answers both), and after the cooldown one more failure takes it down again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, Self

import psycopg

from mirror.config import Config
from mirror.downloader import is_host_level
from mirror.errors import FetchError, PolicyError, QueueError
from mirror.manifest.postgres import redact
from mirror.queue.schema import SLOT_CHANNEL

log = logging.getLogger("mirror.fetch")

Conn = psycopg.AsyncConnection[Any]


def host_key(host: str) -> int:
    """Return the advisory-lock key of ``host``: 32 bits of its SHA-256, signed like int4."""
    digest = hashlib.sha256(host.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "answered"
    if isinstance(exc, FetchError) and not isinstance(exc, PolicyError):
        return "failed" if is_host_level(exc.reason) else "answered"
    return "other"  # cancelled, refused by policy before any request: says nothing of the host


class HostSlots:
    """
    The shared slots and breaker, over two connections of this worker's (see module docstring).

    Enter it (``async with``); :meth:`slot` around each origin request, :meth:`is_down` for the
    downloader's check before it even asks.
    """

    def __init__(self, url: str, config: Config, *, clock: Callable[[], float] = time.time):
        self.url = url
        self.per_host = config.fetch.per_host
        self.threshold = config.fetch.host_failures
        self.down_for = config.queue.host_down_for
        self.poll = config.queue.poll_interval
        self.clock = clock
        self.taken = 0
        self.waits = 0
        self._name = redact(url)
        self._conn: Conn | None = None
        self._listen: Conn | None = None
        self._listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._events: dict[str, asyncio.Event] = {}
        self._down: dict[str, float] = {}
        # The slots this worker holds, by host (its session could take them again).
        self._held: dict[str, set[int]] = {}
        # At most per_host of this worker's requests ask for a host's slots at once: the rest
        # wait here, not in a round trip each time a slot is given back.
        self._local: dict[str, asyncio.Semaphore] = {}
        # This worker's requests wanting or holding a slot of the host now.
        self._wanting: Counter[str] = Counter()
        # Slots kept between two requests of a busy, healthy host (held, not in use).
        self._kept: dict[str, list[int]] = {}
        # Hosts in a failure streak, as last heard: their slots go back after every request.
        self._failing: set[str] = set()
        # Outcomes not yet counted, sent in groups by one task at a time.
        self._reports: list[tuple[str, str]] = []
        self._reporter: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        try:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            self._listen = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            await self._listen.execute(f"LISTEN {SLOT_CHANNEL}")
        except psycopg.Error as exc:
            await self.__aexit__()
            raise QueueError(f"queue {self._name}: cannot connect: {redact(str(exc))}") from exc
        self._listener = asyncio.create_task(self._run_listener(), name="queue-slots-listen")
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Outcomes not counted yet are dropped: the breaker only misses some answers.
        for task in (self._reporter, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for conn in (self._conn, self._listen):
            if conn is not None:
                # Closing the session gives back every slot it still holds.
                await conn.close()
        self._conn = self._listen = self._listener = self._reporter = None

    async def _run_listener(self) -> None:
        assert self._listen is not None
        try:
            async for note in self._listen.notifies():
                self._wake(note.payload)
        except psycopg.Error as exc:
            log.warning("queue slot notifications stopped (polling instead): %s", redact(str(exc)))
        finally:
            for host in list(self._events):
                self._wake(host)

    def _wake(self, host: str) -> None:
        event = self._events.pop(host, None)
        if event is not None:
            event.set()

    def is_down(self, host: str) -> bool:
        """Tell whether this worker has heard the shared breaker take ``host`` down (till when)."""
        until = self._down.get(host)
        if until is None:
            return False
        if until > self.clock():
            return True
        del self._down[host]
        return False

    def down_until(self, host: str) -> float | None:
        """Return until when the shared breaker has ``host`` down, as last heard (or None)."""
        return self._down.get(host)

    async def _call(self, query: str, args: Callable[[], tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        # ``args`` is built under the lock: the held slots it names must be current.
        async with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    # A broken slot connection took its slots with it; start a new session.
                    self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                    self._held.clear()
                    self._kept.clear()
                rows = await (await self._conn.execute(query, args())).fetchall()
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    await self._conn.close()
                raise QueueError(f"queue {self._name}: {redact(str(exc).strip())}") from exc
        return [tuple(row) for row in rows]

    async def _take(self, host: str) -> int:
        key = host_key(host)
        # Bounded by the task: a worker stopping cancels it; a host busy elsewhere is waited for.
        while True:
            kept = self._kept.get(host)
            if kept:
                # Given up by a request of this worker that wanted no round trip.
                return kept.pop()
            event = self._events.setdefault(host, asyncio.Event())
            ((slot, down),) = await self._call(
                "SELECT o_slot, o_down FROM queue_take_slot(%s, %s, %s, %s, %s)",
                lambda: (key, self.per_host, host, self.clock(), sorted(self._held.get(host, ()))),
            )
            if down is not None:
                self._down[host] = float(down)
                raise FetchError(
                    f"{host} is down (the breaker all workers share)",
                    "host-down",
                    f"{host} is down for every worker",
                )
            if slot >= 0:
                self._held.setdefault(host, set()).add(int(slot))
                self.taken += 1
                return int(slot)
            self.waits += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.poll)

    def _heard(self, rows: list[tuple[Any, ...]]) -> None:
        """Take in the breaker rows a call returned: who is failing, who is down till when."""
        now = self.clock()
        for host, failures, down in rows:
            if failures:
                self._failing.add(host)
            else:
                self._failing.discard(host)
            if down is None:
                self._down.pop(host, None)
                continue
            if down > now and self._down.get(host, now) <= now:
                log.warning(
                    "%s failed %d times in a row: left alone by every worker for %g s",
                    host,
                    self.threshold,
                    self.down_for,
                )
            self._down[host] = float(down)

    async def _give(self, host: str, slots: list[int], outcome: str) -> None:
        now = self.clock()
        try:
            rows = await self._call(
                "SELECT * FROM queue_give_slots(%s, %s, %s, %s, %s, %s, %s)",
                lambda: (host_key(host), slots, host, outcome, self.threshold, self.down_for, now),
            )
        finally:
            # Given back, or gone with a broken session: either way no longer this worker's.
            held = self._held.get(host)
            if held is not None:
                held.difference_update(slots)
                if not held:
                    del self._held[host]
        self._wake(host)
        self._heard(rows)

    def _report(self, host: str, outcome: str) -> None:
        """Count ``outcome`` for the breaker with the next group of reports (not waited for)."""
        self._reports.append((host, outcome))
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.create_task(self._send_reports(), name="queue-slot-reports")

    async def _send_reports(self) -> None:
        while self._reports:  # bounded: each pass empties the list; requests refill it
            sent, self._reports = self._reports, []
            hosts, outcomes = [h for h, _ in sent], [o for _, o in sent]
            try:
                rows = await self._call(
                    "SELECT * FROM queue_report(%s, %s, %s, %s, %s)",
                    partial(self._report_args, hosts, outcomes),
                )
            except QueueError as exc:
                log.warning("cannot count outcomes for the shared breaker: %s", exc)
                return
            self._heard(rows)

    def _report_args(self, hosts: list[str], outcomes: list[str]) -> tuple[Any, ...]:
        return hosts, outcomes, self.threshold, self.down_for, self.clock()

    async def _release(self, host: str, slot: int, outcome: str) -> None:
        if outcome == "failed" or host in self._failing:
            # A host in a failure streak: every request is counted before the next one goes,
            # and its slots go back, so the breaker trips at the same request for everyone.
            await self._give(host, [slot, *self._kept.pop(host, [])], outcome)
        elif self._wanting[host] > 1:
            # Another request of this worker wants the host: it takes this slot, no round trip.
            self._kept.setdefault(host, []).append(slot)
            self._wake(host)
            if outcome == "answered":
                self._report(host, outcome)
        else:
            await self._give(host, [slot, *self._kept.pop(host, [])], outcome)

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """
        Hold one of ``host``'s slots around a request; count its outcome for the breaker.

        Raises:
            FetchError: ``host-down``, when the shared breaker has the host down.
            QueueError: the database cannot be reached.
        """
        local = self._local.setdefault(host, asyncio.Semaphore(self.per_host))
        self._wanting[host] += 1
        try:
            async with local:
                slot = await self._take(host)
                failure: BaseException | None = None
                try:
                    yield
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    # Shielded: a cancelled request still gives its slot back (else only the
                    # session's end would).
                    with contextlib.suppress(QueueError):
                        await asyncio.shield(self._release(host, slot, _outcome(failure)))
        finally:
            self._wanting[host] -= 1
            if not self._wanting[host]:
                del self._wanting[host]
                # Kept for a request that then never asked (host-down, cancelled): back now.
                kept = self._kept.pop(host, None)
                if kept:
                    with contextlib.suppress(QueueError):
                        await asyncio.shield(self._give(host, kept, "other"))
