"""
``mirror serve`` in open mode under hostile upstreams (issue #13, rows 8 and 10), through
``create_app`` and aiohttp's test client against real local servers.

Row 8: a redirect from an allowed host to a host off ``serve.allow_hosts`` is refused on that hop
and nothing is stored. Row 10: upstreams that trickle one byte at a time must not starve a
legitimate miss; the rate floor ends a trickle early, a waiter's timeout cancels work nobody waits
for (:class:`~mirror.resolver.SingleFlight`, also tested on its own), and per-host slots keep one
slow host from taking every fetch slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import build_config, raw_server

from mirror.config import Config, ServeConfig, StoreConfig
from mirror.manifest import Manifest, manifest_path
from mirror.resolver import SingleFlight
from mirror.serve import create_app

if TYPE_CHECKING:
    from conftest import Upstream

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
TRICKLES = 40


def serve_config(base: Config, root: Path, **serve: Any) -> Config:
    """``base`` with the store in ``root`` and open mode plus ``serve`` overrides."""
    serve = {"open": True, **serve}
    return dataclasses.replace(base, store=StoreConfig(path=str(root)), serve=ServeConfig(**serve))


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(config: Config) -> Client:
        client: Client = await aiohttp_client(create_app(config))
        return client

    return make


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def served(root: Path) -> list[str]:
    """The source URLs the store holds an object for, by the manifest."""
    with Manifest(manifest_path(root), readonly=True) as manifest:
        return sorted(row.source for row in manifest.catalog() if row.sha256 is not None)


# --- row 8: allow_hosts holds on every hop ------------------------------------------------------


async def test_redirect_off_the_allowlist_is_refused_and_not_cached(
    upstream: Upstream, root: Path, make_client: MakeClient
) -> None:
    """allowed -> disallowed is 403 not-allowed on the hop; asked again, still no hit."""
    base = build_config(
        (upstream.connect_to, f"other.example:80:127.0.0.1:{upstream.port}"), attempts=1
    )
    client = await make_client(serve_config(base, root, allow_hosts=("origin.example",)))
    path = "/redirect?to=http://other.example/img.png"
    for _ in range(2):
        response = await client.get(f"/?{upstream.url(path)}")
        assert (403, "not-allowed") == (response.status, response.headers["X-Mirror-Reason"])
    assert 0 == upstream.hits["/img.png"]
    assert [] == served(root)


async def test_redirect_within_the_allowlist_is_followed(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """A redirect to a host a ``*.domain`` pattern allows is followed and stored as usual."""
    base = build_config((upstream.connect_to, f"img.cdn.example:80:127.0.0.1:{upstream.port}"))
    allow = ("origin.example", "*.cdn.example")
    client = await make_client(serve_config(base, root, allow_hosts=allow))
    source = upstream.url("/redirect?to=http://img.cdn.example/img.png")
    response = await client.get(f"/?{source}")
    assert (200, png_bytes) == (response.status, await response.read())
    assert [source] == served(root)


async def test_the_fallback_proxy_passes_the_allowlist(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient, aiohttp_server: Any
) -> None:
    """The operator's serve.fallback_proxy is reachable though allow_hosts does not list it."""
    seen: list[str] = []

    async def wrapper(request: web.Request) -> web.StreamResponse:
        seen.append(request.query_string)
        return web.Response(body=png_bytes, content_type="image/png")

    app = web.Application()
    app.router.add_get("/", wrapper)
    proxy = await aiohttp_server(app, host="127.0.0.1")
    base = build_config((upstream.connect_to, f"wrap.example:80:127.0.0.1:{proxy.port}"))
    config = serve_config(
        base, root, allow_hosts=("origin.example",), fallback_proxy="http://wrap.example/?"
    )
    client = await make_client(config)
    response = await client.get(f"/?{upstream.url('/status/404')}")
    assert (200, png_bytes) == (response.status, await response.read())
    assert [upstream.url("/status/404")] == seen


# --- row 10: trickles do not starve a legitimate miss --------------------------------------------


@dataclasses.dataclass
class Trickle:
    """A server that sends a 200 head and then one byte every ``tick`` seconds."""

    port: int = 0
    connections: int = 0
    sent: int = 0
    busy: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    want: int = 1  # connections open at once that set ``busy``
    open: int = 0


@pytest.fixture
async def trickle() -> AsyncIterator[Trickle]:
    """The trickling upstream on 127.0.0.1; ``stop`` makes every connection close at once."""
    state = Trickle()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        state.open += 1
        if state.open >= state.want:
            state.busy.set()
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n")
            writer.write(b"Content-Length: 100000\r\n\r\n")
            for _ in range(100_000):  # a hang-up or stop ends it long before
                if state.stop.is_set():
                    return
                writer.write(b"\x89")
                await writer.drain()
                state.sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.stop.wait(), 0.02)
        finally:
            state.open -= 1

    async with raw_server(handle) as port:
        state.port = port
        yield state
        state.stop.set()


def trickle_config(upstream: Upstream, trickle: Trickle, root: Path, **fetch: Any) -> Config:
    """Origin.example is the good upstream; every other name reaches the trickle."""
    timeout = fetch.pop("request_timeout", 20.0)
    base = build_config((upstream.connect_to, f":80:127.0.0.1:{trickle.port}"), **fetch)
    return serve_config(base, root, request_timeout=timeout)


async def test_trickles_on_many_hosts_end_at_the_rate_floor(
    upstream: Upstream, trickle: Trickle, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """40 trickling misses hold every slot; the floor frees them and the good miss gets 200."""
    config = trickle_config(
        upstream, trickle, root, jobs=4, attempts=1, min_rate=1000, min_rate_window=0.1,
        total_timeout=60.0,
    )  # fmt: skip
    client = await make_client(config)
    trickle.want = 4
    pending = [
        asyncio.ensure_future(client.get(f"/?http://t{i}.example/a.png")) for i in range(TRICKLES)
    ]
    await trickle.busy.wait()  # every fetch slot is now a trickle
    good = await client.get(f"/?{upstream.url('/img.png')}")
    assert (200, png_bytes) == (good.status, await good.read())
    answers = await asyncio.gather(*pending)
    assert [(504, "timeout")] * TRICKLES == [
        (r.status, r.headers["X-Mirror-Reason"]) for r in answers
    ]
    assert TRICKLES == trickle.connections
    assert trickle.sent < TRICKLES * 50  # each ended after a few bytes, not 100000


async def test_a_waiter_timeout_cancels_the_work_nobody_waits_for(
    upstream: Upstream, trickle: Trickle, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """With the floor off, 40 misses time out as waiters; their fetches stop and free the slots."""
    config = trickle_config(
        upstream, trickle, root, jobs=2, min_rate=0, total_timeout=60.0, request_timeout=1.0
    )
    client = await make_client(config)
    trickle.want = 2
    pending = [
        asyncio.ensure_future(client.get(f"/?http://t{i}.example/a.png")) for i in range(TRICKLES)
    ]
    await trickle.busy.wait()
    answers = await asyncio.gather(*pending)
    assert [504] * TRICKLES == [r.status for r in answers]
    good = await client.get(f"/?{upstream.url('/img.png')}")
    assert (200, png_bytes) == (good.status, await good.read())
    # The queued fetches were cancelled unsent (one whose waiter had not yet given up may take a
    # freed slot for a moment, so not exactly the two that held the slots).
    assert trickle.connections < TRICKLES // 2


async def test_one_slow_host_takes_only_its_own_slots(
    upstream: Upstream, trickle: Trickle, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """40 trickles from one host hold fetch.per_host slots; a miss elsewhere is served meanwhile."""
    config = trickle_config(upstream, trickle, root, jobs=4, per_host=2, min_rate=0)
    client = await make_client(config)
    trickle.want = 2
    pending = [
        asyncio.ensure_future(client.get(f"/?http://slow.example/a{i}.png"))
        for i in range(TRICKLES)
    ]
    await trickle.busy.wait()
    good = await client.get(f"/?{upstream.url('/img.png')}")
    assert (200, png_bytes) == (good.status, await good.read())
    assert 2 == trickle.connections
    trickle.stop.set()  # end the trickles now rather than at their timeouts
    assert all(r.status != 200 for r in await asyncio.gather(*pending))


# --- single flight: work nobody waits for is cancelled, unless it is storing ---------------------


async def test_single_flight_cancels_work_once_every_waiter_has_gone() -> None:
    """Three waiters time out; the shared work is cancelled then, not left holding its slot."""
    flight: SingleFlight[str] = SingleFlight()
    ended = asyncio.Event()
    outcome: list[str] = []

    async def work() -> str:
        try:
            await asyncio.Event().wait()  # an upstream that never answers
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            ended.set()
        return "never"

    results = await asyncio.gather(
        *(flight.do("k", work, 0.05) for _ in range(3)), return_exceptions=True
    )
    assert [True] * 3 == [isinstance(r, TimeoutError) for r in results]
    await ended.wait()
    assert (["cancelled"], 0) == (outcome, len(flight))


async def test_single_flight_keeps_work_while_one_waiter_remains() -> None:
    """A waiter giving up leaves the work running for the one still waiting."""
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "done"

    patient = asyncio.ensure_future(flight.do("k", work, 30))
    await asyncio.sleep(0)  # let it start the work first
    with pytest.raises(TimeoutError):
        await flight.do("k", work, 0.05)
    release.set()
    assert ("done", False) == await patient


async def test_single_flight_lets_committing_work_finish() -> None:
    """Work that has started storing is not cancelled when its last waiter goes."""
    flight: SingleFlight[str] = SingleFlight()
    release, stored = asyncio.Event(), asyncio.Event()

    async def work() -> str:
        flight.committing()
        await release.wait()  # the manifest write, say
        stored.set()
        return "stored"

    with pytest.raises(TimeoutError):
        await flight.do("k", work, 0.05)
    release.set()
    await stored.wait()
    assert stored.is_set()


async def test_single_flight_starts_afresh_after_a_cancel() -> None:
    """A caller arriving after the work was cancelled gets new work, not the cancellation."""
    flight: SingleFlight[str] = SingleFlight()
    calls = [0]

    async def work() -> str:
        calls[0] += 1
        if calls[0] == 1:
            await asyncio.Event().wait()
        return f"call {calls[0]}"

    with pytest.raises(TimeoutError):
        await flight.do("k", work, 0.05)
    assert ("call 2", False) == await flight.do("k", work, 30)
