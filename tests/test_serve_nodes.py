"""
Issue #12 §3: several ``serve`` nodes over one PostgreSQL manifest behave as one proxy.

Three apps (three ``create_app``, each with its own manifest connections) share a real
PostgreSQL database (tests/pg_server.py) and one local store folder, in front of a real origin
on 127.0.0.1 that counts its requests. Waits are bounded waits on a condition, never a sleep
past a TTL: the catalog refresh interval is an hour, so only a NOTIFY can wake a node; TTLs pass
on injected clocks, and a fetch lease's renewals on an injected sleep the test steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.catalog import Catalog
from mirror.config import Config, ManifestConfig, ServeConfig, StoreConfig
from mirror.downloader import Downloader
from mirror.fetch import Fetcher
from mirror.manifest import open_manifest
from mirror.metrics import Metrics
from mirror.resolver import LEASE_MARGIN, Resolver, fetch_budget
from mirror.serve import STATE, create_app
from mirror.store import open_store

if TYPE_CHECKING:
    from conftest import Upstream

Client = TestClient[web.Request, web.Application]
NODES = 3
REQUESTS = 10
# How often a condition below is looked at before the test fails: a bound, not a wait.
POLLS = 4000


def node_config(upstream: Upstream, pg_url: str, store: Path) -> Config:
    """Open mode over the shared PostgreSQL manifest and store; refreshes only when woken."""
    base = upstream.config(attempts=1)
    return dataclasses.replace(
        base,
        store=StoreConfig(path=str(store)),
        manifest=ManifestConfig(url=pg_url),
        serve=ServeConfig(open=True, refresh_interval=3600.0),
    )


async def start_nodes(aiohttp_client: Any, config: Config) -> list[Client]:
    """Start the nodes one after another (the first brings the schema up)."""
    clients: list[Client] = []
    for _ in range(NODES):
        clients.append(await aiohttp_client(create_app(config)))
    return clients


def resolver(client: Client) -> Resolver:
    """The node's fetch owner."""
    found = client.app[STATE].resolver
    assert isinstance(found, Resolver)
    return found


def counter(client: Client, name: str) -> float:
    """A counter of the node's fetch owner, summed over its labels."""
    return sum(resolver(client).metrics.counters[name].values())


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds; fail after :data:`POLLS` looks."""
    for _ in range(POLLS):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


async def get(client: Client, source: str) -> tuple[int, bytes]:
    """Ask a node for ``source`` as the proxy's clients do."""
    async with client.get(f"/?{source}") as response:
        return response.status, await response.read()


async def test_one_upstream_fetch_for_thirty_requests_on_three_nodes(
    upstream: Upstream, pg_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """3 nodes x 10 concurrent requests for one unknown URL: 1 upstream request, 30 same 200s."""
    clients = await start_nodes(aiohttp_client, node_config(upstream, pg_url, tmp_path / "s"))
    source = upstream.url("/stall?seconds=30")
    asked = [
        asyncio.create_task(get(client, source)) for client in clients for _ in range(REQUESTS)
    ]
    # The origin holds its answer until one node fetches and both others wait on its lease.
    await until(lambda: upstream.hits["/stall?seconds=30"] == 1)
    await until(lambda: sum(counter(c, "mirror_lease_waits_total") > 0 for c in clients) == 2)
    upstream.release.set()
    answers = await asyncio.gather(*asked)
    assert 1 == upstream.hits["/stall?seconds=30"]
    assert [(200, upstream.png)] * (NODES * REQUESTS) == answers
    assert 1 == sum(counter(c, "mirror_upstream_fetches_total") for c in clients)


async def test_a_failure_is_answered_from_the_shared_negative_cache(
    upstream: Upstream, pg_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """A 404 fetched by one node is answered by the others from the manifest, not the origin."""
    clients = await start_nodes(aiohttp_client, node_config(upstream, pg_url, tmp_path / "s"))
    source = upstream.url("/status/404")
    first = await get(clients[0], source)
    assert 1 == upstream.hits["/status/404"]
    others = [await get(client, source) for client in clients[1:]]
    assert [first[0]] * (NODES - 1) == [status for status, _body in others]
    assert 404 == first[0]
    assert 1 == upstream.hits["/status/404"]
    assert [1.0, 1.0] == [counter(c, "mirror_negative_cache_hits_total") for c in clients[1:]]


async def test_a_row_written_on_one_node_is_a_hit_on_another_after_its_wake(
    upstream: Upstream, pg_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Node A fetches; node B's catalog, woken by wait_for_change, then answers it as a hit."""
    node_a, node_b, _node_c = await start_nodes(
        aiohttp_client, node_config(upstream, pg_url, tmp_path / "s")
    )
    source = upstream.url("/img.png")
    assert (200, upstream.png) == await get(node_a, source)
    catalog_b = node_b.app[STATE].catalog
    await until(lambda: catalog_b.lookup(source) is not None)
    assert (200, upstream.png) == await get(node_b, source)
    assert 1 == upstream.hits["/img.png"]
    assert 1.0 == sum(node_b.app[STATE].metrics.counters["mirror_cache_hits_total"].values())
    assert 0.0 == sum(node_b.app[STATE].metrics.counters["mirror_cache_misses_total"].values())


class Clock:
    """A clock that moves only when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Steps:
    """A stand-in for asyncio.sleep that returns once per :meth:`step` (and notes its asks)."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._steps = asyncio.Semaphore(0)

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self._steps.acquire()

    def step(self) -> None:
        """Let one waiting sleep return."""
        self._steps.release()


@pytest.fixture(params=["sqlite", "postgresql"])
def manifest_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file beside the store (one node owns it) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_a_success_forgets_the_failure_so_the_next_backs_off_afresh(
    upstream: Upstream, manifest_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """
    Fail, succeed past the backoff, lose the object, fail again: 60 s of backoff, not 120.

    Over PostgreSQL node B answers the first failure from the shared entry and fetches the
    second; the success on node A must have forgotten the entry, or B's failure counts as the
    second in a row. Over SQLite one node plays both (its negative cache is its own).
    """
    config = node_config(upstream, manifest_url, tmp_path / "s")
    config = dataclasses.replace(
        config, serve=dataclasses.replace(config.serve, negative_ttl=60.0, memory_cache_bytes=0)
    )
    node_a = await aiohttp_client(create_app(config))
    node_b = await aiohttp_client(create_app(config)) if manifest_url else node_a
    clock = Clock(time.time())  # near the manifests' own clocks, which trim old entries
    for node in (node_a, node_b):
        resolver(node).clock = resolver(node).wall = clock
    source = upstream.url("/switch")
    upstream.down = True
    assert [502, 502] == [(await get(node, source))[0] for node in (node_a, node_b)]
    assert 1 == upstream.hits["/switch"]
    clock.now += 61
    upstream.down = False
    assert (200, upstream.png) == await get(node_a, source)
    assert 2 == upstream.hits["/switch"]
    async with open_manifest(config) as manifest:
        assert await manifest.negative_get(source) is None
    for stored in (tmp_path / "s" / "objects").glob("*/*.png"):
        stored.unlink()  # lost: the next request is a miss again
    upstream.down = True
    assert 502 == (await get(node_b, source))[0]
    assert 3 == upstream.hits["/switch"]
    clock.now += 61  # past a first failure's 60 s
    assert 502 == (await get(node_a, source))[0]
    assert 4 == upstream.hits["/switch"]


def lease_config(upstream: Upstream, pg_url: str, store: Path) -> Config:
    """:func:`node_config` with the default one-minute fetch limit: a budget of a few TTLs."""
    config = node_config(upstream, pg_url, store)
    return dataclasses.replace(config, fetch=dataclasses.replace(config.fetch, total_timeout=60.0))


@contextlib.asynccontextmanager
async def lease_node(config: Config, clock: Clock, steps: Steps) -> AsyncIterator[Resolver]:
    """A serve node's fetch owner, wired as serve wires it, on ``clock`` and ``steps``."""
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(config))
        manifest = await stack.enter_async_context(open_manifest(config, clock=clock))
        evictor = await stack.enter_async_context(open_manifest(config, clock=clock))
        feed = await stack.enter_async_context(open_manifest(config, clock=clock))
        fetcher = await stack.enter_async_context(Fetcher(config))
        node = Resolver(
            config,
            store=store,
            manifest=manifest,
            evictor=evictor,
            downloader=Downloader(config, fetcher, store, manifest, breaker=False),
            catalog=Catalog(feed=feed),
            metrics=Metrics(),
            clock=clock,
            wall=clock,
            sleep=steps,
        )
        await node.catalog.sync()
        try:
            yield node
        finally:
            await node.flight.close()


async def test_a_fetch_slower_than_its_lease_renews_it_so_no_node_fetches_twice(
    upstream: Upstream, pg_url: str, tmp_path: Path
) -> None:
    """Node A's fetch outlasts the lease's TTL; renewed every TTL/3, B waits instead of fetching."""
    config = lease_config(upstream, pg_url, tmp_path / "s")
    ttl = config.serve.request_timeout + LEASE_MARGIN
    clock, steps_a, steps_b = Clock(), Steps(), Steps()
    source = upstream.url("/stall?seconds=30")
    async with lease_node(config, clock, steps_a) as a, lease_node(config, clock, steps_b) as b:
        first = asyncio.create_task(a.resolve(source))
        await until(lambda: upstream.hits["/stall?seconds=30"] == 1 and bool(steps_a.asked))
        assert [ttl / 3] == steps_a.asked
        clock.now += ttl - 1
        steps_a.step()  # a third of the TTL has passed (three times over): renew
        await until(lambda: counter_of(a, "mirror_lease_renewals_total") == 1.0)
        clock.now += 2  # past the lease's first expiry, inside the renewed one
        second = asyncio.create_task(b.resolve(source))
        await until(lambda: counter_of(b, "mirror_lease_waits_total") == 1.0)
        upstream.release.set()
        answers = await asyncio.gather(first, second)
    assert [200, 200] == [answer.status for answer in answers]
    assert 1 == upstream.hits["/stall?seconds=30"]
    assert 0.0 == counter_of(b, "mirror_upstream_fetches_total")


async def test_renewals_stop_at_the_fetch_budget_so_a_wedged_fetch_frees_the_url(
    upstream: Upstream, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past fetch_budget the holder stops renewing: a TTL later another node may take the URL."""
    config = lease_config(upstream, pg_url, tmp_path / "s")
    ttl = config.serve.request_timeout + LEASE_MARGIN
    clock, steps = Clock(), Steps()
    source = upstream.url("/stall?seconds=30")
    async with lease_node(config, clock, steps) as a, open_manifest(config, clock=clock) as other:
        first = asyncio.create_task(a.resolve(source))
        await until(lambda: len(steps.asked) == 1)
        steps.step()
        await until(lambda: len(steps.asked) == 2)  # renewed once, sleeping again
        assert 1.0 == counter_of(a, "mirror_lease_renewals_total")
        clock.now += fetch_budget(config)
        steps.step()
        await until(lambda: "outlived the fetch budget" in caplog.text)
        clock.now += ttl  # past the last renewal's TTL
        assert await other.lease(f"fetch:{source}", "node-b", ttl) is True
        assert 1.0 == counter_of(a, "mirror_lease_renewals_total")
        assert 2 == len(steps.asked)  # the keeper ended instead of sleeping again
        upstream.release.set()
        assert 200 == (await first).status


def counter_of(node: Resolver, name: str) -> float:
    """A counter of a fetch owner, summed over its labels."""
    return sum(node.metrics.counters[name].values())
