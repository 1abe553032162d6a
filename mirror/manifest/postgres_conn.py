"""
What the PostgreSQL manifest's query mixins share: the connection type, error wrapping,
the change feed's lock, the listening connection, and the Protocol they type-check against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from mirror.errors import ManifestError

# The name it logged under before the backend was split into modules.
log = logging.getLogger("mirror.manifest.postgres")

Conn = psycopg.AsyncConnection[Any]
_PASSWORD = re.compile(r"(://[^/?#@:]*):[^/?#@]*@|(password\s*=\s*)[^&\s]*", re.IGNORECASE)
# Taken first by every writer of sources or served (see mirror.manifest.postgres_schema).
_LOCK_FEED = "SELECT seq FROM catalog_counter FOR UPDATE"


def redact(url: str) -> str:
    """Return ``url`` without any password in it, for messages."""
    return _PASSWORD.sub(lambda m: f"{m[1]}@" if m[1] else f"{m[2]}***", url)


@asynccontextmanager
async def wrap_errors(name: str, doing: str) -> AsyncIterator[None]:
    """Turn a psycopg error into a ManifestError naming the manifest ``name``."""
    try:
        yield
    except psycopg.Error as exc:
        text = redact(str(exc).strip() or type(exc).__name__)
        raise ManifestError(f"manifest {name} failed while {doing}: {text}") from exc


def _floats(values: Iterable[Any]) -> list[float | None]:
    return [None if v is None else float(v) for v in values]


class _Listener:
    """One LISTEN connection; each notification wakes the waiters of its channel (and key)."""

    CHANNELS = ("mirror_catalog", "mirror_lease")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self._events: dict[str, asyncio.Event] = {}
        self.task = asyncio.create_task(self._run(), name="manifest-listen")

    def event(self, topic: str) -> asyncio.Event:
        """Return the event the next notification of ``topic`` sets (take it before checking)."""
        return self._events.setdefault(topic, asyncio.Event())

    def _wake(self, topic: str) -> None:
        event = self._events.pop(topic, None)
        if event is not None:
            event.set()

    async def _run(self) -> None:
        try:
            async for note in self.conn.notifies():
                topic = "catalog" if note.channel == "mirror_catalog" else f"lease:{note.payload}"
                self._wake(topic)
        except psycopg.Error as exc:
            log.warning("manifest notifications stopped: %s", redact(str(exc)))
        finally:
            # Waiters look at the database again; the next wait listens anew.
            for topic in list(self._events):
                self._wake(topic)

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
            await self.task
        await self.conn.close()


class Connected(Protocol):
    """The connection side of the PostgreSQL manifest, as the query mixins use it."""

    url: str
    _clock: Callable[[], float]
    _name: str
    _listener: _Listener | None
    _listen_lock: asyncio.Lock
    _seen: int

    def _errors(self, doing: str) -> AbstractAsyncContextManager[None]: ...

    def _write(self, doing: str) -> AbstractAsyncContextManager[Conn]: ...

    def _read(self, doing: str, *, snapshot: bool = False) -> AbstractAsyncContextManager[Conn]: ...

    def _statement(self, doing: str) -> AbstractAsyncContextManager[Conn]: ...

    async def _all(
        self, conn: Conn, sql: str, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]: ...


# The mixins inherit the protocol only for the type checker: at run time the composed class
# supplies all of it, and a Protocol base would bring its machinery into the manifest class.
if TYPE_CHECKING:
    Base = Connected
else:
    Base = object
