"""
Issue #12 §3: several ``serve`` nodes over one PostgreSQL manifest behave as one proxy.

Three apps (three ``create_app``, each with its own manifest connections) share a real
PostgreSQL database (tests/pg_server.py) and one local store folder, in front of a real origin
on 127.0.0.1 that counts its requests. Waits are bounded waits on a condition, never a sleep
past a TTL: the catalog refresh interval is an hour, so only a NOTIFY can wake a node.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.config import Config, ManifestConfig, ServeConfig, StoreConfig
from mirror.resolver import Resolver
from mirror.serve import STATE, create_app

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
