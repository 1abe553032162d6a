"""
Every per-URL structure of ``serve`` stays bounded, in entries and in bytes (tracemalloc).

The figures asserted are those the code promises: each bound in entries, and the bytes that
tracemalloc measures staying under the structure's byte bound (and under its own estimate).
The end-to-end load test is bench/serve_failures.py; its --smoke run is the last test here.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import subprocess
import sys
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.bounded import KEY_BYTES, SLOT_BYTES, BoundedMap, url_key
from mirror.catalog import Catalog
from mirror.config import Config, ServeConfig, StoreConfig
from mirror.resolver import (
    FAILURE_BYTES,
    MAX_FAILURES,
    RECENT_FAILURES,
    RECENT_SOURCE_CHARS,
    FailureCache,
    Resolution,
    Resolver,
)
from mirror.response import ENTRY_BYTES, ObjectCache
from mirror.serve import (
    MAX_SEEN,
    SEEN_BYTES,
    SOURCE_MEMO,
    SOURCE_MEMO_BYTES,
    STATE,
    QueryClassifier,
    ServeState,
    create_app,
)
from mirror.store.local import FolderStore
from mirror.workers import RemoteResolver

if TYPE_CHECKING:
    from conftest import Upstream

REPO = Path(__file__).resolve().parent.parent
DISTINCT = 200_000
MiB = 1024 * 1024
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(config: Config) -> Client:
        client: Client = await aiohttp_client(create_app(config))
        return client

    return make


@pytest.fixture
def traced() -> Iterator[Callable[[], int]]:
    """tracemalloc running; call the result for the bytes allocated since the fixture began."""
    # The collector would otherwise walk pytest's whole heap again and again: the loops here
    # make millions of small objects.
    gc.freeze()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    yield lambda: tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    gc.unfreeze()


def long_url(index: int, pad: int = 1000) -> str:
    """A distinct URL of about ``pad`` characters (aiohttp takes request lines up to 8190)."""
    return f"http://h{index % 1000}.example/{'p' * pad}/{index}.jpg"


# --- the building blocks ------------------------------------------------------------------------


def test_url_key_is_a_fixed_size_digest() -> None:
    """Keys are 16 bytes whatever the URL's length, equal for equal URLs, any str accepted."""
    keys = {url_key(long_url(i, pad)) for i in range(100) for pad in (10, 8000)}
    assert 200 == len(keys)
    assert {KEY_BYTES} == {len(key) for key in keys}
    assert url_key("http://a.example/x.jpg") == url_key("http://a.example/x.jpg")
    assert KEY_BYTES == len(url_key("http://a.example/\udcff.jpg"))  # a lone surrogate


def test_bounded_map_forgets_the_least_recently_used() -> None:
    """Beyond max_entries the entry used longest ago goes; get() counts as a use."""
    bounded: BoundedMap[str, int] = BoundedMap(3, 10**9)
    for name, value in (("a", 1), ("b", 2), ("c", 3)):
        bounded.put(name, value)
    assert 1 == bounded.get("a")
    bounded.put("d", 4)
    assert ["a", "c", "d"] == sorted(name for name in "abcd" if name in bounded)
    assert 3 == len(bounded)


def test_bounded_map_bytes_bound_and_accounting() -> None:
    """held never passes max_bytes, counts replacements once, and returns to 0 when emptied."""
    cost = SLOT_BYTES + 2 * sys.getsizeof("x" * 100)
    bounded: BoundedMap[str, str] = BoundedMap(10**6, 10 * cost)
    for index in range(1000):
        bounded.put(f"{index:0100d}", "x" * 100)
        assert bounded.held <= bounded.max_bytes
    assert 10 == len(bounded)
    assert 10 * cost == bounded.held
    bounded.put(f"{999:0100d}", "y" * 100)  # a replacement costs what the old value cost
    assert 10 * cost == bounded.held
    bounded.put("huge", "z" * (20 * cost))  # alone over the bound: not kept
    assert "huge" not in bounded
    assert "y" * 100 == bounded.pop(f"{999:0100d}")
    assert 9 == len(bounded.drain())
    assert (0, 0) == (len(bounded), bounded.held)


# --- the negative cache -------------------------------------------------------------------------


def test_failure_cache_byte_bound_holds_for_answers_it_cannot_share(
    traced: Callable[[], int],
) -> None:
    """More distinct answers than it shares: their bytes count, and the byte bound holds."""
    cache = FailureCache(max_entries=10**9, max_bytes=2 * MiB)
    for index in range(20_000):
        reason = f"http-{index}"
        cache.remember(long_url(index), Resolution(502, reason, f"failed: {reason}"), 0.0, 60.0)
    used = traced()
    assert cache.held <= 2 * MiB
    assert used <= 2 * MiB + 128 * 1024, used  # plus the shared answers themselves
    assert 3000 < len(cache) < 20_000


@pytest.mark.slow
async def test_resolver_failures_and_recent_list_stay_bounded(
    upstream: Upstream, tmp_path: Path, make_client: MakeClient, traced: Callable[[], int]
) -> None:
    """200,000 distinct 1 KB failing URLs: MAX_FAILURES hashed entries and 100 short lines."""
    config = dataclasses.replace(
        upstream.config(), store=StoreConfig(path=str(tmp_path)), serve=ServeConfig(open=True)
    )
    client = await make_client(config)
    resolver = client.app[STATE].resolver
    assert isinstance(resolver, Resolver)
    before = traced()
    answer = Resolution(404, "http-404", "upstream failed: http-404")
    for index in range(DISTINCT):
        # What every failed fetch does once the upstream has answered; a new answer each time,
        # as the resolver makes them (equal ones are shared).
        resolver._remember(long_url(index), dataclasses.replace(answer))
    used = traced() - before
    failures = resolver.failures
    assert MAX_FAILURES == len(failures)
    assert failures.held <= FAILURE_BYTES
    # The full URLs as keys took 100,000 x 1.4 KB here, 100,000 x 8.4 KB for 8 KB URLs.
    assert used < 40 * MiB
    now = resolver.clock()
    assert answer == failures.lookup(long_url(DISTINCT - 1), now)
    assert failures.lookup(long_url(DISTINCT - 1), now + 60.0) is None  # its backoff is over
    assert failures.lookup(long_url(0), now) is None  # the oldest went first
    assert RECENT_FAILURES == len(resolver.recent)
    assert {RECENT_SOURCE_CHARS + 1} == {len(f["source"]) for f in resolver.recent}
    assert used < resolver.failures.held + MiB, (used, resolver.failures.held)
    page = await (await client.get("/")).text()
    assert long_url(DISTINCT - 1)[:RECENT_SOURCE_CHARS] in page
    assert long_url(DISTINCT - 1) not in page


async def test_failed_urls_are_answered_from_the_hashed_cache(
    upstream: Upstream, tmp_path: Path, make_client: MakeClient
) -> None:
    """Through HTTP: each distinct failing URL is fetched once, then answered from memory."""
    config = dataclasses.replace(
        upstream.config(attempts=1),
        store=StoreConfig(path=str(tmp_path)),
        serve=ServeConfig(open=True),
    )
    client = await make_client(config)
    paths = [f"/status/404?{'q' * 2000}{index}" for index in range(60)]
    for _round in range(2):
        for path in paths:
            response = await client.get(f"/?{upstream.url(path)}")
            assert (404, "http-404") == (response.status, response.headers["X-Mirror-Reason"])
    assert [1] * len(paths) == [upstream.hits[path] for path in paths]
    resolver = client.app[STATE].resolver
    assert isinstance(resolver, Resolver)
    assert len(paths) == len(resolver.failures)
    metrics = await (await client.get("/metrics")).text()
    assert f"mirror_negative_cache_hits_total {len(paths)}" in metrics


# --- the request side: query memo, open-mode hit times, object cache ---------------------------


@pytest.mark.slow
def test_query_memo_and_seen_stay_bounded(tmp_path: Path, traced: Callable[[], int]) -> None:
    """200,000 distinct queries through the memo, and as many open-mode hit times: bounded."""
    store = FolderStore(tmp_path)
    config = Config()
    state = ServeState(
        config=config,
        store=store,
        catalog=Catalog(tmp_path / "manifest.sqlite3"),
        cache=ObjectCache(store, 0),
        classifier=QueryClassifier(config.scan.wrappers),
        resolver=RemoteResolver(str(tmp_path / "owner.sock"), 1.0),  # never asked here
    )
    start = traced()
    for index in range(DISTINCT):
        # One query in 16 is a 2 KB URL (parsing it is the slow part), the rest name none.
        query = long_url(index, 2000) if index % 16 == 0 else f"not-a-url-{index}"
        assert (query if index % 16 == 0 else None) == state.source(query)
    memo = traced() - start
    assert len(state.sources) <= SOURCE_MEMO
    assert state.sources.held <= SOURCE_MEMO_BYTES
    assert memo <= state.sources.held, (memo, state.sources.held)
    start = traced()
    for index in range(DISTINCT):
        state.seen.put(long_url(index, 300), float(index))
    seen = traced() - start
    assert len(state.seen) <= MAX_SEEN
    assert state.seen.held <= SEEN_BYTES
    assert seen <= state.seen.held, (seen, state.seen.held)
    # The newest hit times survive to the next heartbeat.
    assert float(DISTINCT - 1) == state.seen.drain()[long_url(DISTINCT - 1, 300)]


async def test_object_cache_counts_what_each_object_holds(
    tmp_path: Path, traced: Callable[[], int]
) -> None:
    """Thousands of tiny cached images stay within memory_cache_bytes, overhead included."""
    store = FolderStore(tmp_path)
    shas = []
    for index in range(2000):
        data = b"GIF89a" + index.to_bytes(4, "big")
        shas.append(hashlib.sha256(data).hexdigest())
        await store.put(data, shas[-1], "gif", "image/gif")
    cache = ObjectCache(store, 256 * 1024)
    gc.collect()
    start = traced()
    for sha in shas:
        assert await cache.load(sha, "gif") is not None
    gc.collect()
    used = traced() - start
    assert cache.held <= 256 * 1024
    assert 256 * 1024 // (10 + ENTRY_BYTES) == len(cache._items)
    # Counting the 10 bytes alone kept all 2,000 of them, 2.5 MB. (A Path per read once made
    # it 4 MB late in a full run: pathlib interned the 2,000 new names, and the interpreter's
    # table of interned strings grew in one allocation that outlives them.)
    assert used <= 256 * 1024, used


# --- the load test ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_failures_benchmark_smoke(tmp_path: Path) -> None:
    """bench/serve_failures.py --smoke: a real serve --open, thousands of 404s, RSS reported."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "serve_failures.py"), "--smoke"],
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert 0 == done.returncode, output
    assert "peak RSS" in output
    assert "PROBLEM" not in output
