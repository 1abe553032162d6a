"""mirror fetch / run / rewrite end to end against a real local origin and a fake proxy."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from conftest import threaded_server
from PIL import Image
from s3_server import S3Bucket

from mirror.cli import main
from mirror.errors import ExitStatus
from mirror.manifest import Manifest, manifest_path
from mirror.store import staging as staging_module

WRAP = "http://proxy.example/?"


def image(size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, fmt)
    return out.getvalue()


@dataclass
class Origin:
    """What the origin served; ``/stall/`` waits for ``release``, ``/slow/`` past ``SLOW_FREE``
    requests for ``gate``: events, not sleeps, so no test waits on the wall clock."""

    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    release: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    slow: int = 0


# /slow/ answers this many requests at once, then holds the rest until the gate opens.
SLOW_FREE = 20


GOOD = image((60, 40))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A tiny PNG whose header declares 40000 x 40000 pixels: never decoded, never allocated.
PIXEL_BOMB = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
    + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    + _png_chunk(b"IEND", b"")
)


def image_n(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (60, 40), (n % 256, n // 256, 7)).save(out, "JPEG")
    return out.getvalue()


PLACEHOLDER = image((20, 20))


@pytest.fixture
def origin() -> Iterator[Origin]:
    """
    Serve origin.example (by path) and a fake proxy (by Host) on one local port.

    The server runs on its own thread and loop because main() runs asyncio.run() itself.
    """
    state = Origin()

    async def handle(request: web.Request) -> web.StreamResponse:
        host = request.host.split(":")[0]
        state.hits[f"{host}{request.path_qs}"] += 1
        if host == "proxy.example":
            inner = request.rel_url.raw_query_string
            if "dead" in inner:
                return web.Response(status=404)
            return web.Response(body=GOOD, content_type="image/jpeg")
        if request.path.startswith("/slow/"):
            state.slow += 1
            if state.slow > SLOW_FREE:
                await asyncio.to_thread(state.gate.wait, 60)
            n = int(request.path.rsplit("/", 1)[-1].split(".")[0])
            return web.Response(body=image_n(n), content_type="image/jpeg")
        if request.path.startswith("/flaky/"):
            if state.hits[f"{host}{request.path_qs}"] == 1:
                return web.Response(status=500)
            return web.Response(body=GOOD, content_type="image/jpeg")
        if request.path.startswith("/stall/"):
            # Past any read_timeout of the tests; released at teardown so the server closes.
            await asyncio.to_thread(state.release.wait, 60)
            return web.Response(body=GOOD, content_type="image/jpeg")
        if request.path.startswith("/big/"):
            return web.Response(body=b"\xff\xd8" + bytes(2_000_000), content_type="image/jpeg")
        if request.path.startswith("/bomb/"):
            return web.Response(body=PIXEL_BOMB, content_type="image/png")
        if request.path.startswith("/cut/"):
            return web.Response(body=GOOD[:-100], content_type="image/jpeg")
        if request.path.startswith("/good"):
            return web.Response(body=GOOD, content_type="text/plain")
        if request.path.startswith("/placeholder"):
            return web.Response(body=PLACEHOLDER, content_type="image/jpeg")
        if request.path.startswith("/html"):
            return web.Response(text="<html>hi</html>", content_type="text/html")
        if request.path.startswith("/to-loopback"):
            raise web.HTTPFound("http://127.0.0.1:9/x.jpg")
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    with threaded_server(app) as port:
        state.port = port
        try:
            yield state
        finally:
            state.release.set()
            state.gate.set()


def post_text(*paths: str) -> str:
    body = "".join(
        f'<p><img src="{WRAP}http://origin.example{p}" data-size="60,40" '
        f'referrerpolicy="no-referrer"></p>'
        for p in paths
    )
    return (
        f"\n---\ntitle: 't'\nheadimg: '{WRAP}http://origin.example{paths[0]}'\n---\n\n"
        f"<div>   \n{body}\n</div>\n            "
    )


@pytest.fixture
def setup(tmp_path: Path, origin: Origin) -> tuple[Path, Path, list[str]]:
    posts = tmp_path / "posts"
    posts.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        "[scan]\n"
        "wrappers = ['^http://proxy\\.example/\\?(?P<url>.+)$']\n"
        "[fetch]\nbackoff_initial = 0.0\nattempts = 2\nread_timeout = 0.3\n"
        "max_bytes = 1000000\n"
        "[network]\n"
        f"connect_to = ['origin.example:80:127.0.0.1:{origin.port}', "
        f"'proxy.example:80:127.0.0.1:{origin.port}']\n"
        f"[store]\npath = '{tmp_path / 'cache'}'\n",
        encoding="utf-8",
    )
    return posts, config, ["--config", str(config)]


def read_report(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_run_mirrors_rewrites_and_reports(
    setup: tuple[Path, Path, list[str]], origin: Origin, tmp_path: Path
) -> None:
    """run stores verified objects, rewrites only mirrored spans and reports every reference."""
    posts, _config, opts = setup
    text = post_text("/good/a.jpg")
    zaker = (
        f'\n---\ntitle: z\n---\n\n<div><img data-original="http://origin.example/good/z.jpg" '
        f'data-width="60" data-height="40" src="{WRAP}http://origin.example/good/z.jpg"></div>\n'
    )
    (posts / "a.md").write_text(text, encoding="utf-8")
    (posts / "z.md").write_text(zaker, encoding="utf-8")
    report = tmp_path / "r.jsonl"
    assert ExitStatus.OK == main(["run", *opts, "--report", str(report), str(posts)])
    rows = read_report(report)
    assert {"mirrored"} == {r["status"] for r in rows}
    assert 4 == len(rows)
    sha = rows[0]["sha256"]
    assert isinstance(sha, str)
    local = f"/mirror/{sha[:2]}/{sha}.jpg"
    assert text.replace(f"{WRAP}http://origin.example/good/a.jpg", local) == (
        posts / "a.md"
    ).read_text(encoding="utf-8")
    zaker_after = (posts / "z.md").read_text(encoding="utf-8")
    assert 2 == zaker_after.count(local)
    assert "origin.example" not in zaker_after
    assert GOOD == (tmp_path / "cache" / "objects" / sha[:2] / f"{sha}.jpg").read_bytes()
    first = rows[0]
    assert {
        "post",
        "line",
        "url",
        "source",
        "where",
        "declared",
        "status",
        "reason",
        "sha256",
        "bytes",
        "format",
        "width",
        "height",
        "file",
        "local_url",
        "via",
        "fetched_from",
        "attempts",
    } == set(first)
    assert ("origin", first["source"], 60, 40, "JPEG") == (
        first["via"],
        first["fetched_from"],
        first["width"],
        first["height"],
        first["format"],
    )
    # Same bytes from two URLs are stored once; one request per source.
    assert 1 == len(list((tmp_path / "cache" / "objects").rglob("*.jpg")))
    assert 1 == origin.hits["origin.example/good/a.jpg"]


def test_second_run_requests_nothing(setup: tuple[Path, Path, list[str]], origin: Origin) -> None:
    """A second run makes no request for mirrored references and changes no post."""
    posts, _config, opts = setup
    (posts / "a.md").write_text(post_text("/good/a.jpg", "/good/b.jpg"), encoding="utf-8")
    assert ExitStatus.OK == main(["run", *opts, str(posts)])
    after = (posts / "a.md").read_bytes()
    before_hits = sum(origin.hits.values())
    assert ExitStatus.OK == main(["run", *opts, str(posts)])
    assert before_hits == sum(origin.hits.values())
    assert after == (posts / "a.md").read_bytes()


def test_placeholder_falls_back_to_proxy(
    setup: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    """An origin placeholder of another size is size-mismatch; the proxy delivers the image."""
    posts, _config, opts = setup
    (posts / "p.md").write_text(post_text("/placeholder/p.jpg"), encoding="utf-8")
    report = tmp_path / "r.jsonl"
    assert ExitStatus.OK == main(["run", *opts, "--report", str(report), str(posts)])
    row = next(r for r in read_report(report) if r["where"] == "img@src")
    assert ("mirrored", "proxy") == (row["status"], row["via"])
    attempts = row["attempts"]
    assert isinstance(attempts, list)
    assert ["size-mismatch", "ok"] == [a["outcome"] for a in attempts]


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/dead/x.jpg", "failed", "http-404"),
        ("/html/dead.jpg", "failed", "not-an-image"),
        ("/to-loopback/dead.jpg", "blocked", "private-address"),
        ("/stall/dead.jpg", "failed", "timeout"),
        ("/big/dead.jpg", "failed", "too-large"),
        ("/bomb/dead.png", "failed", "pixel-bomb"),
        ("/cut/dead.jpg", "failed", "truncated"),
    ],
)
def test_failures_keep_the_post_and_back_off(
    setup: tuple[Path, Path, list[str]],
    tmp_path: Path,
    path: str,
    status: str,
    reason: str,
) -> None:
    """A reference no source delivers stays as written, with its reason; the rerun skips it."""
    posts, _config, opts = setup
    text = post_text(path)
    (posts / "f.md").write_text(text, encoding="utf-8")
    report = tmp_path / "r.jsonl"
    assert ExitStatus.INCOMPLETE == main(["run", *opts, "--report", str(report), str(posts)])
    row = next(r for r in read_report(report) if r["where"] == "img@src")
    assert (status, reason) == (row["status"], row["reason"])
    assert text == (posts / "f.md").read_text(encoding="utf-8")
    assert ExitStatus.INCOMPLETE == main(["run", *opts, "--report", str(report), str(posts)])
    assert {"skipped"} == {r["status"] for r in read_report(report)}


def test_dead_wrapper_with_live_origin(
    setup: tuple[Path, Path, list[str]], origin: Origin, tmp_path: Path
) -> None:
    """The origin is tried first, so a dead wrapper does not matter when the origin serves."""
    posts, _config, opts = setup
    (posts / "w.md").write_text(post_text("/good/dead-wrapper.jpg"), encoding="utf-8")
    report = tmp_path / "r.jsonl"
    assert ExitStatus.OK == main(["run", *opts, "--report", str(report), str(posts)])
    assert {"origin"} == {r["via"] for r in read_report(report)}
    assert 0 == sum(n for key, n in origin.hits.items() if key.startswith("proxy.example"))


def test_transient_failure_is_retried(
    setup: tuple[Path, Path, list[str]], origin: Origin, tmp_path: Path
) -> None:
    """A 500 followed by the image is retried on the same source and mirrored from the origin."""
    posts, _config, opts = setup
    (posts / "t.md").write_text(post_text("/flaky/t.jpg"), encoding="utf-8")
    report = tmp_path / "r.jsonl"
    assert ExitStatus.OK == main(["run", *opts, "--report", str(report), str(posts)])
    assert {"origin"} == {r["via"] for r in read_report(report)}
    assert 2 == origin.hits["origin.example/flaky/t.jpg"]


def test_full_disk_stops_the_run_cleanly(
    setup: tuple[Path, Path, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ENOSPC while storing ends the run with a clear error; no post or object is half-written."""
    posts, _config, opts = setup
    text = post_text("/good/full.jpg")
    (posts / "full.md").write_text(text, encoding="utf-8")

    class FullFile(io.FileIO):
        """A staged file on a full disk: every write fails as the kernel would."""

        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    class FullOs:
        """The os module as the staging area sees it, but its files are on a full disk."""

        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def fdopen(fd: int, mode: str) -> FullFile:
            return FullFile(fd, "r+")

    monkeypatch.setattr(staging_module, "os", FullOs())
    assert ExitStatus.FAILED == main(["run", *opts, str(posts)])
    assert "disk is full" in capsys.readouterr().err
    assert text == (posts / "full.md").read_text(encoding="utf-8")
    assert [] == [p for p in (tmp_path / "cache").rglob("*") if p.suffix in (".jpg", ".tmp")]


def test_fetch_leaves_posts_and_rewrite_uses_manifest(
    setup: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    """fetch only fills the store; rewrite then takes its mapping from the manifest."""
    posts, _config, opts = setup
    text = post_text("/good/m.jpg")
    (posts / "m.md").write_text(text, encoding="utf-8")
    report = tmp_path / "r.jsonl"
    assert ExitStatus.OK == main(["fetch", *opts, "--report", str(report), str(posts)])
    assert text == (posts / "m.md").read_text(encoding="utf-8")
    assert {None} == {r["local_url"] for r in read_report(report)}
    with Manifest(manifest_path(tmp_path / "cache"), readonly=True) as manifest:
        assert {"http://origin.example/good/m.jpg"} == set(manifest.mirrored_mapping("/m/"))
    assert ExitStatus.OK == main(["rewrite", *opts, str(posts)])
    assert "origin.example" not in (posts / "m.md").read_text(encoding="utf-8")


def test_run_out_and_dry_run(
    setup: tuple[Path, Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out writes copies and leaves sources; --dry-run fetches and writes nothing."""
    posts, _config, opts = setup
    text = post_text("/good/o.jpg")
    (posts / "o.md").write_text(text, encoding="utf-8")
    assert ExitStatus.INCOMPLETE == main(["run", *opts, "--dry-run", str(posts)])
    assert not (tmp_path / "cache").exists()
    out = tmp_path / "out"
    assert ExitStatus.OK == main(["run", *opts, "--out", str(out), str(posts)])
    assert text == (posts / "o.md").read_text(encoding="utf-8")
    assert "origin.example" not in (out / "o.md").read_text(encoding="utf-8")


def test_demo_runs_the_whole_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """mirror demo mirrors the bundled example; only the deliberately faulty images fail."""
    work = tmp_path / "demo"
    assert ExitStatus.OK == main(["demo", "-q", "--dir", str(work)])
    rows = read_report(work / "report.jsonl")
    failed = {(r["reason"], r["status"]) for r in rows if r["status"] != "mirrored"}
    assert {("http-404", "failed"), ("not-an-image", "failed")} == failed
    placeholder = [r for r in rows if r["via"] == "proxy"]
    assert placeholder
    assert "rewritten posts:" in capsys.readouterr().out


def _state(posts: Path, store: Path) -> tuple[dict[str, bytes], set[str], dict[str, int]]:
    # A post write cut short leaves a hidden temp file beside it (never a half-written post).
    texts = {p.name: p.read_bytes() for p in sorted(posts.iterdir()) if not p.name.startswith(".")}
    objects = {p.name for p in (store / "objects").rglob("*") if not p.name.startswith(".")}
    with Manifest(manifest_path(store), readonly=True) as manifest:
        return texts, objects, manifest.counts()


def test_sigkill_mid_run_then_rerun_matches_uninterrupted(
    setup: tuple[Path, Path, list[str]], origin: Origin, tmp_path: Path
) -> None:
    """A run killed with SIGKILL mid-way, then rerun, ends where an uninterrupted run ends."""
    _posts, config, _opts = setup
    # The held requests must not time out into the proxy: the killed run stays mid-way until
    # killed, however loaded the machine, and the gate opens only for the reruns.
    text = config.read_text(encoding="utf-8").replace("read_timeout = 0.3", "read_timeout = 60.0")
    config.write_text(text, encoding="utf-8")
    trees = {}
    for name in ("killed", "clean"):
        posts = tmp_path / name / "posts"
        posts.mkdir(parents=True)
        for i in range(30):
            paths = [f"/slow/{i * 4 + j}.jpg" for j in range(4)]
            (posts / f"{i:02}.md").write_text(post_text(*paths), encoding="utf-8")
        trees[name] = (posts, tmp_path / name / "cache")
    command = [sys.executable, "-m", "mirror", "run", "-q", "--config", str(config), "--jobs", "4"]
    posts, store = trees["killed"]
    proc = subprocess.Popen([*command, "--store", str(store), str(posts)])
    deadline = time.monotonic() + 30
    # Polling a subprocess for an event, bounded: SLOW_FREE objects stored, the rest held.
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((store / "objects").rglob("*.jpg"))) >= SLOW_FREE:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    origin.gate.set()
    # A write cut short stays a hidden temp file; every visible object is whole.
    for obj in (store / "objects").rglob("*.jpg"):
        if not obj.name.startswith("."):
            assert obj.stem == hashlib.sha256(obj.read_bytes()).hexdigest()
    for name, (posts, store) in trees.items():
        done = subprocess.run(
            [*command, "--store", str(store), str(posts)], timeout=60, check=False
        )
        assert 0 == done.returncode, name
    assert _state(*trees["clean"]) == _state(*trees["killed"])


def test_a_rerun_asks_the_store_once_per_object(
    setup: tuple[Path, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many references to the same objects cost one store.stat per object per run, not each."""
    from mirror.store.local import FolderStore

    posts, _config, opts = setup
    for n in range(6):
        (posts / f"p{n}.md").write_text(post_text("/good/s1.jpg", "/good/s2.jpg"), encoding="utf-8")
    assert ExitStatus.OK == main(["fetch", *opts, str(posts)])
    asked: list[str] = []
    real = FolderStore.stat

    async def counted(self: FolderStore, sha256: str, ext: str) -> object:
        asked.append(sha256)
        return await real(self, sha256, ext)

    monkeypatch.setattr(FolderStore, "stat", counted)
    for post in posts.iterdir():
        # Edited, so the rerun reads every post instead of skipping it as unchanged.
        post.write_text(post.read_text(encoding="utf-8") + "\nmore\n", encoding="utf-8")
    assert ExitStatus.OK == main(["fetch", *opts, str(posts)])
    stored = sorted(p.name.split(".")[0] for p in (posts.parent / "cache" / "objects").rglob("*.*"))
    assert stored == sorted(asked)


async def _bucket_objects(bucket: S3Bucket, prefix: str) -> dict[str, bytes]:
    """Every visible object under ``prefix``: key (without the prefix) -> bytes."""
    async with bucket.client() as client:
        listing = await client.list_objects_v2(Bucket=bucket.name, Prefix=prefix)
        found: dict[str, bytes] = {}
        for item in listing.get("Contents", []):
            answer = await client.get_object(Bucket=bucket.name, Key=item["Key"])
            async with answer["Body"] as body:
                found[item["Key"].removeprefix(prefix)] = await body.read()
        return found


@pytest.mark.slow
def test_sigkill_mid_run_on_s3_then_rerun_matches_uninterrupted(
    setup: tuple[Path, Path, list[str]], origin: Origin, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """On a bucket: SIGKILL mid-run, rerun; bucket, posts and manifest equal a clean run's."""
    _posts, config, _opts = setup
    asyncio.run(s3_bucket.create())
    base = config.read_text(encoding="utf-8").replace("read_timeout = 0.3", "read_timeout = 60.0")
    base = base.split("[store]")[0]
    trees = {}
    for name in ("killed", "clean"):
        posts = tmp_path / name / "posts"
        posts.mkdir(parents=True)
        for i in range(30):
            paths = [f"/slow/{i * 4 + j}.jpg" for j in range(4)]
            (posts / f"{i:02}.md").write_text(post_text(*paths), encoding="utf-8")
        own = tmp_path / name / "config.toml"
        own.write_text(
            base + f'[store]\nurl = "s3://{s3_bucket.name}/{name}"\n'
            f'staging = "{tmp_path / name / "staging"}"\n'
            f'[store.s3]\nendpoint_url = "{s3_bucket.endpoint}"\naddressing = "path"\n',
            encoding="utf-8",
        )
        trees[name] = (posts, own)
    command = [sys.executable, "-m", "mirror", "run", "-q", "--jobs", "4", "--config"]
    posts, own = trees["killed"]
    proc = subprocess.Popen([*command, str(own), str(posts)])
    deadline = time.monotonic() + 30
    # Polling a subprocess for an event, bounded: SLOW_FREE objects uploaded, the rest held.
    while time.monotonic() < deadline and proc.poll() is None:
        if len(asyncio.run(_bucket_objects(s3_bucket, "killed/"))) >= SLOW_FREE:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    origin.gate.set()
    # No partial object is ever visible: every object there hashes to its name.
    for key, data in asyncio.run(_bucket_objects(s3_bucket, "killed/")).items():
        assert key.split("/")[-1].split(".")[0] == hashlib.sha256(data).hexdigest()
    for name, (posts, own) in trees.items():
        done = subprocess.run([*command, str(own), str(posts)], timeout=60, check=False)
        assert 0 == done.returncode, name
    states = {}
    for name, (posts, own) in trees.items():
        texts = {p.name: p.read_bytes() for p in sorted(posts.iterdir())}
        with Manifest(own.parent / "mirror.sqlite3", readonly=True) as manifest:
            counts = manifest.counts()
        states[name] = texts, asyncio.run(_bucket_objects(s3_bucket, f"{name}/")), counts
    assert states["clean"] == states["killed"]
    # No row without an object: every object a row names is in the bucket.
    with Manifest(trees["killed"][1].parent / "mirror.sqlite3", readonly=True) as manifest:
        named = {f"{row.sha256[:2]}/{row.sha256}.{row.ext}" for row in manifest.objects()}
    assert named == set(states["killed"][1])
