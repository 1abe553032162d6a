"""
The PostgreSQL backend of the manifest seam: :class:`PostgresManifest` (psycopg 3, async).

Several processes and machines share one database: ``mirror serve`` nodes and jobs. Queries go
through a small connection pool (autocommit connections; every write method is one explicit
transaction, or one statement that is atomic alone: a rewrite's spans go through the function
``mirror_record_spans`` in one round trip). Batches are one statement each (``unnest`` of
arrays), and a :meth:`~PostgresManifest.record_results` batch runs in pipeline mode, so 256
results cost two round trips. The schema and the change feed are described in
:mod:`mirror.manifest.postgres_schema`.

Concurrency: the writers of ``sources`` and ``served`` take the change counter's row lock first
(see that module), so their merges never lose an update; pins take a shared advisory lock and
eviction the exclusive one (both transaction-level), so a pin is ordered before or after an
eviction, never inside it. LISTEN/NOTIFY wakes :meth:`~PostgresManifest.wait_for_change` and
:meth:`~PostgresManifest.wait_released` at once, on one listening connection per manifest.

The password never comes from the URL (the config refuses one): libpq reads PGPASSWORD,
~/.pgpass (PGPASSFILE) or a service file. Messages name the URL without any password.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Self

import psycopg
from psycopg_pool import AsyncConnectionPool

from mirror.errors import ManifestError
from mirror.manifest.lock import MIGRATE_KEY, AdvisoryStoreLock
from mirror.manifest.postgres_conn import (
    Conn,
    _Listener,
    redact,
    wrap_errors,
)
from mirror.manifest.postgres_posts import PostsMixin
from mirror.manifest.postgres_schema import MIGRATIONS, SCHEMA_VERSION
from mirror.manifest.postgres_serve import ServeMixin
from mirror.manifest.postgres_sources import SourcesMixin

# redact and wrap_errors moved to postgres_conn; importing them from here keeps working.
__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Conn",
    "PostgresManifest",
    "redact",
    "schema_exists",
    "wrap_errors",
]
_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"


async def schema_exists(url: str) -> bool:
    """
    Tell whether the database at ``url`` holds a manifest schema (of any version).

    Raises:
        ManifestError: the server cannot be reached or refuses the connection.
    """
    async with wrap_errors(redact(url), "connecting"):
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        async with wrap_errors(redact(url), "reading the schema version"):
            found = await (await conn.execute("SELECT to_regclass('mirror_schema')")).fetchone()
            return found is not None and found[0] is not None
    finally:
        await conn.close()


class PostgresManifest(SourcesMixin, PostsMixin, ServeMixin):
    """The manifest in a PostgreSQL database, behind the protocol of :mod:`mirror.manifest.base`."""

    def __init__(
        self,
        url: str,
        *,
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
        pool_size: int = 4,
    ) -> None:
        """Describe the manifest at ``url`` (``postgresql://user@host:port/db``); nothing opens."""
        self.url = url
        self.readonly = readonly
        self.pool_size = pool_size
        self._clock = clock
        self._name = redact(url)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._held: dict[asyncio.Task[Any], Conn] = {}
        self._listener: _Listener | None = None
        self._listen_lock = asyncio.Lock()
        self._seen = 0

    @property
    def name(self) -> str:
        """Return the URL without a password."""
        return self._name

    def _errors(self, doing: str) -> AbstractAsyncContextManager[None]:
        return wrap_errors(self._name, doing)

    async def open(self) -> Self:
        """
        Connect, then migrate the schema (a writer) or check that it is current (a reader).

        Raises:
            ManifestError: unreachable, refused, from a newer mirror, or not up to date.
        """
        if self._pool is not None:
            return self
        async with self._errors("connecting"):
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        try:
            await self._migrate(conn)
        finally:
            await conn.close()

        async def configure(conn: Conn) -> None:
            if self.readonly:
                await conn.execute("SET default_transaction_read_only = on")

        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True},
            configure=configure,
            open=False,
            name="mirror-manifest",
        )
        try:
            async with self._errors("connecting"):
                await pool.open(wait=True, timeout=30.0)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return self

    async def _version(self, conn: Conn) -> int:
        found = await (await conn.execute("SELECT to_regclass('mirror_schema')")).fetchone()
        if found is None or found[0] is None:
            return 0
        row = await (await conn.execute("SELECT MAX(version) FROM mirror_schema")).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def _check(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise ManifestError(
                f"manifest {self._name} has schema {version}; this mirror knows {SCHEMA_VERSION}"
            )

    async def _migrate(self, conn: Conn) -> None:
        async with self._errors("opening"):
            version = await self._version(conn)
            self._check(version)
            if self.readonly:
                if version < SCHEMA_VERSION:
                    raise ManifestError(
                        f"manifest {self._name} needs upgrading by a writing command"
                    )
                return
            if version == SCHEMA_VERSION:
                return
            async with conn.transaction():
                # DDL is transactional: a failed migration leaves the schema as it was.
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATE_KEY)
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS mirror_schema (
                    version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"""
                )
                version = await self._version(conn)  # another writer may have migrated
                self._check(version)
                for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO mirror_schema VALUES (%s, %s)", (number, self._clock())
                    )

    async def close(self) -> None:
        """Close the pool and the listening connection; safe to call twice."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        """Return the open pool."""
        if self._pool is None:
            raise ManifestError(f"manifest {self._name} is not open")
        return self._pool

    @asynccontextmanager
    async def _begun(self, doing: str, begin: str) -> AsyncIterator[Conn]:
        """
        Yield a connection inside a transaction: the caller's, or a new one in pipeline mode.

        Statements are sent without waiting for their results until one is fetched, and BEGIN
        and COMMIT by hand: psycopg's ``transaction()`` waits for each of them, which made a
        batch five round trips instead of two.
        """
        held = self._held.get(asyncio.current_task())  # type: ignore[arg-type]
        async with self._errors(doing):
            if held is not None:
                yield held
                return
            async with self.pool.connection() as conn:
                try:
                    # Leaving the pipeline waits for COMMIT (an explicit sync costs one more trip).
                    async with conn.pipeline():
                        await conn.execute(begin)
                        yield conn
                        await conn.execute("COMMIT")
                except BaseException:
                    # Hand the pool an idle connection, whatever state the failure left.
                    with contextlib.suppress(psycopg.Error):
                        await conn.rollback()
                    raise

    def _write(self, doing: str) -> AbstractAsyncContextManager[Conn]:
        return self._begun(doing, "BEGIN")

    @asynccontextmanager
    async def _read(self, doing: str, *, snapshot: bool = False) -> AsyncIterator[Conn]:
        """Yield a connection; with ``snapshot``, inside one repeatable-read transaction."""
        held = self._held.get(asyncio.current_task())  # type: ignore[arg-type]
        async with self._errors(doing):
            if held is not None:
                yield held
                return
            if snapshot:
                async with self._begun(doing, _SNAPSHOT) as conn:
                    yield conn
                return
            async with self.pool.connection() as conn:
                yield conn

    def _statement(self, doing: str) -> AbstractAsyncContextManager[Conn]:
        """A connection for one write statement, atomic alone (autocommit), or the caller's."""
        return self._read(doing)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None  # always called from a coroutine
        if task in self._held:
            yield
            return
        async with self._errors("writing"), self.pool.connection() as conn, conn.transaction():
            self._held[task] = conn
            try:
                yield
            finally:
                del self._held[task]

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Group the writes made inside (by this task) into one transaction."""
        return self._transaction()

    async def schema_version(self) -> int:
        """Return the schema version the database is at."""
        async with self._read("reading the schema version") as conn:
            return await self._version(conn)

    async def _all(self, conn: Conn, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await (await conn.execute(sql, params)).fetchall()

    def lock(self, command: str) -> AbstractAsyncContextManager[None]:
        """Return the store lock: a session advisory lock on a connection of its own."""
        return _held(AdvisoryStoreLock(self.url, self._name, command))


@asynccontextmanager
async def _held(lock: AdvisoryStoreLock) -> AsyncIterator[None]:
    async with lock:
        yield
