"""
Shared fixtures: a guard that fails any test reaching past loopback, and local upstream servers.

Tests reach the local servers through fake public names (``origin.example``) mapped with
``network.connect_to``, the trusted path, so ``allow_private`` stays False as in production.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.selector_events
import collections
import contextlib
import dataclasses
import hashlib
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from PIL import Image

from mirror.config import Config, FetchConfig, NetworkConfig, StoreConfig

# Fixtures for every test: moto's S3 server and per-test buckets (tests/s3_server.py), the Hexo
# site and browser harness (tests/hexo_site.py, tests/browser.py).
pytest_plugins = ("s3_server", "hexo_site", "browser", "pg_server")

ORIGIN = "origin.example"
BIG_BODY = 60 * 1024 * 1024
PNG_ETAG = '"png-v1"'
PNG_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"

# Retries, backoff and timeouts small enough that a failing path costs milliseconds, not seconds.
FAST_FETCH: dict[str, Any] = {
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "retry_after_cap": 0.5,
    "connect_timeout": 2.0,
    "read_timeout": 2.0,
    "total_timeout": 10.0,
}


# What test tools leave in a checkout on their own (caches, bytecode), not what a test wrote.
TOOL_LEFTOVERS = (
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".coverage",
    "htmlcov",
)


def checkout_status(root: Path) -> set[str] | None:
    """
    ``git status --porcelain --ignored`` of the checkout holding ``root``, one entry a line,
    without tool leftovers; None when ``root`` is not inside a git checkout (or git is missing).
    """
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(
            [git, "status", "--porcelain", "--ignored", "--untracked-files=all", "."],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return {
        line
        for line in done.stdout.splitlines()
        if not any(
            part in TOOL_LEFTOVERS or part.endswith(".egg-info") or part.startswith(".coverage")
            for part in line[3:].split("/")
        )
    }


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remember the checkout's state, so the session can prove no test wrote into it."""
    session.stash[_STATUS] = checkout_status(Path(str(session.config.rootpath)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run, listing them, when tests left files in the checkout (tests use tmp_path)."""
    before = session.stash.get(_STATUS, None)
    if before is None:
        return  # not a git checkout: nothing to compare
    after = checkout_status(Path(str(session.config.rootpath)))
    new = sorted((after or set()) - before)
    if not new:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "tests wrote into the checkout (use tmp_path, --store, --config):\n" + "\n".join(
        f"  {line}" for line in new
    )
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STATUS = pytest.StashKey[set[str] | None]()


class NetworkGuardError(RuntimeError):
    """A test tried to reach an address outside loopback."""


@dataclasses.dataclass
class NetworkGuard:
    """Records every attempt to leave loopback; the fixture fails the test if any were made."""

    violations: list[str] = dataclasses.field(default_factory=list)

    def refuse(self, what: str) -> None:
        self.violations.append(what)
        raise NetworkGuardError(f"network guard: test tried to reach {what}")

    def check_address(self, address: Any) -> None:
        if isinstance(address, str | bytes):
            return  # AF_UNIX
        if not _is_loopback(str(address[0])):
            self.refuse(repr(address))

    def check_name(self, host: Any) -> None:
        if host is None or host == "localhost":
            return
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(name.strip("[]").split("%")[0])
        except ValueError:
            try:
                socket.inet_aton(name)  # legacy numeric forms never reach a DNS server
            except OSError:
                self.refuse(f"DNS lookup of {name!r}")


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return ip in ipaddress.ip_network("127.0.0.0/8") or ip == ipaddress.ip_address("::1")


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """Fail any test that connects outside 127.0.0.0/8 and ::1, or looks up a real name."""
    guard = NetworkGuard()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo
    loop_cls = asyncio.selector_events.BaseSelectorEventLoop
    real_sock_connect = loop_cls.sock_connect
    real_create_connection = asyncio.base_events.BaseEventLoop.create_connection

    def connect(self: socket.socket, address: Any) -> None:
        guard.check_address(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        guard.check_address(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        guard.check_name(host)
        return real_getaddrinfo(host, *args, **kwargs)

    async def sock_connect(self: Any, sock: socket.socket, address: Any) -> None:
        guard.check_address(address)
        await real_sock_connect(self, sock, address)

    async def create_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
        host = kwargs.get("host", args[1] if len(args) > 1 else None)
        if host is not None and not _is_loopback(str(host)):
            guard.refuse(f"create_connection({host!r})")
        return await real_create_connection(self, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(loop_cls, "sock_connect", sock_connect)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_connection", create_connection)
    yield guard
    if guard.violations:
        pytest.fail(f"network guard: the test tried to leave loopback: {guard.violations}")


def make_image(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small real image of ``fmt`` ("PNG", "JPEG", ...) with a gradient so it is not trivial."""
    image = Image.new("RGB", size)
    image.putdata([(x * 4 % 256, y * 5 % 256, 128) for y in range(size[1]) for x in range(size[0])])
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    """A 64x48 PNG."""
    return make_image("PNG")


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    """A 64x48 JPEG."""
    return make_image("JPEG")


def build_config(
    connect_to: tuple[str, ...] = (),
    cacert: str = "",
    *,
    allow_private: bool = False,
    allowed_ports: tuple[int, ...] = (80, 443),
    **fetch: Any,
) -> Config:
    """A Config with the fast test timings, ``fetch`` overrides and the given network section."""
    network = NetworkConfig(connect_to, cacert, allow_private, allowed_ports)
    return Config(fetch=FetchConfig(**{**FAST_FETCH, **fetch}), network=network)


@pytest.fixture
def make_config() -> Callable[..., Config]:
    """:func:`build_config` as a fixture, so test modules need not import conftest."""
    return build_config


class FakeResolver(AbstractResolver):
    """Answers from a table, one list of answers per call in turn (the last one repeats)."""

    def __init__(self, table: dict[str, list[list[tuple[str, int]]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        turns = self.table.get(host)
        if not turns:
            raise OSError(f"no such host {host}")
        answers = turns[min(self.calls.count(host), len(turns)) - 1]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=answer_port or port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address, answer_port in answers
        ]

    async def close(self) -> None:
        pass


def store_object(root: Path, data: bytes, ext: str) -> str:
    """
    Put ``data`` into the local store at ``root`` through the store protocol; return its sha256.

    Synchronous, for sync tests and for async ones alike: the store runs on a loop of its own
    in a thread, so it never nests in the test's loop.
    """
    from mirror.catalog import mime_for
    from mirror.store import open_store

    sha = hashlib.sha256(data).hexdigest()

    async def put() -> None:
        async with open_store(Config(store=StoreConfig(url=str(root)))) as store:
            await store.put(data, sha, ext, mime_for(ext))

    worker = threading.Thread(target=asyncio.run, args=(put(),))
    worker.start()
    worker.join(timeout=60)
    assert (root / "objects" / sha[:2] / f"{sha}.{ext}").is_file()
    return sha


def object_file(root: Path, sha: str, ext: str) -> Path:
    """Where the local store at ``root`` keeps an object (its public, permanent layout)."""
    return root / "objects" / sha[:2] / f"{sha}.{ext}"


@contextlib.contextmanager
def threaded_server(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> Iterator[int]:
    """
    Serve ``app`` on 127.0.0.1 from its own thread and loop; yield its port.

    For tests that call ``mirror.cli.main``, which runs ``asyncio.run`` itself.
    """
    loop = asyncio.new_event_loop()
    server = TestServer(app, host="127.0.0.1")
    loop.run_until_complete(server.start_server(ssl=ssl_context))
    assert server.port is not None
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handle: RawHandler) -> AsyncIterator[int]:
    """
    A TCP server on 127.0.0.1 that reads each request head, then runs ``handle``; yield its port.

    For upstreams no HTTP framework would play (trickled heads and bodies). Every handler is
    cancelled when the block ends, and a client hanging up ends its handler quietly.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up, as it should once it has given up
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@dataclasses.dataclass
class Canary:
    """A loopback server that must never be reached; it counts the connections it gets."""

    port: int = 0
    connections: int = 0


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    """A canary on 127.0.0.1: a test that lets a request through sees ``connections`` > 0."""
    state = Canary()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


@dataclasses.dataclass
class Upstream:
    """A local origin server and what it saw; reach it as ``url(path)``."""

    server: TestServer
    canary: Canary
    png: bytes
    jpeg: bytes
    scheme: str = "http"
    host: str = ORIGIN
    cacert: str = ""
    hits: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    headers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    big_sent: int = 0
    big_done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    sni: list[str | None] = dataclasses.field(default_factory=list)
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    down: bool = False  # /switch fails while set

    @property
    def port(self) -> int:
        """The real port the server listens on at 127.0.0.1."""
        assert self.server.port is not None
        return self.server.port

    @property
    def connect_to(self) -> str:
        """The curl-style mapping from the fake public name to the local server."""
        default = 443 if self.scheme == "https" else 80
        return f"{self.host}:{default}:127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The URL a post would hold, under the fake public name."""
        return f"{self.scheme}://{self.host}{path}"

    def config(self, **fetch: Any) -> Config:
        """A Config reaching this server through ``connect_to`` (and its CA, for TLS)."""
        return build_config((self.connect_to,), self.cacert, **fetch)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def upstream_app(state: Upstream) -> web.Application:
    """The origin's routes: images and one route per fault a fetcher must survive."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        state.hits[request.path_qs] += 1
        state.headers.append(dict(request.headers))
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            return await handler(request)
        finally:
            state.in_flight -= 1

    def image(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == PNG_ETAG:
            return web.Response(status=304, headers={"ETag": PNG_ETAG})
        headers = {"ETag": PNG_ETAG, "Last-Modified": PNG_MODIFIED}
        return web.Response(body=state.png, content_type="image/png", headers=headers)

    async def png(request: web.Request) -> web.StreamResponse:
        return image(request)

    async def jpeg(request: web.Request) -> web.StreamResponse:
        return web.Response(body=state.jpeg, content_type="image/jpeg")

    async def status(request: web.Request) -> web.StreamResponse:
        """Answer ``code`` after ``seconds`` (default 0)."""
        await asyncio.sleep(float(request.query.get("seconds", "0")))
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def flaky(request: web.Request) -> web.StreamResponse:
        """500 for the first ``fails`` hits (default 1), then the image."""
        if state.hits[request.path_qs] <= int(request.query.get("fails", "1")):
            return web.Response(status=500, text="try again")
        return image(request)

    async def switch(request: web.Request) -> web.StreamResponse:
        """500 while ``down`` is set, the image otherwise: a source that fails and recovers."""
        if state.down:
            return web.Response(status=500, text="down")
        return image(request)

    async def retry_after(request: web.Request) -> web.StreamResponse:
        """``status`` (503) with ``Retry-After: after`` the first time, then the image."""
        if state.hits[request.path_qs] == 1:
            headers = {"Retry-After": request.query.get("after", "1")}
            return web.Response(status=int(request.query.get("status", "503")), headers=headers)
        return image(request)

    async def reset(request: web.Request) -> web.StreamResponse:
        """Half the image then a TCP reset, for the first ``times`` hits (default 1)."""
        if state.hits[request.path_qs] > int(request.query.get("times", "1")):
            return image(request)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(state.png)
        await response.prepare(request)
        await response.write(state.png[: len(state.png) // 2])
        assert request.transport is not None
        sock = request.transport.get_extra_info("socket")
        if sock is not None:  # SO_LINGER 0 turns close into a real RST
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        request.transport.abort()
        return response

    async def truncated(request: web.Request) -> web.StreamResponse:
        """Content-Length says twice what is sent before the connection closes."""
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 2 * len(state.png)
        await response.prepare(request)
        await response.write(state.png)
        assert request.transport is not None
        request.transport.close()
        return response

    async def stall(request: web.Request) -> web.StreamResponse:
        """Wait up to ``seconds`` (default 5) before the headers, or mid-body with where=body."""
        seconds = float(request.query.get("seconds", "5"))
        if request.query.get("where") != "body":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.release.wait(), seconds)
            return image(request)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(state.png)
        await response.prepare(request)
        await response.write(state.png[:100])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.release.wait(), seconds)
        await response.write(state.png[100:])
        return response

    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html><body>gone</body></html>", content_type="text/html")

    async def text_plain(request: web.Request) -> web.StreamResponse:
        return web.Response(body=state.png, content_type="text/plain")

    async def big(request: web.Request) -> web.StreamResponse:
        """60 MB streamed from a generator; ``declared=1`` announces it in Content-Length."""
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if request.query.get("declared") == "1":
            response.content_length = BIG_BODY
        chunk = b"\x00" * 65536
        try:
            await response.prepare(request)
            while state.big_sent < BIG_BODY:
                await response.write(chunk)
                state.big_sent += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client hung up, as it should once past its cap
        finally:
            state.big_done.set()
        return response

    async def to_canary(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://127.0.0.1:{state.canary.port}/x.png")

    async def redirect(request: web.Request) -> web.StreamResponse:
        """A redirect to ``to``, with ``status`` (302)."""
        location = request.query["to"]
        code = int(request.query.get("status", "302"))
        return web.Response(status=code, headers={"Location": location})

    async def chain(request: web.Request) -> web.StreamResponse:
        left = int(request.match_info["n"])
        if left == 0:
            return image(request)
        raise web.HTTPFound(f"/chain/{left - 1}")

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.query.get("seconds", "0.05")))
        return image(request)

    app = web.Application(middlewares=[record])
    app.router.add_get("/img.png", png)
    app.router.add_get("/img.jpg", jpeg)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/switch", switch)
    app.router.add_get("/retry-after", retry_after)
    app.router.add_get("/reset", reset)
    app.router.add_get("/truncated", truncated)
    app.router.add_get("/stall", stall)
    app.router.add_get("/html", html)
    app.router.add_get("/text-plain", text_plain)
    app.router.add_get("/big", big)
    app.router.add_get("/to-canary", to_canary)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/chain/{n}", chain)
    app.router.add_get("/slow", slow)
    return app


async def _start_upstream(
    aiohttp_server: Any,
    canary: Canary,
    png: bytes,
    jpeg: bytes,
    ssl_context: ssl.SSLContext | None = None,
    cacert: str = "",
) -> Upstream:
    state = Upstream(server=None, canary=canary, png=png, jpeg=jpeg)  # type: ignore[arg-type]
    state.server = await aiohttp_server(upstream_app(state), host="127.0.0.1", ssl=ssl_context)
    if ssl_context is not None:
        state.scheme, state.cacert = "https", cacert
    return state


@pytest.fixture
async def upstream(
    aiohttp_server: Any, canary: Canary, png_bytes: bytes, jpeg_bytes: bytes
) -> AsyncIterator[Upstream]:
    """The origin over plain HTTP at ``http://origin.example`` (mapped to 127.0.0.1)."""
    state = await _start_upstream(aiohttp_server, canary, png_bytes, jpeg_bytes)
    yield state
    state.release.set()  # let stalled handlers finish so the server closes at once


@pytest.fixture
async def tls_upstream(
    aiohttp_server: Any, canary: Canary, png_bytes: bytes, jpeg_bytes: bytes, tmp_path: Path
) -> AsyncIterator[Upstream]:
    """The origin over HTTPS with a trustme certificate for origin.example; its CA is ``cacert``."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(ORIGIN).configure_cert(context)
    cacert = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cacert))
    state = await _start_upstream(
        aiohttp_server, canary, png_bytes, jpeg_bytes, context, str(cacert)
    )

    def record_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        state.sni.append(name)

    context.sni_callback = record_sni
    yield state
    state.release.set()
