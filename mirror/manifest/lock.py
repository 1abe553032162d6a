"""
The store lock of a PostgreSQL manifest: a session-level advisory lock on a connection of its own.

PostgreSQL frees a session lock when the session ends, however its process dies (SIGKILL
included: the kernel closes the socket and the server ends the session), so, as with the
``flock`` of a SQLite manifest (:mod:`mirror.lock`), a lock left by a dead mirror is simply free.
The row ``store_lock`` names the holder (pid, host, command, since) for the message a second
command prints when it is refused; the message has the shape of :class:`mirror.lock.StoreLock`'s.

The lock lasts as long as its connection: a holder whose connection breaks (the server
restarts, the network drops for longer than the TCP keepalives allow) loses it without being
told, so a job only relies on it to keep a second job from starting.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, Self

import psycopg

from mirror.lock import LockedError

log = logging.getLogger(__name__)

# Advisory lock keys (classid, objid): "mirr" and one number per purpose, per database.
_CLASS = 0x6D697272
STORE_KEY = (_CLASS, 1)
EVICT_KEY = (_CLASS, 2)
MIGRATE_KEY = (_CLASS, 3)


def locked_message(holder: Mapping[str, Any], where: str) -> str:
    """Return the refusal message for a store lock ``holder`` holds at ``where``."""
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    who = f"pid {holder.get('pid', '?')}"
    if holder.get("host"):
        who += f" on {holder['host']}"
    return (
        f"the store is locked by another mirror ({who}, `{holder.get('command', '?')}`, "
        f"since {when}): {where}; wait for it to finish, or stop it"
    )


class AdvisoryStoreLock:
    """``async with AdvisoryStoreLock(url, name, "mirror run"):`` holds the store lock or raises."""

    def __init__(self, url: str, name: str, command: str) -> None:
        """Describe the lock of the database at ``url`` (``name`` is its password-free form)."""
        self.url = url
        self.name = name
        self.command = command
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _holder(self, conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
        found = await conn.execute("SELECT pid, host, command, since FROM store_lock")
        row = await found.fetchone()
        return (
            {} if row is None else dict(zip(("pid", "host", "command", "since"), row, strict=True))
        )

    async def __aenter__(self) -> Self:
        """
        Take the lock at once or fail; never wait.

        Raises:
            LockedError: another session holds it.
            ManifestError: the database cannot be reached.
        """
        from mirror.manifest.postgres import wrap_errors  # the backend imports this module

        async with wrap_errors(self.name, "taking the store lock"):
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            try:
                found = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", STORE_KEY)
                row = await found.fetchone()
                holder = await self._holder(conn)
                if row is None or not row[0]:
                    raise LockedError(locked_message(holder, self.name))
                if holder:
                    log.warning(
                        "took over the store lock of %s left by pid %s on %s, which is gone",
                        self.name, holder.get("pid"), holder.get("host"),
                    )  # fmt: skip
                await conn.execute(
                    """INSERT INTO store_lock VALUES (TRUE, %s, %s, %s, %s) ON CONFLICT (one)
                    DO UPDATE SET pid = EXCLUDED.pid, host = EXCLUDED.host,
                    command = EXCLUDED.command, since = EXCLUDED.since""",
                    (os.getpid(), socket.gethostname(), self.command, time.time()),
                )
            except BaseException:
                await conn.close()
                raise
        self._conn = conn
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Let go: forget the holder row, unlock, close the connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute("DELETE FROM store_lock")
            await conn.execute("SELECT pg_advisory_unlock(%s, %s)", STORE_KEY)
        except psycopg.Error as error:
            # Closing the session below frees the lock anyway.
            log.warning("releasing the store lock of %s: %s", self.name, error)
        finally:
            await conn.close()
