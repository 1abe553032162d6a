"""``mirror serve`` as a real process: graceful SIGTERM, and several workers acting as one."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from mirror.config import Config, ServeConfig, StoreConfig
from mirror.workers import CONFIG_ENV, OWNER_ENV

if TYPE_CHECKING:
    from conftest import Upstream

BANNER = re.compile(rb"serving on http://127\.0\.0\.1:(\d+)/")
ACCESS_LINE = re.compile(
    rb'^127\.0\.0\.1 - - \[[^]]+\] "GET /\S* HTTP/1\.1" \d{3} .* reason=\S+ time=[\d.]+$'
)


def write_config(path: Path, upstream: Upstream, store: Path, serve: str = "") -> Path:
    """A config file reaching ``upstream`` by its public name, with quick failure timings."""
    path.write_text(
        f"""
[fetch]
attempts = 1
connect_timeout = 2.0
read_timeout = 5.0
total_timeout = 10.0
[network]
connect_to = ["{upstream.connect_to}"]
[store]
path = "{store}"
[serve]
open = true
{serve}
""",
        encoding="utf-8",
    )
    return path


async def _port(process: asyncio.subprocess.Process) -> int:
    assert process.stderr is not None
    async with asyncio.timeout(30):
        # Bounded by the timeout: the banner is the first line mirror writes.
        while True:
            line = await process.stderr.readline()
            if not line:
                raise AssertionError("mirror serve exited before listening")
            match = BANNER.search(line)
            if match is not None:
                return int(match[1])


@contextlib.asynccontextmanager
async def serving(
    config: Path, *extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """Start ``mirror serve`` on a free port; kill it at the end if the test did not stop it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mirror",
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        *extra,
        stderr=subprocess.PIPE,
    )
    try:
        yield process, await _port(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


async def until_workers_listen(
    session: aiohttp.ClientSession, base: str, process: asyncio.subprocess.Process, count: int
) -> list[int]:
    """Wait (bounded) until /healthz answers and the owner has ``count`` workers; return them."""
    for _ in range(200):  # bounded: until both workers listen
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base}/healthz") as response:
                if response.status == 200 and len(children(process.pid)) == count:
                    break
        await asyncio.sleep(0.05)
    workers = children(process.pid)
    assert count == len(workers)
    return workers


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_sigterm_lets_a_request_in_progress_finish(
    upstream: Upstream, tmp_path: Path, png_bytes: bytes
) -> None:
    """SIGTERM stops listening but the request being fetched still gets its image."""
    config = write_config(tmp_path / "config.toml", upstream, tmp_path / "cache")
    async with serving(config) as (process, port), aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/?{upstream.url('/slow?seconds=1')}"
        request = asyncio.ensure_future(session.get(url))
        for _ in range(100):  # bounded: until the origin sees the fetch
            if upstream.hits["/slow?seconds=1"]:
                break
            await asyncio.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        response = await request
        assert (200, png_bytes) == (response.status, await response.read())
        async with asyncio.timeout(20):
            assert 0 == await process.wait()


async def test_workers_share_one_fetch_and_sum_their_metrics(
    upstream: Upstream, tmp_path: Path, png_bytes: bytes
) -> None:
    """Two workers: single flight across processes, /metrics sums both, SIGTERM stops all."""
    config = write_config(tmp_path / "config.toml", upstream, tmp_path / "cache")
    async with serving(config, "--workers", "2", "-v") as (process, port):
        base = f"http://127.0.0.1:{port}"
        # A new connection per request, so the kernel spreads them over both workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            workers = await until_workers_listen(session, base, process, 2)
            path = "/slow?seconds=0.5"

            async def get() -> tuple[int, bytes]:
                async with session.get(f"{base}/?{upstream.url(path)}") as response:
                    return response.status, await response.read()

            results = await asyncio.gather(*(get() for _ in range(16)))
            assert [(200, png_bytes)] * 16 == results
            assert 1 == upstream.hits[path]
            want = 'mirror_requests_total{route="proxy",status="200"} 16'
            text = ""
            async with asyncio.timeout(30):
                # Bounded by the timeout: each worker reports its counters at its next heartbeat.
                while True:
                    async with session.get(f"{base}/metrics") as response:
                        text = await response.text()
                    if want in text.splitlines():
                        break
                    await asyncio.sleep(0.1)
        assert want in text.splitlines()
        assert "mirror_upstream_fetches_total" in text
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert 0 == await process.wait()
        assert process.stderr is not None
        logged = (await process.stderr.read()).splitlines()
    # The owner waits for its workers before it exits, so none may be left.
    assert not [pid for pid in workers if alive(pid)]
    # -v turns the access log on in one process only: workers log where they are told to.
    assert [] == [line for line in logged if ACCESS_LINE.match(line)]


async def test_verbose_single_process_logs_access_to_stderr(
    upstream: Upstream, tmp_path: Path, png_bytes: bytes
) -> None:
    """mirror serve -v writes one access line per request to stderr, reason and time included."""
    config = write_config(tmp_path / "config.toml", upstream, tmp_path / "cache")
    async with serving(config, "-v") as (process, port), aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{port}"
        async with session.get(f"{base}/?{upstream.url('/img.png')}") as response:
            assert (200, png_bytes) == (response.status, await response.read())
        async with session.get(f"{base}/?{upstream.url('/status/404')}") as response:
            assert 404 == response.status
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert 0 == await process.wait()
        assert process.stderr is not None
        logged = [line for line in (await process.stderr.read()).splitlines()]
    access = [line for line in logged if ACCESS_LINE.match(line)]
    assert 2 == len(access), logged
    assert b'" 200 ' in access[0]
    assert b" reason=-" in access[0]
    assert b'" 404 ' in access[1]
    assert b" reason=http-404 " in access[1]


async def test_workers_append_to_one_access_log(
    upstream: Upstream, tmp_path: Path, png_bytes: bytes
) -> None:
    """With serve.access_log = FILE every worker appends its lines there, whole lines only."""
    log_file = tmp_path / "access.log"
    config = write_config(
        tmp_path / "config.toml", upstream, tmp_path / "cache", f'access_log = "{log_file}"'
    )
    async with serving(config, "--workers", "2") as (process, port):
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            base = f"http://127.0.0.1:{port}"
            await until_workers_listen(session, base, process, 2)
            url = f"{base}/?{upstream.url('/img.png')}"

            async def get() -> int:
                async with session.get(url) as response:
                    await response.read()
                    return response.status

            assert [200] * 40 == await asyncio.gather(*(get() for _ in range(40)))
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert 0 == await process.wait()
    lines = [line for line in log_file.read_bytes().splitlines() if b"/healthz" not in line]
    assert 40 == len(lines)
    assert all(ACCESS_LINE.match(line) for line in lines), lines


def test_worker_whose_owner_died_while_it_started_stops(tmp_path: Path) -> None:
    """A worker started for an owner that is already gone stops at once instead of serving on."""
    config = dataclasses.replace(
        Config(),
        store=StoreConfig(path=str(tmp_path / "cache")),
        serve=ServeConfig(port=0, workers=2),
    )
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    env = {
        **os.environ,
        CONFIG_ENV: json.dumps(dataclasses.asdict(config)),
        OWNER_ENV: dead.stdout.strip(),
    }
    socket_path = str(tmp_path / "owner.sock")  # nobody listens: the owner is gone
    command = [sys.executable, "-m", "mirror", "serve", "--worker-of", socket_path]
    result = subprocess.run(command, env=env, capture_output=True, timeout=60, check=False)
    assert 0 == result.returncode, result.stderr


def test_unwritable_access_log_is_a_usage_error(tmp_path: Path) -> None:
    """An access log that cannot be opened stops serve before it listens, naming the key."""
    config = tmp_path / "config.toml"
    config.write_text(f'[serve]\naccess_log = "{tmp_path}/missing/access.log"\n')
    command = [sys.executable, "-m", "mirror", "serve", "--config", str(config)]
    command += ["--port", "0", "--store", str(tmp_path / "cache"), "--create"]
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert 2 == result.returncode
    assert b"serve.access_log" in result.stderr


def test_worker_count_is_validated(tmp_path: Path) -> None:
    """--workers 0 is a usage error naming the key, before anything listens."""
    result = subprocess.run(
        [sys.executable, "-m", "mirror", "serve", "--workers", "0", "--store", str(tmp_path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert 2 == result.returncode
    assert b"serve.workers" in result.stderr


@pytest.fixture(autouse=True)
def no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy variables of the machine must not reroute the server's fetches."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
