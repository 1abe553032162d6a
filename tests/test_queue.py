"""
The fetch queue against a real PostgreSQL (tests/pg_server.py) and a local aiohttp origin.

Workers run in this process as coroutines, each with its own database sessions (so advisory
locks and procrastinate's locks are as separate as across machines); the drain waits poll the
queue's own count, bounded, never a timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mirror.config import Config, ManifestConfig, QueueConfig, StoreConfig
from mirror.errors import UsageError
from mirror.manifest import open_manifest
from mirror.queue.app import build_app
from mirror.queue.enqueue import enqueue
from mirror.queue.status import pending
from mirror.queue.worker import open_queue, run_worker

PROXY = "https://cors.zfour.workers.dev/?"
# Polls of the queue's count before a drain wait gives up: a bound, not a timing.
POLLS = 600
# The sources in tasks a worker holds (a task is a batch of one host's sources).
DOING = (
    "SELECT item->>'source' FROM procrastinate_jobs j, jsonb_array_elements(j.args->'sources')"
    " AS item WHERE j.status = 'doing'"
)
DOING_COUNT = f"SELECT count(*) FROM ({DOING}) AS doing"


def queue_config(base: Config, pg_url: str, tmp_path: Path, **queue: Any) -> Config:
    """Return ``base`` over ``pg_url`` and a store in ``tmp_path``, with quick heartbeats."""
    settings = {"heartbeat": 0.2, "stalled_after": 1.0, "poll_interval": 0.05, **queue}
    return dataclasses.replace(
        base,
        manifest=ManifestConfig(url=pg_url),
        store=StoreConfig(path=str(tmp_path / "cache")),
        queue=QueueConfig(**settings),
    )


def write_posts(folder: Path, urls: list[str]) -> Path:
    """Write one post naming each of ``urls`` through the proxy; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f'<img src="{PROXY}{url}">' for url in urls)
    (folder / "a.md").write_text(f"---\ntitle: a\n---\n{body}\n", encoding="utf-8")
    return folder


async def queue_sources(config: Config, posts: Path) -> list[Any]:
    """Enqueue ``posts`` twice; return both summaries."""
    app = await open_queue(config)
    async with app.open_async(), open_manifest(config) as manifest:
        return [await enqueue(config, [posts], app, manifest) for _ in range(2)]


async def drain(pg_url: str, workers: list[asyncio.Task[Counter[str]]]) -> None:
    """Wait until no task waits or runs (or a worker ended), bounded by POLLS."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        for _ in range(POLLS):
            if await pending(conn) == 0 or any(w.done() for w in workers):
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the queue did not drain")


def rows(pg_url: str) -> dict[str, tuple[str, str | None]]:
    """Return the manifest's rows: source -> (status, reason)."""
    with psycopg.connect(pg_url) as conn:
        found = conn.execute("SELECT source, status, reason FROM sources").fetchall()
    return {s: (st, r) for s, st, r in found}


async def test_enqueue_twice_queues_once_and_a_worker_drains_it(
    pg_url: str, tmp_path: Path, upstream: Any
) -> None:
    """Enqueueing twice queues each source once; one worker fetches each once and records it."""
    config = queue_config(upstream.config(sources=("origin",)), pg_url, tmp_path)
    urls = [upstream.url("/img.png"), upstream.url("/img.jpg"), upstream.url("/status/404")]
    first, second = await queue_sources(config, write_posts(tmp_path / "posts", urls))
    assert (3, 0) == (first.queued, first.in_queue)
    assert (0, 3) == (second.queued, second.in_queue)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(config, 4, stop=stop))
    await drain(pg_url, [worker])
    stop.set()
    outcomes = await worker
    assert Counter({"mirrored": 2, "failed": 1}) == outcomes
    assert {
        urls[0]: ("mirrored", None),
        urls[1]: ("mirrored", None),
        urls[2]: ("failed", "http-404"),
    } == rows(pg_url)
    assert [1, 1, 1] == [upstream.hits[p] for p in ("/img.png", "/img.jpg", "/status/404")]
    assert 2 == len([p for p in (tmp_path / "cache").rglob("*.*g") if p.is_file()])


async def test_enqueue_skips_what_is_mirrored(pg_url: str, tmp_path: Path, upstream: Any) -> None:
    """A second enqueue after the worker is done queues only the failure that is due again."""
    config = queue_config(
        upstream.config(sources=("origin",), failure_backoff=3600.0), pg_url, tmp_path
    )
    urls = [upstream.url("/img.png"), upstream.url("/status/404")]
    posts = write_posts(tmp_path / "posts", urls)
    await queue_sources(config, posts)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(config, 2, stop=stop))
    await drain(pg_url, [worker])
    stop.set()
    await worker
    again, _ = await queue_sources(config, posts)
    assert (0, 1, 1) == (again.queued, again.mirrored, again.not_due)


def test_the_queue_needs_postgresql(make_config: Any) -> None:
    """Without a postgresql:// manifest the queue refuses with a usage error (exit 2)."""
    with pytest.raises(UsageError) as caught:
        build_app(make_config())
    assert 2 == caught.value.exit_status


async def run_workers(config: Config, pg_url: str, count: int, each: int) -> list[Counter[str]]:
    """Run ``count`` workers of ``each`` tasks until the queue drains; return their outcomes."""
    stop = asyncio.Event()
    workers = [asyncio.create_task(run_worker(config, each, stop=stop)) for _ in range(count)]
    try:
        await drain(pg_url, workers)
    finally:
        stop.set()
    return list(await asyncio.gather(*workers))


async def test_three_workers_never_exceed_per_host(
    pg_url: str, tmp_path: Path, upstream: Any
) -> None:
    """Three workers of 4 tasks each never have more than fetch.per_host requests at one host."""
    config = queue_config(upstream.config(sources=("origin",), per_host=2), pg_url, tmp_path)
    urls = [upstream.url(f"/slow?seconds=0.03&n={n}") for n in range(24)]
    await queue_sources(config, write_posts(tmp_path / "posts", urls))
    outcomes = await run_workers(config, pg_url, 3, 4)
    assert 24 == sum(o["mirrored"] for o in outcomes)
    assert 2 == upstream.max_in_flight
    assert 24 == len(upstream.hits)


async def test_the_breaker_is_shared_by_every_worker(
    pg_url: str, tmp_path: Path, upstream: Any
) -> None:
    """After host_failures failures in a row the host is left alone by all three workers."""
    fetch = {"sources": ("origin",), "per_host": 1, "host_failures": 3, "attempts": 1}
    config = queue_config(upstream.config(**fetch), pg_url, tmp_path)
    urls = [upstream.url(f"/status/503?n={n}") for n in range(12)]
    await queue_sources(config, write_posts(tmp_path / "posts", urls))
    outcomes = await run_workers(config, pg_url, 3, 2)
    assert 12 == sum(sum(o.values()) for o in outcomes)
    assert 3 == len(upstream.hits)
    reasons = Counter(reason for _, reason in rows(pg_url).values())
    assert Counter({"http-503": 3, "host-down": 9}) == reasons
    with psycopg.connect(pg_url) as conn:
        found = conn.execute("SELECT failures, down_until FROM queue_hosts").fetchall()
    assert [3] == [f[0] for f in found]
    assert found[0][1] is not None


async def until_count(pg_url: str, query: str, wanted: int, workers: list[Any]) -> None:
    """Poll ``query`` until it counts ``wanted`` (bounded by POLLS; a worker that ended fails)."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        for _ in range(POLLS):
            row = await (await conn.execute(query)).fetchone()  # type: ignore[arg-type]
            if row is not None and row[0] == wanted:
                return
            assert not any(w.done() for w in workers), [w.result() for w in workers if w.done()]
            await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted}: {query}")


async def test_a_source_queued_twice_is_fetched_once_while_its_claim_is_held(
    pg_url: str, tmp_path: Path, upstream: Any
) -> None:
    """
    A source in two tasks at once (its queue_sources row lost, so a second enqueue queued it
    again): the second worker waits for the first one's claim, then finds it recorded.
    """
    config = queue_config(upstream.config(sources=("origin",)), pg_url, tmp_path)
    url = upstream.url("/stall?seconds=60")
    posts = write_posts(tmp_path / "posts", [url])
    app = await open_queue(config)
    async with app.open_async(), open_manifest(config) as manifest:
        first = await enqueue(config, [posts], app, manifest)
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await conn.execute("DELETE FROM queue_sources")
        second = await enqueue(config, [posts], app, manifest)
    assert (1, 1) == (first.queued, second.queued)
    stop = asyncio.Event()
    workers = [asyncio.create_task(run_worker(config, 1, stop=stop))]
    try:
        await until_count(pg_url, DOING_COUNT, 1, workers)
        for _ in range(POLLS):  # the first worker is at the origin, holding the claim
            if upstream.hits["/stall?seconds=60"]:
                break
            await asyncio.sleep(0.05)
        workers.append(asyncio.create_task(run_worker(config, 1, stop=stop)))
        await until_count(pg_url, DOING_COUNT, 2, workers)
        upstream.release.set()
        await drain(pg_url, workers)
    finally:
        upstream.release.set()
        stop.set()
    outcomes = await asyncio.gather(*workers)
    assert [Counter({"mirrored": 1}), Counter({"already": 1})] == outcomes
    assert 1 == upstream.hits["/stall?seconds=60"]
    assert {url: ("mirrored", None)} == rows(pg_url)


async def test_a_task_taken_from_a_live_worker_does_not_fetch_twice(
    pg_url: str, tmp_path: Path, upstream: Any
) -> None:
    """
    A live worker whose heartbeat looks stale has its running task queued again (procrastinate
    cannot tell it from a dead one); the claim, held by its session, keeps the second worker
    from fetching the source beside it.
    """
    from mirror.queue.worker import reap

    config = queue_config(upstream.config(sources=("origin",)), pg_url, tmp_path)
    url = upstream.url("/stall?seconds=60")
    await queue_sources(config, write_posts(tmp_path / "posts", [url]))
    stop = asyncio.Event()
    workers = [asyncio.create_task(run_worker(config, 1, stop=stop))]
    try:
        await until_count(pg_url, DOING_COUNT, 1, workers)
        for _ in range(POLLS):
            if upstream.hits["/stall?seconds=60"]:
                break
            await asyncio.sleep(0.05)
        # As if its heartbeat were late: every worker counts as silent.
        app = await open_queue(config)
        async with app.open_async():
            # Bounded: a heartbeat is never younger than a millisecond for long.
            for _ in range(POLLS):
                if await reap(app, 0.001):
                    break
            else:
                raise AssertionError("the running task was never queued again")
        workers.append(asyncio.create_task(run_worker(config, 1, stop=stop)))
        await until_count(pg_url, DOING_COUNT, 1, workers)  # taken again, by the second
        upstream.release.set()
        await until_count(pg_url, "SELECT count(*) FROM sources", 1, workers)
        await drain(pg_url, workers)
    finally:
        upstream.release.set()
        stop.set()
    outcomes = await asyncio.gather(*workers)
    assert 1 == upstream.hits["/stall?seconds=60"]
    assert Counter({"mirrored": 1, "already": 1}) == outcomes[0] + outcomes[1]
    assert {url: ("mirrored", None)} == rows(pg_url)


async def test_a_busy_worker_keeps_a_healthy_hosts_slots_between_requests(
    pg_url: str, tmp_path: Path, make_config: Any
) -> None:
    """
    Ten requests to one host through per_host = 2 take two slots from the database, not ten;
    both go back when the last request ends, and another worker can take them then.
    """
    from mirror.queue.hosts import HostSlots

    config = queue_config(make_config(per_host=2), pg_url, tmp_path)
    await open_queue(config)  # the schema
    gate = asyncio.Event()
    inside = 0

    async def request(slots: HostSlots) -> None:
        nonlocal inside
        async with slots.slot("busy.example"):
            inside += 1
            await gate.wait()

    async with HostSlots(pg_url, config) as mine, HostSlots(pg_url, config) as theirs:
        tasks = [asyncio.create_task(request(mine)) for _ in range(10)]
        for _ in range(POLLS):
            if inside == 2:
                break
            await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*tasks)
        assert (10, 2) == (inside, mine.taken)
        # Given back: a second worker takes both at once (a held slot would make it wait).
        gate.clear()
        others = [asyncio.create_task(request(theirs)) for _ in range(2)]
        for _ in range(POLLS):
            if inside == 12:
                break
            await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*others)
        assert (2, 0) == (theirs.taken, theirs.waits)


async def test_a_slot_kept_for_a_request_that_then_leaves_goes_back(
    pg_url: str, tmp_path: Path, make_config: Any
) -> None:
    """
    per_host = 1: the request ending keeps its slot for the one waiting behind it; that one is
    cancelled before it runs, so nobody takes the slot. It goes back to the database at once
    (else only the session's end would free it, and the host would stall for every worker).
    """
    from mirror.queue.hosts import HostSlots

    config = queue_config(make_config(per_host=1), pg_url, tmp_path)
    await open_queue(config)
    host = "kept.example"

    async def second(slots: HostSlots) -> None:
        async with slots.slot(host):
            raise AssertionError("cancelled before it runs: never gets the slot")

    async with HostSlots(pg_url, config) as mine, HostSlots(pg_url, config) as theirs:
        async with mine.slot(host):
            waiting = asyncio.create_task(second(mine))
            for _ in range(POLLS):  # it runs up to the per-host semaphore, without a wait
                if mine._wanting[host] == 2:
                    break
                await asyncio.sleep(0)
            assert 2 == mine._wanting[host]
        # The slot was kept for `waiting`, which is woken but has not run yet.
        assert [0] == mine._kept[host]
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert host not in mine._kept
        assert host not in mine._held
        async with theirs.slot(host):
            assert (1, 0) == (theirs.taken, theirs.waits)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_rewrite_reads_rows_ahead_and_gives_each_post_its_own(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_config: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    `run --workers`' rewrite asks for two posts' rows at a time here: five posts, each naming
    its own image, end pointing at their own objects; the failure's post is left as it was.
    """
    import hashlib
    import time

    from mirror.manifest import SourceResult
    from mirror.pipeline import RunSummary
    from mirror.queue import rewrite

    monkeypatch.setattr(rewrite, "READ_AHEAD", 2)
    # Only the PostgreSQL case needs (and starts) the server.
    sqlite = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    url = request.getfixturevalue("pg_url") if backend == "postgres" else sqlite
    config = queue_config(make_config(), url, tmp_path)
    posts = tmp_path / "posts"
    posts.mkdir()
    shas = {}
    for i in range(5):
        source = f"http://h{i}.example/{i}.png"
        (posts / f"p{i}.md").write_text(
            f'---\ntitle: p{i}\n---\n<img src="{PROXY}{source}">\n', encoding="utf-8"
        )
        shas[i] = hashlib.sha256(source.encode()).hexdigest()
    results = [
        SourceResult(f"http://h{i}.example/{i}.png", "mirrored", sha256=shas[i], ext="png", size=9)
        for i in range(4)
    ]
    results.append(SourceResult("http://h4.example/4.png", "failed", reason="http-404"))
    async with open_manifest(config) as manifest:
        await manifest.record_results(
            dataclasses.replace(r, attempted_at=time.time()) for r in results
        )
        before = (posts / "p4.md").read_bytes()
        summary = await rewrite.rewrite_posts(config, [posts], manifest, RunSummary())
    assert (5, 4) == (summary.posts, summary.rewritten)
    assert Counter({"mirrored": 4, "failed": 1}) == summary.statuses
    for i in range(4):
        text = (posts / f"p{i}.md").read_text(encoding="utf-8")
        assert f"{shas[i]}.png" in text, text
        assert PROXY not in text
    assert before == (posts / "p4.md").read_bytes()
