"""
Per-source claims: a source is fetched by one worker at a time, across machines.

A worker claims the sources of a task before it asks the manifest about them: a session
advisory lock on the 64-bit key :func:`source_key` on the worker's claims connection, taken for
the whole task in one round trip and given back with the task's ``queue_sources`` rows in
another. Liveness is the session's, not the heartbeat's: a worker killed with SIGKILL (or whose
machine is gone, once PostgreSQL drops its connection) gives its claims back with the
connection, while a live worker whose heartbeat came late keeps them. So when its task is
queued again for another worker, that worker waits for the claim, then finds the source
recorded and fetches nothing, instead of fetching it a second time beside the first.

Advisory locks are re-entrant within a session, so the claims one worker's tasks hold are also
kept here, and a second task of the same worker waits for them like any other worker's.
The single-key lock space is apart from the two-key one the host slots use.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Self

import psycopg

from mirror.errors import QueueError
from mirror.manifest.postgres import redact

Conn = psycopg.AsyncConnection[Any]

_TAKE = "SELECT k FROM unnest(%s::bigint[]) AS k WHERE pg_try_advisory_lock(k)"
# The task's rows go with its claims: enqueue may queue those sources again from now on.
_GIVE = """
WITH ended AS (DELETE FROM queue_sources WHERE job = %s)
SELECT count(*) FROM unnest(%s::bigint[]) AS k WHERE pg_advisory_unlock(k)
"""


def source_key(source: str) -> int:
    """Return the advisory-lock key of ``source``: 64 bits of its SHA-256, signed like int8."""
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Claims:
    """One worker's claims, over its own connection (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._name = redact(url)
        self._conn: Conn | None = None
        self._lock = asyncio.Lock()
        self._held: set[int] = set()

    async def __aenter__(self) -> Self:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            # Closing the session gives back every claim it still holds.
            await self._conn.close()
            self._conn = None
        self._held.clear()

    async def _connect(self) -> Conn:
        try:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise QueueError(f"queue {self._name}: cannot connect: {redact(str(exc))}") from exc
        # A new session holds nothing: claims of a broken one went with it.
        self._held.clear()
        return self._conn

    async def _keys(self, query: str, args: tuple[Any, ...]) -> list[Any]:
        async with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                conn = await self._connect()
            try:
                return [row[0] for row in await (await conn.execute(query, args)).fetchall()]
            except psycopg.Error as exc:
                if conn.broken:
                    await conn.close()
                raise QueueError(f"queue {self._name}: {redact(str(exc).strip())}") from exc

    async def take(self, sources: Sequence[str]) -> list[str]:
        """Claim what can be claimed of ``sources`` now; return those (the rest are held)."""
        keys: dict[int, list[str]] = {}
        for source in sources:
            keys.setdefault(source_key(source), []).append(source)
        free = [k for k in keys if k not in self._held]
        if not free:
            return []
        got = await self._keys(_TAKE, (free,))
        self._held.update(got)
        return [s for k in got for s in keys[k]]

    async def give(self, sources: Iterable[str], job: int) -> None:
        """Give back the claims of ``sources``, and the ``queue_sources`` rows of ``job``."""
        keys = list({source_key(s) for s in sources} & self._held)
        self._held.difference_update(keys)
        await self._keys(_GIVE, (job, keys))
