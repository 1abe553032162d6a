"""
The scheduled job and the archive rescue: the stat fast path, backoff and the circuit breaker
(with a fake clock), the sources after origin and proxy (https, alternates, a Wayback Machine
answering through connect_to), request profiles, --only-failed, on_failure, --refresh-after,
the store lock with two processes, --every, and flat memory as the archive grows.

The tests taking ``manifest_url`` run twice: over the store's own SQLite file and over a fresh
PostgreSQL database (the ``fetch``/``run`` path is the same code on both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trustme
from aiohttp import web
from conftest import threaded_server
from PIL import Image
from s3_server import S3Bucket

from mirror.cli import main
from mirror.config import ProfileConfig, load_config
from mirror.downloader import Outcome
from mirror.errors import ExitStatus
from mirror.manifest import Manifest, SourceRow, manifest_exists, manifest_path, open_manifest
from mirror.pipeline import Job

WRAP = "http://proxy.example/?"
ETAG = '"v1"'
CAPTURE = "20220129101500"


def jpeg(n: int, size: tuple[int, int] = (60, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (n % 256, n // 256 % 256, 7)).save(out, "JPEG")
    return out.getvalue()


@dataclasses.dataclass
class Net:
    """The local servers: plain HTTP and TLS, answering by Host header for several names."""

    http: int = 0
    https: int = 0
    cacert: str = ""
    hits: Counter[str] = dataclasses.field(default_factory=Counter)
    headers: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    # /stall/ answers once this is set (at teardown at the latest): an event, not a sleep.
    release: threading.Event = dataclasses.field(default_factory=threading.Event)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    state = Net()

    async def handle(request: web.Request) -> web.StreamResponse:
        host = request.host.split(":")[0]
        scheme = "https" if request.secure else "http"
        key = f"{scheme}://{host}{request.path_qs}"
        state.hits[key] += 1
        state.headers[key] = dict(request.headers)
        path = request.path
        number = int(re.sub(r"\D", "", path) or "0")
        if host == "web.archive.org":
            if "archived" not in request.path_qs:
                return web.Response(status=404)
            if not path.startswith(f"/web/{CAPTURE}id_/"):
                # As the real one does: the asked-for moment redirects to the nearest capture.
                raise web.HTTPFound(re.sub(r"^/web/\d+id_/", f"/web/{CAPTURE}id_/", path))
            return web.Response(body=jpeg(900), content_type="image/jpeg")
        if host != "origin.example":
            return web.Response(status=404)  # the proxy is dead in this file
        if path.startswith("/good/"):
            if request.headers.get("If-None-Match") == ETAG:
                return web.Response(status=304, headers={"ETag": ETAG})
            return web.Response(
                body=jpeg(number), content_type="image/jpeg", headers={"ETag": ETAG}
            )
        if path.startswith("/https-only/") and request.secure:
            return web.Response(body=jpeg(number), content_type="image/jpeg")
        if path.startswith("/referer/"):
            if request.headers.get("Referer") == "http://origin.example/":
                return web.Response(body=jpeg(number), content_type="image/jpeg")
            return web.Response(status=403)
        if path.startswith("/503/"):
            return web.Response(status=503)
        if path.startswith("/stall/"):
            await asyncio.to_thread(state.release.wait, 60)
            return web.Response(body=jpeg(number), content_type="image/jpeg")
        if path.startswith("/html/"):
            return web.Response(text="<html>no</html>", content_type="text/html")
        return web.Response(status=404)

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("origin.example", "web.archive.org").configure_cert(context)
    cacert = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cacert))
    state.cacert = str(cacert)
    plain, secure = web.Application(), web.Application()
    for app in (plain, secure):
        app.router.add_route("GET", "/{tail:.*}", handle)
    with threaded_server(plain) as http, threaded_server(secure, context) as https:
        state.http, state.https = http, https
        try:
            yield state
        finally:
            state.release.set()


@pytest.fixture(params=["sqlite", "postgres"])
def manifest_url(request: pytest.FixtureRequest) -> str:
    """Each backend: "" (the store's own SQLite file) or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_url"))


def config_file(
    tmp_path: Path,
    net: Net,
    extra: str = "",
    *,
    manifest: str = "",
    store: str | None = None,
    read_timeout: float = 2.0,
) -> Path:
    """The test's config.toml; ``manifest`` is [manifest] url, ``store`` the [store] table."""
    path = tmp_path / "config.toml"
    path.write_text(
        "[scan]\nwrappers = ['^http://proxy\\.example/\\?(?P<url>.+)$']\n"
        f"[fetch]\nbackoff_initial = 0.0\nattempts = 1\nread_timeout = {read_timeout}\n"
        f"{extra}\n"
        "[network]\n"
        f"cacert = '{net.cacert}'\n"
        f"connect_to = ['origin.example:80:127.0.0.1:{net.http}', "
        f"'proxy.example:80:127.0.0.1:{net.http}', "
        f"'origin.example:443:127.0.0.1:{net.https}', "
        f"'web.archive.org:443:127.0.0.1:{net.https}']\n"
        + (f"[manifest]\nurl = '{manifest}'\n" if manifest else "")
        + (store if store is not None else f"[store]\npath = '{tmp_path / 'cache'}'\n"),
        encoding="utf-8",
    )
    return path


def source_row(config: Path, source: str) -> SourceRow | None:
    """The manifest's row for ``source``, read through the seam (either backend)."""

    async def get() -> SourceRow | None:
        async with open_manifest(load_config(config), readonly=True) as manifest:
            return await manifest.get(source)

    return asyncio.run(get())


def host_profile(config: Path, host: str) -> str | None:
    """The request profile the manifest remembers for ``host`` (either backend)."""

    async def get() -> str | None:
        async with open_manifest(load_config(config), readonly=True) as manifest:
            return await manifest.host_profile(host)

    return asyncio.run(get())


def post(*paths: str, date: str = "2022-01-31 07:43:00", extra: str = "") -> str:
    body = "".join(
        f'<p><img src="{WRAP}http://origin.example{p}" referrerpolicy="no-referrer"></p>'
        for p in paths
    )
    return f"---\ntitle: t\ndate: {date}\n---\n\n<div>{body}{extra}</div>\n"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_job(config: Path, posts: Path, clock: Clock | None = None, **kwargs: Any) -> Any:
    job = Job(load_config(config), rewrite=True, clock=clock or time.time, **kwargs)
    return asyncio.run(job.run([posts]))


def rows(tmp_path: Path) -> dict[str, Any]:
    with Manifest(manifest_path(tmp_path / "cache"), readonly=True) as manifest:
        sources = [r[0] for r in manifest.conn.execute("SELECT source FROM sources")]
        return manifest.get_many(sources)


# --- incremental -----------------------------------------------------------------------------


def test_unchanged_posts_are_not_read_again(
    tmp_path: Path, net: Net, monkeypatch: pytest.MonkeyPatch, manifest_url: str
) -> None:
    """Second run: nothing parsed or fetched; a touched post is hashed only; an edit is parsed."""
    config = config_file(tmp_path, net, manifest=manifest_url)
    posts = tmp_path / "posts"
    posts.mkdir()
    for n in range(3):
        (posts / f"p{n}.md").write_text(post(f"/good/{n}.jpg"), encoding="utf-8")
    assert ExitStatus.OK == main(["run", "--config", str(config), "-q", str(posts)])
    for n in range(3):
        text = (posts / f"p{n}.md").read_text(encoding="utf-8")
        assert re.search(r'src="/mirror/[0-9a-f]{2}/[0-9a-f]{64}\.jpg"', text)
        assert WRAP not in text
    assert (3, 3) == (sum(net.hits.values()), len(_objects(config)))
    parsed: list[str] = []
    real = Job.__init__

    def spy(self: Job, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        extractor = self.extractor

        def counting(text: str, rel: str) -> Any:
            parsed.append(rel)
            return extractor(text, rel)

        self.extractor = counting  # type: ignore[assignment]

    monkeypatch.setattr(Job, "__init__", spy)
    hits = sum(net.hits.values())
    summary = run_job(config, posts)
    assert ([], 3, 3) == (parsed, summary.unchanged, summary.posts)
    assert hits == sum(net.hits.values())
    touched = posts / "p0.md"
    stat = touched.stat()
    # A later mtime set explicitly: a touch within the file system's timestamp granularity
    # might not change it, and waiting for the clock to move is what tests must not do.
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    new = posts / "p1.md"
    new.write_text(new.read_text(encoding="utf-8") + post("/good/7.jpg"), encoding="utf-8")
    (posts / "p9.md").write_text(post("/good/9.jpg"), encoding="utf-8")
    summary = run_job(config, posts)
    assert ["p1.md", "p9.md"] == sorted(parsed)
    assert 2 == summary.unchanged
    assert 1 == net.hits["http://origin.example/good/9.jpg"]
    assert ExitStatus.OK == summary.exit_status


def test_failures_back_off_with_a_fake_clock(tmp_path: Path, net: Net, manifest_url: str) -> None:
    """A failed URL waits failure_backoff, then twice that; the post is not even read meanwhile."""
    config = config_file(tmp_path, net, "failure_backoff = 600.0", manifest=manifest_url)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/dead/1.jpg"), encoding="utf-8")
    clock = Clock()
    url = "http://origin.example/dead/1.jpg"
    expected = [(0, 1), (100, 1), (599, 1), (601, 2), (601 + 1199, 2), (601 + 1201, 3)]
    for offset, hits in expected:
        clock.now = 1_800_000_000.0 + offset
        summary = run_job(config, posts, clock)
        assert hits == net.hits[url], offset
        assert ExitStatus.INCOMPLETE == summary.exit_status
    row = source_row(config, url)
    assert row is not None
    assert (3, "http-404") == (row.failures, row.reason)


def test_circuit_breaker_fails_fast_then_retries(tmp_path: Path, net: Net) -> None:
    """After host_failures 503s in a row the host's other images fail at once with host-down."""
    config = config_file(tmp_path, net, "host_failures = 3\njobs = 1\nper_host = 1")
    posts = tmp_path / "posts"
    posts.mkdir()
    for n in range(8):
        (posts / f"p{n}.md").write_text(post(f"/503/{n}.jpg"), encoding="utf-8")
    clock = Clock()
    run_job(config, posts, clock)
    asked = sum(n for key, n in net.hits.items() if "/503/" in key and key.startswith("http://o"))
    assert 3 == asked
    reasons = Counter(row.reason for row in rows(tmp_path).values())
    assert {"http-503": 3, "host-down": 5} == reasons
    clock.now += 1  # the next run: host-down ones are due at once, the 503s wait their backoff
    run_job(config, posts, clock)
    again = sum(n for key, n in net.hits.items() if "/503/" in key and key.startswith("http://o"))
    assert 6 == again


# --- more sources -----------------------------------------------------------------------------


def test_wayback_https_and_alternates(tmp_path: Path, net: Net) -> None:
    """Dead origin and proxy: https, the element's other URL, or the Wayback copy delivers."""
    config = config_file(
        tmp_path, net, 'sources = ["origin", "proxy", "https", "alternates", "wayback"]'
    )
    posts = tmp_path / "posts"
    posts.mkdir()
    alternate = (
        '<img src="'
        + WRAP
        + 'http://origin.example/dead/5.jpg" data-original="http://origin.example/good/5.jpg">'
    )
    (posts / "a.md").write_text(
        post("/dead/archived.jpg", "/https-only/3.jpg", extra=alternate), encoding="utf-8"
    )
    report = tmp_path / "r.jsonl"
    status = main(["run", "--config", str(config), "-q", "--report", str(report), str(posts)])
    assert ExitStatus.OK == status
    found = {
        r["source"]: (r["via"], r["fetched_from"])
        for r in map(json.loads, report.read_text(encoding="utf-8").splitlines())
    }
    archived = "http://origin.example/dead/archived.jpg"
    wayback = f"https://web.archive.org/web/20220131074300id_/{archived}"
    capture = f"https://web.archive.org/web/{CAPTURE}id_/{archived}"
    # fetched_from is the URL that delivered the bytes, after the Wayback Machine's redirect.
    assert ("wayback", capture) == found[archived]
    assert ("https", "https://origin.example/https-only/3.jpg") == found[
        "http://origin.example/https-only/3.jpg"
    ]
    assert ("alternates", "http://origin.example/good/5.jpg") == found[
        "http://origin.example/dead/5.jpg"
    ]
    assert (1, 1) == (net.hits[wayback], net.hits[capture])
    with Manifest(manifest_path(tmp_path / "cache"), readonly=True) as manifest:
        row = manifest.get(archived)
    assert row is not None
    assert ("wayback", capture) == (row.via, row.fetched_from)


def test_request_profiles_are_tried_on_403_and_remembered(
    tmp_path: Path, net: Net, manifest_url: str
) -> None:
    """A 403 tries the host's profiles in order; the one that worked goes first next time."""
    profiles = (
        '[[fetch.profiles]]\nname = "ua"\nuser_agent = "Other/1.0"\n'
        '[[fetch.profiles]]\nname = "home"\nhosts = ["origin.example"]\nreferer = "origin"\n'
    )
    config = config_file(tmp_path, net, manifest=manifest_url)
    config.write_text(config.read_text(encoding="utf-8") + profiles, encoding="utf-8")
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/referer/1.jpg"), encoding="utf-8")
    report = tmp_path / "r.jsonl"
    assert ExitStatus.OK == main(
        ["run", "--config", str(config), "--report", str(report), str(posts)]
    )
    first = json.loads(report.read_text(encoding="utf-8").splitlines()[0])
    assert "origin/home" == first["via"]
    assert "http://origin.example/referer/1.jpg" == first["fetched_from"]
    assert ["http-403", "http-403", "ok"] == [a["outcome"] for a in first["attempts"]]
    (posts / "b.md").write_text(post("/referer/2.jpg"), encoding="utf-8")
    assert ExitStatus.OK == main(["run", "--config", str(config), "-q", str(posts)])
    assert 1 == net.hits["http://origin.example/referer/2.jpg"]
    assert "http://origin.example/" == net.headers["http://origin.example/referer/2.jpg"]["Referer"]
    assert "home" == host_profile(config, "origin.example")
    assert isinstance(load_config(config).fetch.profiles[1], ProfileConfig)


def test_only_failed_and_retry_reason(tmp_path: Path, net: Net) -> None:
    """--retry-reason picks failures by reason and ignores their backoff; others wait."""
    config = config_file(tmp_path, net)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/dead/1.jpg", "/html/2.jpg", "/good/3.jpg"), encoding="utf-8")
    assert ExitStatus.INCOMPLETE == main(["run", "--config", str(config), "-q", str(posts)])
    opts = ["run", "--config", str(config), "-q", "--retry-reason", "http-404", str(posts)]
    main(opts)
    assert 2 == net.hits["http://origin.example/dead/1.jpg"]
    assert 1 == net.hits["http://origin.example/html/2.jpg"]
    main(["run", "--config", str(config), "-q", "--only-failed", str(posts)])
    assert (3, 2, 1) == (
        net.hits["http://origin.example/dead/1.jpg"],
        net.hits["http://origin.example/html/2.jpg"],
        net.hits["http://origin.example/good/3.jpg"],
    )


def test_on_failure_unwrap(tmp_path: Path, net: Net) -> None:
    """unwrap replaces a dead wrapper with its origin URL; mirrored ones get local URLs."""
    config = config_file(tmp_path, net)
    config.write_text(
        config.read_text(encoding="utf-8") + '[rewrite]\non_failure = "unwrap"\n', encoding="utf-8"
    )
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/dead/1.jpg", "/good/2.jpg"), encoding="utf-8")
    main(["run", "--config", str(config), "-q", str(posts)])
    text = (posts / "a.md").read_text(encoding="utf-8")
    assert '<img src="http://origin.example/dead/1.jpg"' in text
    assert "proxy.example" not in text
    assert re.search(r'src="/mirror/[0-9a-f]{2}/[0-9a-f]{64}\.jpg"', text)


def test_refresh_after_revalidates_with_a_conditional_request(tmp_path: Path, net: Net) -> None:
    """--refresh-after sends If-None-Match; the 304 downloads nothing and keeps the object."""
    config = config_file(tmp_path, net)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/good/1.jpg"), encoding="utf-8")
    main(["fetch", "--config", str(config), "-q", str(posts)])
    url = "http://origin.example/good/1.jpg"
    with Manifest(manifest_path(tmp_path / "cache")) as manifest:
        # An hour older than it is, instead of sleeping past --refresh-after.
        manifest.conn.execute("UPDATE sources SET last_attempt = last_attempt - 3600")
    before = rows(tmp_path)[url]
    assert ExitStatus.OK == main(
        ["fetch", "--config", str(config), "-q", "--refresh-after", "1s", str(posts)]
    )
    after = rows(tmp_path)[url]
    assert 2 == net.hits[url]
    assert ETAG == net.headers[url]["If-None-Match"]
    assert (before.sha256, "mirrored") == (after.sha256, after.status)
    assert after.last_attempt > before.last_attempt


# --- either backend ---------------------------------------------------------------------------


def _objects(config: Path) -> dict[str, str]:
    """Source -> sha256 of every mirrored source, read through the seam (either backend)."""

    async def get() -> dict[str, str]:
        async with open_manifest(load_config(config), readonly=True) as manifest:
            return {s: row.sha256 for row in await manifest.objects() for s in row.sources}

    return asyncio.run(get())


def test_fetch_then_run(tmp_path: Path, net: Net, manifest_url: str) -> None:
    """fetch mirrors and leaves the posts alone; run then rewrites them without a request."""
    config = config_file(tmp_path, net, manifest=manifest_url)
    posts = tmp_path / "posts"
    posts.mkdir()
    before = post("/good/1.jpg", "/good/2.jpg")
    (posts / "a.md").write_text(before, encoding="utf-8")
    assert ExitStatus.OK == main(["fetch", "--config", str(config), "-q", str(posts)])
    assert before == (posts / "a.md").read_text(encoding="utf-8")
    sources = {f"http://origin.example/good/{n}.jpg" for n in (1, 2)}
    assert sources == set(_objects(config))
    hits = sum(net.hits.values())
    assert ExitStatus.OK == main(["run", "--config", str(config), "-q", str(posts)])
    assert hits == sum(net.hits.values())
    text = (posts / "a.md").read_text(encoding="utf-8")
    for sha256 in _objects(config).values():
        assert f"/mirror/{sha256[:2]}/{sha256}.jpg" in text
    assert WRAP not in text


def test_dry_run_writes_nothing(
    tmp_path: Path, net: Net, manifest_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No manifest is made, not even an empty one; over an existing one nothing changes."""
    config = config_file(tmp_path, net, manifest=manifest_url)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/good/1.jpg"), encoding="utf-8")
    (posts / "b.md").write_text(post("/good/2.jpg"), encoding="utf-8")
    dry = ["run", "--config", str(config), "--dry-run", str(posts)]
    assert ExitStatus.INCOMPLETE == main(dry)
    assert "would fetch 2" in capsys.readouterr().err
    assert not asyncio.run(manifest_exists(load_config(config)))
    assert not (tmp_path / "cache").exists()
    assert 0 == sum(net.hits.values())
    (posts / "b.md").unlink()
    assert ExitStatus.OK == main(["run", "--config", str(config), "-q", str(posts)])
    (posts / "b.md").write_text(post("/good/2.jpg"), encoding="utf-8")
    texts = {p.name: p.read_bytes() for p in posts.iterdir()}
    assert ExitStatus.INCOMPLETE == main(dry)
    # What is mirrored shows in the diff; only the new source is planned, and nothing is written.
    err = capsys.readouterr().err
    assert "would fetch 1" in err, err
    assert texts == {p.name: p.read_bytes() for p in posts.iterdir()}
    assert 1 == sum(net.hits.values())
    assert source_row(config, "http://origin.example/good/2.jpg") is None


def _lock_holder(url: str) -> int | None:
    """The pid in a PostgreSQL manifest's store-lock record, or None (none, or no schema yet)."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            row = conn.execute("SELECT pid FROM store_lock").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return None if row is None else int(row[0])


def _advisory_locks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'")
        row = found.fetchone()
    assert row is not None
    return int(row[0])


def test_two_runs_on_one_postgres_manifest_exclude_each_other(
    tmp_path: Path, net: Net, pg_url: str
) -> None:
    """A second run is refused at once, naming the first; once that is killed it is taken over."""
    # A first run stalled on an origin far longer than the test, so it holds the lock throughout.
    config = config_file(tmp_path, net, manifest=pg_url, read_timeout=60.0)
    first_posts, second_posts = tmp_path / "first", tmp_path / "second"
    first_posts.mkdir()
    second_posts.mkdir()
    (first_posts / "a.md").write_text(post("/stall/1.jpg"), encoding="utf-8")
    (second_posts / "b.md").write_text(post("/good/2.jpg"), encoding="utf-8")
    command = [sys.executable, "-m", "mirror", "run", "--config", str(config)]
    with subprocess.Popen([*command, str(first_posts)], stderr=subprocess.DEVNULL) as first:
        try:
            deadline = time.monotonic() + 30
            # Polling another process for an event, bounded: its lock record shows it holds it.
            while _lock_holder(pg_url) != first.pid:
                assert first.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.02)
            second = subprocess.run(
                [*command, str(second_posts)], capture_output=True, text=True, timeout=60
            )
            assert ExitStatus.FAILED == second.returncode, second.stderr
            assert "the store is locked by another mirror" in second.stderr
            assert f"pid {first.pid} on " in second.stderr
            assert f"`mirror run --config {config} {first_posts}`" in second.stderr
            assert 0 == net.hits["http://origin.example/good/2.jpg"]
            first.kill()
            first.wait(timeout=10)
        finally:
            first.kill()  # no-op once it exited; never leave it running
    # The server ends a dead client's session, and its lock with it, once it sees the socket close.
    while _advisory_locks(pg_url):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    third = subprocess.run(
        [*command, str(second_posts)], capture_output=True, text=True, timeout=60
    )
    assert ExitStatus.OK == third.returncode, third.stderr
    assert "took over the store lock" in third.stderr
    assert 1 == net.hits["http://origin.example/good/2.jpg"]
    assert None is _lock_holder(pg_url)


async def _bucket_keys(bucket: S3Bucket) -> dict[str, str]:
    """Every object in the bucket: key -> sha256 of its bytes."""
    async with bucket.client() as client:
        listing = await client.list_objects_v2(Bucket=bucket.name)
        found = {}
        for item in listing.get("Contents", []):
            answer = await client.get_object(Bucket=bucket.name, Key=item["Key"])
            async with answer["Body"] as body:
                found[item["Key"]] = hashlib.sha256(await body.read()).hexdigest()
        return found


def test_run_over_postgres_and_s3(
    tmp_path: Path, net: Net, pg_url: str, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posts rewritten, objects in the bucket, rows in the database, no local file; rerun no-op."""
    asyncio.run(s3_bucket.create())
    store = (
        f'[store]\nurl = "s3://{s3_bucket.name}/m"\nstaging = "{tmp_path / "staging"}"\n'
        f'[store.s3]\nendpoint_url = "{s3_bucket.endpoint}"\naddressing = "path"\n'
    )
    config = config_file(tmp_path, net, manifest=pg_url, store=store)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/good/1.jpg", "/dead/3.jpg"), encoding="utf-8")
    (posts / "b.md").write_text(post("/good/1.jpg", "/good/2.jpg"), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    # The single-machine bookkeeping would land here (a SQLite file, mirror.lock): none may.
    monkeypatch.chdir(work)
    assert ExitStatus.INCOMPLETE == main(["run", "--config", str(config), "-q", str(posts)])
    assert [] == list(work.iterdir())
    objects = _objects(config)
    assert {f"http://origin.example/good/{n}.jpg" for n in (1, 2)} == set(objects)
    keys = asyncio.run(_bucket_keys(s3_bucket))
    assert {f"m/{sha[:2]}/{sha}.jpg": sha for sha in objects.values()} == keys
    for name in ("a.md", "b.md"):
        text = (posts / name).read_text(encoding="utf-8")
        sha = objects["http://origin.example/good/1.jpg"]
        assert f"/mirror/{sha[:2]}/{sha}.jpg" in text
    assert f"{WRAP}http://origin.example/dead/3.jpg" in (posts / "a.md").read_text("utf-8")
    row = source_row(config, "http://origin.example/dead/3.jpg")
    assert row is not None
    assert "failed" == row.status
    texts = {p.name: p.read_bytes() for p in posts.iterdir()}
    hits = sum(net.hits.values())
    summary = asyncio.run(Job(load_config(config), rewrite=True).run([posts]))
    # The dead source is in its backoff: nothing read, nothing asked, nothing written.
    assert (2, 2, 1) == (summary.posts, summary.unchanged, summary.waiting)
    assert (hits, texts) == (
        sum(net.hits.values()),
        {p.name: p.read_bytes() for p in posts.iterdir()},
    )


class SlowResults:
    """A manifest whose first ``record_results`` waits for ``release``: a batch in flight."""

    def __init__(self, manifest: Any) -> None:
        self.manifest = manifest
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.committed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.manifest, name)

    async def record_results(self, rows: Any) -> None:
        rows = list(rows)
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        await self.manifest.record_results(rows)
        self.committed += [row.source for row in rows]


async def test_a_flush_waits_for_the_batch_in_flight(tmp_path: Path) -> None:
    """A post about to be written flushes first; with another task's batch still on its way to
    the database (PostgreSQL awaits it), that flush returns only once the batch is committed."""
    config = load_config(config_file(tmp_path, Net()))
    async with open_manifest(config) as real:
        slow = SlowResults(real)
        job = Job(config, rewrite=True, manifest=slow)  # type: ignore[arg-type]
        job._manifest = slow  # type: ignore[assignment]  # as run() sets it
        await job._record("http://origin.example/1.jpg", Outcome("failed", "http-404"), 1.0)
        first = asyncio.create_task(job._flush())
        await slow.entered.wait()
        second = asyncio.create_task(job._flush())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not second.done()
        slow.release.set()
        await asyncio.gather(first, second)
        assert ["http://origin.example/1.jpg"] == slow.committed


# --- processes --------------------------------------------------------------------------------


HOLD = """
import sys
from pathlib import Path
from mirror.lock import StoreLock
with StoreLock(Path(sys.argv[1]), "test holder"):
    print("held", flush=True)
    sys.stdin.read()  # holds until the test closes stdin or kills it
"""


def test_store_lock_between_two_processes(tmp_path: Path, net: Net) -> None:
    """A second writer exits 3 at once, naming the lock; a SIGKILLed holder's lock is taken over."""
    config = config_file(tmp_path, net)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/good/1.jpg"), encoding="utf-8")
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "cache")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        assert "held" == holder.stdout.readline().strip()
        command = [sys.executable, "-m", "mirror", "run", "--config", str(config), str(posts)]
        second = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        # "At once" counted, not timed: it asked the origin for nothing.
        assert 0 == sum(net.hits.values())
        assert ExitStatus.FAILED == second.returncode
        assert str(tmp_path / "cache" / "mirror.lock") in second.stderr
        assert f"pid {holder.pid}" in second.stderr
        holder.kill()
        holder.wait(timeout=10)
        third = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert 0 == third.returncode, third.stderr
        assert "took over" in third.stderr


def test_every_runs_again_and_stops_on_sigterm(tmp_path: Path, net: Net) -> None:
    """--every picks up a new post on the next run and ends cleanly on SIGTERM while sleeping."""
    config = config_file(tmp_path, net)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/good/1.jpg"), encoding="utf-8")
    command = [sys.executable, "-m", "mirror", "run", "--config", str(config), "--every", "1s"]
    with subprocess.Popen([*command, str(posts)], stderr=subprocess.PIPE, text=True) as job:
        try:
            deadline = time.monotonic() + 30
            while "/mirror/" not in (posts / "a.md").read_text(encoding="utf-8"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            (posts / "b.md").write_text(post("/good/2.jpg"), encoding="utf-8")
            while "/mirror/" not in (posts / "b.md").read_text(encoding="utf-8"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            job.send_signal(signal.SIGTERM)
            assert job.wait(timeout=30) in (ExitStatus.OK, ExitStatus.INTERRUPTED)
            assert job.stderr is not None
        finally:
            job.kill()  # no-op once it exited; never leave it running
        assert "next run at" in job.stderr.read()


MEASURE = """
import asyncio, resource, sys
from pathlib import Path
from mirror.config import load_config
from mirror.pipeline import Job
summary = asyncio.run(Job(load_config(Path(sys.argv[1])), rewrite=False).run([Path(sys.argv[2])]))
print(summary.posts, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(config: Path, posts: Path) -> tuple[int, int]:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(config), str(posts)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    count, peak = result.stdout.split()
    return int(count), int(peak)


def test_memory_stays_flat_as_the_archive_grows(tmp_path: Path, net: Net) -> None:
    """Peak RSS of a fetch over 5,000 posts is within a few MB of one over 1,000."""
    config = config_file(tmp_path, net)
    peaks = []
    for count in (1000, 5000):
        posts = tmp_path / f"posts{count}"
        posts.mkdir()
        for n in range(count):
            (posts / f"p{n}.md").write_text(
                post(f"/dead/{count}-{n}.jpg") + "words " * 200, encoding="utf-8"
            )
        seen, peak = _peak_kib(config, posts)
        assert count == seen
        peaks.append(peak)
    assert peaks[1] - peaks[0] < 16 * 1024, peaks


def test_fast_path_holds_whichever_way_the_path_is_spelled(
    tmp_path: Path, net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posts finished through an absolute path are unchanged when named relatively, and back."""
    config = config_file(tmp_path, net)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(post("/good/1.jpg"), encoding="utf-8")
    run_job(config, posts)
    monkeypatch.chdir(tmp_path)
    summary = run_job(config, Path("posts"))
    assert (1, 1) == (summary.unchanged, summary.posts)
    with Manifest(manifest_path(tmp_path / "cache"), readonly=True) as manifest:
        assert 1 == manifest.conn.execute("SELECT COUNT(*) FROM posts").fetchone()[0]
