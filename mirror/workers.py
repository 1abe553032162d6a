"""
Running ``mirror serve``: one process, or N worker processes on one port plus a fetch owner.

With ``serve.workers = 1`` the process serves and fetches. With N > 1 the process that was
started becomes the *owner*: it alone fetches, stores and writes the manifest (so single flight,
``fetch.jobs`` and ``fetch.per_host`` hold across workers, and SQLite keeps one writer), and it
answers its workers on a Unix socket in a private folder. It starts N workers, each binding the
same port with SO_REUSEPORT so the kernel spreads connections; each serves hits from the store by
itself and asks the owner only on a miss. A worker that dies is restarted (a bounded number of
times a minute); a worker whose owner died stops. SIGTERM or SIGINT stops everything gracefully:
listeners close, requests in progress finish (up to ``SHUTDOWN_SECONDS``), then the owner exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web

from mirror.access import runner_options
from mirror.config import Config, config_from_mapping
from mirror.errors import ExitStatus, ListenError, MirrorError
from mirror.log import configure_access_log
from mirror.metrics import Metrics, merge
from mirror.resolver import Resolution, Resolver, SingleFlight
from mirror.serve import create_app, local_resolver, open_catalog
from mirror.store import open_store

log = logging.getLogger("mirror.serve")

CONFIG_ENV = "MIRROR_SERVE_CONFIG"
OWNER_ENV = "MIRROR_SERVE_OWNER"
SHUTDOWN_SECONDS = 10.0
RESTARTS_PER_MINUTE = 10
# Idle keep-alive connections (and new ones that send nothing) close after this many seconds.
KEEPALIVE = 15.0
READY = web.AppKey("resolver", Resolver)


async def _until_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def _listening(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> AsyncIterator[list[Any]]:
    runner = web.AppRunner(
        app, shutdown_timeout=SHUTDOWN_SECONDS, keepalive_timeout=KEEPALIVE, **runner_options()
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise _listen_error(host, port, exc) from exc
        yield list(runner.addresses)
    finally:
        await runner.cleanup()


def _listen_error(host: str, port: int, exc: OSError) -> ListenError:
    """One line for a port that cannot be taken (exit 3), instead of a traceback."""
    why = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        why = "the address is already in use (another mirror serve?); pick another with --port"
    return ListenError(f"cannot listen on {host}:{port}: {why}")


def _banner(config: Config, address: Any) -> str:
    host, port = address[0], address[1]
    shown = f"[{host}]" if ":" in host else host
    mode = "open" if config.serve.open else "closed world"
    workers = config.serve.workers
    return (
        f"mirror: serving on http://{shown}:{port}/ ({mode}, {workers} worker"
        f"{'s' if workers > 1 else ''}, store {config.store.location}); SIGTERM or Ctrl-C stops"
    )


async def _serve_single(config: Config) -> None:
    app = create_app(config)
    async with _listening(app, config.serve.host, config.serve.port) as addresses:
        print(_banner(config, addresses[0]), file=sys.stderr, flush=True)
        await _until_signal()


class RemoteResolver:
    """A worker's way to the owner: the same calls as a Resolver, over the owner's socket."""

    def __init__(self, path: str, wait: float) -> None:
        self.path = path
        self.wait = wait
        self.metrics = Metrics()
        self.flight: SingleFlight[Resolution] = SingleFlight()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.path),
            timeout=aiohttp.ClientTimeout(total=self.wait + 5),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.flight.close()
        if self._session is not None:
            await self._session.close()

    async def _post(self, route: str, body: dict[str, Any]) -> Any:
        assert self._session is not None
        try:
            async with self._session.post(f"http://owner{route}", json=body) as response:
                response.raise_for_status()
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise MirrorError(f"the fetch owner did not answer {route}: {exc!r}") from exc

    async def _resolve(self, source: str) -> Resolution:
        try:
            return Resolution.from_json(await self._post("/resolve", {"source": source}))
        except MirrorError as exc:
            return Resolution(503, "unavailable", str(exc))

    async def resolve(self, source: str) -> Resolution:
        """Ask the owner, sharing one question among this worker's concurrent requests."""
        try:
            result, joined = await self.flight.do(source, lambda: self._resolve(source), self.wait)
        except OverflowError:
            return Resolution(503, "busy", "too many fetches in flight; try again")
        if joined:
            self.metrics.inc("mirror_coalesced_waiters_total")
        return result

    async def touch(self, seen: dict[str, float]) -> None:
        """Pass open-mode hit times on to the owner."""
        if seen:
            await self._post("/touch", {"seen": seen})

    async def status(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """Send this worker's counters; get everyone's back."""
        mine = merge([snapshot, self.metrics.snapshot()]).snapshot()
        result: dict[str, Any] = await self._post(
            "/status", {"worker": str(os.getpid()), "snapshot": mine}
        )
        return result


async def _owner_resolve(request: web.Request) -> web.Response:
    body = await request.json()
    resolution = await request.app[READY].resolve(str(body["source"]))
    return web.json_response(resolution.to_json())


async def _owner_touch(request: web.Request) -> web.Response:
    body = await request.json()
    await request.app[READY].touch({str(k): float(v) for k, v in body["seen"].items()})
    return web.json_response({})


async def _owner_status(request: web.Request) -> web.Response:
    body = await request.json()
    resolver = request.app[READY]
    return web.json_response(await resolver.status(body["snapshot"], str(body["worker"])))


def _owner_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(open_store(config))
            catalog = await open_catalog(config, stack)
            resolver = await stack.enter_async_context(local_resolver(config, store, catalog, None))
            refresh = await catalog.run_refresh(config.serve.refresh_interval)
            app[READY] = resolver
            try:
                yield
            finally:
                refresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresh

    app.cleanup_ctx.append(resources)
    app.router.add_post("/resolve", _owner_resolve)
    app.router.add_post("/touch", _owner_touch)
    app.router.add_post("/status", _owner_status)
    return app


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) so workers can share the port with SO_REUSEPORT, 0 included."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _listen_error(host, port, exc) from exc
    return sock


def _spawn(config: Config, owner: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, CONFIG_ENV: json.dumps(dataclasses.asdict(config))}
    env[OWNER_ENV] = str(os.getpid())
    command = [sys.executable, "-m", "mirror", "serve", "--worker-of", owner]
    return subprocess.Popen(command, env=env)


async def _supervise(config: Config, owner: str, stop: asyncio.Event) -> None:
    workers = [_spawn(config, owner) for _ in range(config.serve.workers)]
    restarts: list[float] = []
    try:
        # Bounded by the stop event; polls once a second for dead workers.
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            for index, worker in enumerate(workers):
                if worker.poll() is None or stop.is_set():
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > RESTARTS_PER_MINUTE:
                    log.error("workers keep dying (last status %s); stopping", worker.returncode)
                    stop.set()
                    break
                log.warning("worker %d exited with %s; restarting", worker.pid, worker.returncode)
                workers[index] = _spawn(config, owner)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_SECONDS + 5
        for worker in workers:
            try:
                await asyncio.to_thread(worker.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                await asyncio.to_thread(worker.wait)


async def _serve_many(config: Config) -> None:
    reservation = _reserve_port(config.serve.host, config.serve.port)
    port = reservation.getsockname()[1]
    config = dataclasses.replace(config, serve=dataclasses.replace(config.serve, port=port))
    with tempfile.TemporaryDirectory(prefix="mirror-serve-") as folder, reservation:
        owner = str(Path(folder) / "owner.sock")
        runner = web.AppRunner(_owner_app(config), access_log=None)
        await runner.setup()
        try:
            await web.UnixSite(runner, owner).start()
            print(_banner(config, reservation.getsockname()), file=sys.stderr, flush=True)
            stop = asyncio.Event()
            supervisor = asyncio.create_task(_supervise(config, owner, stop))
            signals = asyncio.create_task(_until_signal())
            await asyncio.wait([supervisor, signals], return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            await supervisor
            signals.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await signals
        finally:
            await runner.cleanup()


async def _orphaned(parent: int) -> None:
    """Return once the owner process is gone (the worker was re-parented)."""
    # Polling is the only portable way to notice: no signal arrives when a parent dies.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(1.0)


async def _serve_worker(config: Config, owner: str) -> None:
    # The owner's pid, not getppid(): an owner that died while this worker was starting up
    # would otherwise leave it waiting for a parent change that has already happened.
    parent = int(os.environ.get(OWNER_ENV, os.getppid()))
    async with RemoteResolver(owner, config.serve.request_timeout) as remote:
        app = create_app(config, remote=remote)
        host, port = config.serve.host, config.serve.port
        async with _listening(app, host, port, reuse_port=True):
            _done, pending = await asyncio.wait(
                [asyncio.create_task(_until_signal()), asyncio.create_task(_orphaned(parent))],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def run_serve(config: Config, worker_of: str | None = None) -> ExitStatus:
    """Serve until SIGTERM or SIGINT; see the module docstring."""
    if worker_of is not None:
        # Exactly the owner's config (with its chosen port), not a re-read of the file.
        config = config_from_mapping(json.loads(os.environ[CONFIG_ENV]))
    # A worker or a single process logs its requests; the owner answers no client, but opening
    # the file here refuses an unwritable one before any worker starts. Workers are started
    # without -v, so they log only to a configured target.
    configure_access_log(config.serve.access_log)
    if worker_of is not None:
        asyncio.run(_serve_worker(config, worker_of))
    elif config.serve.workers == 1:
        asyncio.run(_serve_single(config))
    else:
        asyncio.run(_serve_many(config))
    return ExitStatus.OK
