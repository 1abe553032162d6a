"""
Worker processes (``mirror worker``) against a real PostgreSQL: a SIGKILLed worker's tasks are
queued again once its heartbeat is older than the configured ``queue.stalled_after``, and
``mirror status`` / ``mirror run --workers`` on the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from mirror.queue.status import pending
from tests.test_queue import DOING_COUNT, POLLS, queue_sources, rows, write_posts

CHECKOUT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, pg_url: str, upstream: Any) -> Path:
    """Write a config.toml for worker processes: the local origin, the store, quick heartbeats."""
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[fetch]
sources = ["origin"]
attempts = 1
backoff_initial = 0.01
backoff_max = 0.05
[network]
connect_to = ["{upstream.connect_to}"]
[store]
path = "{tmp_path / "cache"}"
create = true
[manifest]
url = "{pg_url}"
[queue]
heartbeat = 0.2
stalled_after = 1.0
poll_interval = 0.05
""",
        encoding="utf-8",
    )
    return path


def mirror(*args: str) -> subprocess.Popen[bytes]:
    """Start ``mirror ARGS`` from this checkout."""
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    command = [sys.executable, "-m", "mirror", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def count(pg_url: str, query: str) -> int:
    """Return the one number ``query`` selects."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        row = await (await conn.execute(query)).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


async def until(pg_url: str, query: str, wanted: int, proc: subprocess.Popen[bytes]) -> None:
    """Poll ``query`` until it counts ``wanted`` (bounded by POLLS; a dead ``proc`` fails)."""
    for _ in range(POLLS):
        if await count(pg_url, query) == wanted:
            return
        assert proc.poll() is None, proc.communicate()
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted}: {query}")


def alive(pid: int) -> bool:
    """Tell whether process ``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


async def test_a_sigkilled_workers_tasks_are_retried(
    pg_url: str, tmp_path: Path, upstream: Any, make_config: Any
) -> None:
    """A worker killed with SIGKILL mid-request has its tasks run again by another worker."""
    config_path = write_config(tmp_path, pg_url, upstream)
    from mirror.config import load_config

    config = load_config(config_path)
    urls = [upstream.url(f"/stall?seconds=30&n={n}") for n in range(2)]
    await queue_sources(config, write_posts(tmp_path / "posts", urls))
    first = mirror("worker", "--config", str(config_path), "--concurrency", "2")
    second = None
    try:
        await until(pg_url, DOING_COUNT, 2, first)
        for _ in range(POLLS):
            if len(upstream.hits) == 2:
                break
            await asyncio.sleep(0.05)
        assert 2 == len(upstream.hits)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        upstream.release.set()
        second = mirror("worker", "--config", str(config_path), "--concurrency", "2")
        done = "SELECT count(*) FROM sources WHERE status = 'mirrored'"
        await until(pg_url, done, 2, second)
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                proc.communicate(timeout=30)
    assert {u: ("mirrored", None) for u in urls} == rows(pg_url)
    assert [2, 2] == [upstream.hits[u.removeprefix("http://origin.example")] for u in urls]
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        assert 0 == await pending(conn)
    # One task of both sources (one host), run twice: no task of its own for a retry.
    assert 1 == await count(pg_url, "SELECT count(*) FROM procrastinate_jobs")
    # Both serve the same image: one object, content-addressed.
    assert 1 == len(list((tmp_path / "cache").rglob("*.png")))


async def test_status_shows_hosts_and_workers(pg_url: str, tmp_path: Path, upstream: Any) -> None:
    """`mirror status --json` counts the queued sources per host and a live worker."""
    config_path = write_config(tmp_path, pg_url, upstream)
    from mirror.config import load_config

    config = load_config(config_path)
    urls = [upstream.url("/img.png"), upstream.url("/stall?seconds=30")]
    await queue_sources(config, write_posts(tmp_path / "posts", urls))
    worker = mirror("worker", "--config", str(config_path), "--concurrency", "1")
    try:
        await until(pg_url, "SELECT count(*) FROM sources", 1, worker)
        await until(pg_url, DOING_COUNT, 2, worker)
        status = mirror("status", "--config", str(config_path), "--json")
        out, err = status.communicate(timeout=60)
        assert 0 == status.returncode, err
        report = json.loads(out)
        table = mirror("status", "--config", str(config_path))
        text, _ = table.communicate(timeout=60)
    finally:
        upstream.release.set()
        worker.terminate()
        worker.communicate(timeout=30)
    hosts = {h["host"]: h for h in report["hosts"]}
    assert (0, 1, 1, 0) == tuple(
        hosts["origin.example"][k] for k in ("queued", "running", "done", "failed")
    )
    assert [worker.pid] == [w["pid"] for w in report["workers"]]
    assert b"origin.example" in text


def test_run_workers_needs_postgresql(tmp_path: Path) -> None:
    """`mirror run --workers 2` over a SQLite manifest exits 2 and says what to set."""
    from mirror.cli import main

    posts = write_posts(tmp_path / "posts", ["http://origin.example/img.png"])
    before = (posts / "a.md").read_bytes()
    status = main(["run", "--store", str(tmp_path / "cache"), "--workers", "2", str(posts)])
    assert 2 == status
    assert before == (posts / "a.md").read_bytes()


async def test_run_workers_rewrites_as_a_plain_run(
    pg_url: str, tmp_path: Path, upstream: Any
) -> None:
    """
    `mirror run --workers 2 --report` over PostgreSQL leaves the posts, and writes the report,
    as one plain run on SQLite does; the folder it filled is a store to every other command.
    """
    from mirror.marker import is_store

    config_path = write_config(tmp_path, pg_url, upstream)
    urls = [upstream.url("/img.png"), upstream.url("/img.jpg"), upstream.url("/status/404")]
    queued = write_posts(tmp_path / "queued", urls)
    plain = write_posts(tmp_path / "plain", urls)
    report = tmp_path / "queued.jsonl"
    run = mirror(
        "run", "--config", str(config_path), "--workers", "2", "--report", str(report), str(queued)
    )
    _, err = await asyncio.to_thread(run.communicate, timeout=120)
    sqlite = tmp_path / "sqlite.toml"
    text = config_path.read_text(encoding="utf-8")
    sqlite.write_text(text.replace(f'url = "{pg_url}"', 'url = ""'), encoding="utf-8")
    report2 = tmp_path / "plain.jsonl"
    store2 = str(tmp_path / "cache2")
    single = mirror(
        "run", "--config", str(sqlite), "--store", store2, "--report", str(report2), str(plain)
    )
    _, err2 = await asyncio.to_thread(single.communicate, timeout=120)
    assert run.returncode == single.returncode, (err, err2)
    expected = (plain / "a.md").read_bytes()
    assert expected == (queued / "a.md").read_bytes()
    assert b"/img.png" not in expected
    lines = report.read_text(encoding="utf-8").splitlines()
    assert report2.read_text(encoding="utf-8").splitlines() == lines
    assert 3 == len(lines)
    assert is_store(tmp_path / "cache")
    # The same summary but for who fetched: "... 1 post rewritten; fetched by 2 workers in".
    said, said2 = err.decode().splitlines(), err2.decode().splitlines()
    assert said[0].rsplit("; ", 1)[0] == said2[0].rsplit("; ", 1)[0]
    assert "; fetched by 2 workers in " in said[0]
    assert said[1:] == said2[1:]
    assert "  not mirrored, by reason: http-404 1" in said
    assert {
        urls[0]: ("mirrored", None),
        urls[1]: ("mirrored", None),
        urls[2]: ("failed", "http-404"),
    } == rows(pg_url)


def test_run_workers_refuses_what_the_queue_cannot_honour(tmp_path: Path) -> None:
    """Options the queue has no answer for are refused by name, before any connection."""
    from mirror.cli import main

    posts = write_posts(tmp_path / "posts", ["http://origin.example/img.png"])
    config = tmp_path / "config.toml"
    # Nothing listens there: the refusal comes first.
    config.write_text('[manifest]\nurl = "postgresql://mirror@127.0.0.1:1/mirror"\n')
    base = ["run", "-c", str(config), "--workers", "1"]
    for extra in (["--refresh-after", "30d"], ["--only-failed"], ["--retry-reason", "http-404"]):
        assert 2 == main([*base, *extra, str(posts)])
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "notes.txt").write_text("mine")
    assert 2 == main([*base, "--store", str(tmp_path / "notastore"), str(posts)])
    assert ["notes.txt"] == [p.name for p in (tmp_path / "notastore").iterdir()]


async def test_run_workers_killed_takes_its_workers_along(
    pg_url: str, tmp_path: Path, upstream: Any
) -> None:
    """A `mirror run --workers 1` killed with SIGKILL leaves no worker process behind."""
    config_path = write_config(tmp_path, pg_url, upstream)
    posts = write_posts(tmp_path / "posts", [upstream.url("/stall?seconds=30")])
    from mirror.config import load_config
    from mirror.queue.worker import open_queue

    await open_queue(load_config(config_path))
    run = mirror("run", "--config", str(config_path), "--workers", "1", str(posts))
    try:
        await until(pg_url, DOING_COUNT, 1, run)
        pid = await count(pg_url, "SELECT pid FROM queue_workers")
        run.send_signal(signal.SIGKILL)
        await asyncio.to_thread(run.communicate, timeout=30)
        upstream.release.set()
        for _ in range(POLLS):
            if not alive(pid):
                break
            await asyncio.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the worker outlived its run")
    finally:
        upstream.release.set()
        if run.returncode is None:
            run.kill()
            run.communicate(timeout=30)
