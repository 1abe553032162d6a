"""
Issue #12 §5 on one machine: PostgreSQL + S3 + 3 workers over generated posts with faulty
origins, one worker killed with SIGKILL mid-run, against one uninterrupted ``mirror run`` on
SQLite and a local folder. The end state must be the same: the posts after the rewrite, the
objects, the manifest's rows; no source lost, and no source fetched again except those the
killed worker had in flight.

``queue.stalled_after`` is 8 s: on a loaded 2-CPU machine a live worker's heartbeat was seen
more than 3 s late, and procrastinate then takes its running tasks for a dead worker's. That
once made a second worker fetch a source the first still fetched (the fetch-count assertion
below caught it); since tasks claim their sources (mirror/queue/claims.py) the second waits
instead, which tests/test_queue.py checks on its own. 8 s keeps this test about the kill.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from mirror.config import Config, load_config
from mirror.manifest import open_manifest
from mirror.store import open_store
from tests.test_queue import DOING

CHECKOUT = Path(__file__).resolve().parent.parent
PROXY = "https://cors.zfour.workers.dev/?"
GOOD = ("good-a.example", "good-b.example")
HOSTS = (*GOOD, "flaky.example", "gone.example", "hotlink.example", "reset.example")
POLLS = 1200  # x 0.05 s: a bound on every wait, never a pause


def image(host: str, n: int, size: tuple[int, int] = (60, 40)) -> bytes:
    """A distinct JPEG per host and number."""
    out = io.BytesIO()
    shade = (sum(host.encode()) * 7 + n * 29) % 256
    Image.new("RGB", size, (shade, n * 13 % 256, 90)).save(out, "JPEG")
    return out.getvalue()


@dataclass
class Origins:
    """Every origin host on one local server, told apart by the Host header."""

    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    # Armed: good-host requests after the first ``gate_after`` wait for ``release``.
    gate_after: int | None = None
    held: set[str] = field(default_factory=set)
    # The client port of each held request, to find the worker process that sent it.
    peers: dict[int, str] = field(default_factory=dict)
    # Every request being answered now, by key.
    active: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def reset(self) -> None:
        """Forget the hits (so the flaky host fails each URL once again) and disarm the gate."""
        self.hits.clear()
        self.held.clear()
        self.peers.clear()
        self.gate_after = None

    def open_gate(self) -> None:
        assert self.loop is not None
        assert self.release is not None
        self.loop.call_soon_threadsafe(self.release.set)


@pytest.fixture
def origins() -> Iterator[Origins]:
    """The origins on their own thread and loop (the commands run as subprocesses)."""
    state = Origins()

    async def handle(request: web.Request) -> web.StreamResponse:
        key = request.host.split(":")[0] + request.path
        state.hits[key] += 1
        state.active[key] += 1
        try:
            return await answer(request, key)
        finally:
            state.active[key] -= 1

    async def answer(request: web.Request, key: str) -> web.StreamResponse:
        host = key.split("/")[0]
        n = int(request.path.rsplit("/", 1)[-1].split(".")[0])
        if host in GOOD:
            good = sum(v for k, v in state.hits.items() if k.split("/")[0] in GOOD)
            if state.gate_after is not None and good > state.gate_after:
                assert state.release is not None
                state.held.add(key)
                assert request.transport is not None
                state.peers[request.transport.get_extra_info("peername")[1]] = key
                await state.release.wait()
            return web.Response(body=image(host, n), content_type="image/jpeg")
        if host == "flaky.example" and state.hits[key] == 1:
            return web.Response(status=500)
        if host == "flaky.example":
            return web.Response(body=image(host, n), content_type="image/jpeg")
        if host == "hotlink.example":  # the placeholder: another image, answered 200
            return web.Response(body=image(host, 0, (10, 10)), content_type="image/jpeg")
        if host == "reset.example":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    loop = asyncio.new_event_loop()
    server = TestServer(app, host="127.0.0.1")
    loop.run_until_complete(server.start_server())
    assert server.port is not None
    state.port, state.loop = server.port, loop
    state.release = asyncio.Event()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.open_gate()
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def sources() -> list[str]:
    counts = {"good-a.example": 30, "good-b.example": 30, "flaky.example": 8}
    return [f"http://{host}/img/{n}.jpg" for host in HOSTS for n in range(counts.get(host, 4))]


def write_posts(folder: Path) -> set[str]:
    """40 posts in the aggregator's shape, each naming 4 sources (many shared); return those."""
    folder.mkdir(parents=True)
    every = sources()
    named: set[str] = set()
    for i in range(40):
        mine = [every[(i * 7 + k * 11) % len(every)] for k in range(4)]
        named.update(mine)
        body = "".join(f'<p><img src="{PROXY}{s}" data-size="60,40"></p>\n' for s in mine[1:])
        text = f"---\ntitle: post {i}\nheadimg: '{PROXY}{mine[0]}'\n---\n{body}"
        (folder / f"post-{i:02}.md").write_text(text, encoding="utf-8")
    return named


def write_config(path: Path, origins: Origins, store: str, extra: str = "") -> Path:
    connect = ", ".join(f'"{h}:80:127.0.0.1:{origins.port}"' for h in HOSTS)
    path.write_text(
        f"""
[fetch]
sources = ["origin"]
attempts = 2
backoff_initial = 0.0
backoff_max = 0.01
per_host = 4
[network]
connect_to = [{connect}]
[rewrite]
base_url = "/mirror/"
[store]
{store}
{extra}
""",
        encoding="utf-8",
    )
    return path


def mirror(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    command = [sys.executable, "-m", "mirror", *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


async def end_state(config: Config) -> tuple[dict[str, tuple[Any, ...]], set[str]]:
    """The manifest's rows by source, and the objects the store holds."""
    async with open_manifest(config, readonly=True) as manifest:
        rows = await manifest.get_many(sources())
    async with open_store(config) as store:
        objects = {f"{info.sha256}.{info.ext}" async for info in store.objects()}
    return {s: (r.status, r.sha256, r.ext, r.reason) for s, r in rows.items()}, objects


async def running_tasks(pg_url: str) -> set[str]:
    """The sources of the queue's running tasks, as origin keys (host + path)."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        found = await conn.execute(DOING)
        return {str(source).removeprefix("http://") for (source,) in await found.fetchall()}


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the run's workers)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    return [int(child) for child in text.split()]


def socket_owner(port: int, pids: list[int]) -> int | None:
    """The pid among ``pids`` whose TCP socket has local port ``port``, or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text(encoding="utf-8").splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if str(fd.readlink()) in inodes:
                    return pid
            except OSError:
                continue  # closed meanwhile
    return None


def held_by(origins: Origins, pids: list[int]) -> dict[int, set[str]]:
    """The held requests by the worker process that sent them."""
    found: dict[int, set[str]] = {}
    for port, key in list(origins.peers.items()):
        owner = socket_owner(port, pids)
        if owner is not None:
            found.setdefault(owner, set()).add(key)
    return found


async def test_three_workers_one_killed_end_as_one_uninterrupted_run(
    tmp_path: Path, origins: Origins, pg_url: str, s3_bucket: Any
) -> None:
    """The cluster's end state equals one `mirror run` on SQLite, kill -9 or not."""
    # A: one process, SQLite and a local folder, nothing interrupted.
    named = write_posts(tmp_path / "a" / "posts")
    conf_a = write_config(tmp_path / "a.toml", origins, f'path = "{tmp_path / "a" / "cache"}"')
    run_a = mirror("run", "--config", str(conf_a), str(tmp_path / "a" / "posts"))
    _, err_a = run_a.communicate(timeout=300)
    assert 1 == run_a.returncode, err_a  # some sources failed, as they should
    hits_a = Counter(origins.hits)
    origins.reset()

    # B: PostgreSQL + S3, three workers; one is SIGKILLed while every good request hangs.
    await s3_bucket.create()
    write_posts(tmp_path / "b" / "posts")
    store = (
        f'url = "s3://{s3_bucket.name}/m"\nstaging = "{tmp_path / "staging"}"\n'
        f'[store.s3]\nendpoint_url = "{s3_bucket.endpoint}"\naddressing = "path"'
    )
    queue = (
        f'[manifest]\nurl = "{pg_url}"\n'
        "[queue]\nheartbeat = 0.25\nstalled_after = 8.0\npoll_interval = 0.05"
    )
    conf_b = write_config(tmp_path / "b.toml", origins, store, queue)
    origins.gate_after = 6
    run_b = mirror("run", "--workers", "3", "--config", str(conf_b), str(tmp_path / "b" / "posts"))
    try:
        for _ in range(POLLS):
            if len(origins.held) >= 4:
                break
            assert run_b.poll() is None, run_b.communicate()
            await asyncio.sleep(0.05)
        assert len(origins.held) >= 4
        # The victim is a worker with a request at the origin now: its tasks die mid-fetch.
        owners = held_by(origins, children(run_b.pid))
        assert owners, origins.peers
        victim = min(owners)
        os.kill(victim, signal.SIGKILL)
        cut = owners[victim]
        # What any worker had at the origin when the victim died (held or still answering),
        # and every task running then (the victim's stay "doing" until they are retried).
        in_flight = {key for key, n in origins.active.items() if n > 0}
        in_flight |= await running_tasks(pg_url)
        origins.open_gate()
        _, err_b = run_b.communicate(timeout=300)
    finally:
        if run_b.returncode is None:
            run_b.kill()
            run_b.communicate()
    assert run_a.returncode == run_b.returncode, (err_a, err_b)

    # The posts after the rewrite, byte for byte.
    for post in sorted((tmp_path / "a" / "posts").iterdir()):
        assert post.read_bytes() == (tmp_path / "b" / "posts" / post.name).read_bytes(), post
    # The rows and the objects.
    rows_a, objects_a = await end_state(load_config(conf_a))
    rows_b, objects_b = await end_state(load_config(conf_b))
    assert named == set(rows_a)  # no source lost
    assert rows_a == rows_b
    assert objects_a == objects_b
    assert {"mirrored", "failed"} == {row[0] for row in rows_a.values()}
    assert {"http-404", "size-mismatch"} <= {row[3] for row in rows_a.values()}
    # Stored once: no mirrored source fetched again but those in flight when the worker died;
    # each request the kill cut was made again, once. (The failing hosts' retries may differ:
    # their outcome, not their request count, is what must match.)
    mirrored = {s.removeprefix("http://") for s, row in rows_a.items() if row[0] == "mirrored"}
    again = {key for key in mirrored if origins.hits[key] != hits_a[key]}
    assert again <= in_flight, {k: (hits_a[k], origins.hits[k]) for k in again - in_flight}
    twice = {k: (hits_a[k], origins.hits[k]) for k in again if origins.hits[k] != hits_a[k] + 1}
    assert not twice, (twice, err_b[-3000:])
    assert cut <= again, "a request the kill cut was not made again"
