"""Store care end to end: verify, gc, export and rewrite --revert on real stores and posts."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import object_file, store_object
from PIL import Image

from mirror.cli import main
from mirror.config import load_config
from mirror.errors import ExitStatus
from mirror.manifest import Manifest, SourceResult, open_manifest

WRAP = "http://proxy.example/?"


def image_n(n: int) -> bytes:
    """A distinct 60x40 JPEG per ``n``."""
    out = io.BytesIO()
    Image.new("RGB", (60, 40), (n * 40 % 256, 90, 7)).save(out, "JPEG")
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def src(n: int) -> str:
    return f"http://origin.example/img/{n}.jpg"


@dataclass
class Origin:
    """What the local origin served; paths in ``broken`` answer 404."""

    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    broken: set[str] = field(default_factory=set)


@pytest.fixture
def origin() -> Iterator[Origin]:
    """origin.example on its own thread and loop (main() runs asyncio.run() itself)."""
    state = Origin()

    async def handle(request: web.Request) -> web.StreamResponse:
        state.hits[request.path] += 1
        if request.path in state.broken or not request.path.startswith("/img/"):
            return web.Response(status=404)
        n = int(request.path.rsplit("/", 1)[-1].split(".")[0])
        return web.Response(body=image_n(n), content_type="image/jpeg")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    loop = asyncio.new_event_loop()
    server = TestServer(app, host="127.0.0.1")
    loop.run_until_complete(server.start_server())
    assert server.port is not None
    state.port = server.port
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@dataclass
class Site:
    """A posts folder, a store and the options that reach the origin."""

    posts: Path
    store: Path
    config: Path
    opts: list[str]

    def write(self, name: str, *numbers: int, extra: str = "") -> bytes:
        body = "".join(f'<p><img src="{WRAP}{src(n)}" data-size="60,40"></p>\n' for n in numbers)
        text = f"\n---\ntitle: '{name}'\nheadimg: '{WRAP}{src(numbers[0])}'\n---\n\n{body}{extra}"
        data = text.encode()
        (self.posts / name).write_bytes(data)
        return data

    def path(self, n: int) -> Path:
        digest = sha(image_n(n))
        return self.store / "objects" / digest[:2] / f"{digest}.jpg"

    def manifest(self, *, write: bool = False) -> Reader:
        """The site's manifest, SQLite or PostgreSQL, read (or written) from a sync test."""
        return Reader(self.config, write)


@contextlib.contextmanager
def store_locked(site: Site, command: str) -> Iterator[None]:
    """Hold the site's store lock through the seam (an flock or a PostgreSQL advisory lock)."""
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        config = load_config(site.config)
        manifest = loop.run_until_complete(stack.enter_async_context(open_manifest(config)))
        loop.run_until_complete(stack.enter_async_context(manifest.lock(command)))
        yield  # the loop sits idle meanwhile; its connection keeps the lock
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


class Reader:
    """Each call opens the site's manifest through the seam, awaits one method, and closes."""

    def __init__(self, config: Path, write: bool) -> None:
        self.config = load_config(config)
        self.write = write

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            async with open_manifest(self.config, readonly=not self.write) as manifest:
                return await getattr(manifest, name)(*args, **kwargs)

        return lambda *args, **kwargs: asyncio.run(call(*args, **kwargs))


def make_site(tmp_path: Path, origin: Origin, name: str = "site", extra: str = "") -> Site:
    root = tmp_path / name
    posts = root / "posts"
    posts.mkdir(parents=True)
    config = root / "config.toml"
    config.write_text(
        "[scan]\nwrappers = ['^http://proxy\\.example/\\?(?P<url>.+)$']\n"
        "[fetch]\nsources = ['origin']\nbackoff_initial = 0.0\nattempts = 1\n"
        "failure_backoff = 0.001\n"
        f"[network]\nconnect_to = ['origin.example:80:127.0.0.1:{origin.port}']\n"
        f"[store]\npath = '{root / 'cache'}'\n{extra}",
        encoding="utf-8",
    )
    return Site(posts, root / "cache", config, ["--config", str(config)])


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path: Path, origin: Origin) -> Site:
    """A site over each manifest backend: the store's SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return make_site(tmp_path, origin)
    url = request.getfixturevalue("pg_url")
    return make_site(tmp_path, origin, extra=f"[manifest]\nurl = '{url}'\n")


def out_err(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


# --- the manifest methods ---------------------------------------------------------------------


def test_manifest_objects_and_forget_objects(tmp_path: Path) -> None:
    """objects() names each object's sources and served URLs; forget_objects marks for re-fetch."""
    a, b = sha(b"a"), sha(b"b")

    def mirrored(source: str, digest: str) -> SourceResult:
        return SourceResult(source, "mirrored", sha256=digest, ext="jpg", size=1)

    with Manifest(tmp_path / "m.sqlite3") as manifest:
        manifest.record_results([mirrored("http://x/1", a), mirrored("http://x/2", a)])
        manifest.record_results([mirrored("http://x/3", b)])
        manifest.record_served("http://open/9", mirrored("http://open/9", a))
        manifest.record_post("p.md", 1, 1, 1, "00", next_check=None, mode="fetch")
        rows = {row.sha256: row for row in manifest.objects()}
        assert ("http://x/1", "http://x/2") == rows[a].sources
        assert ("http://open/9",) == rows[a].served
        assert (("http://x/3",), ()) == (rows[b].sources, rows[b].served)
        assert 2 == manifest.forget_objects({a: "corrupt-object"})
        assert [b] == [row.sha256 for row in manifest.objects()]
        row = manifest.get("http://x/1")
        assert row is not None
        assert ("failed", "corrupt-object", None, None) == (
            row.status,
            row.reason,
            row.sha256,
            row.next_attempt,
        )
        assert [] == [c for c in manifest.catalog() if c.status == "served"]
        state = manifest.post_state("p.md")
        assert state is not None
        assert 0 == state.next_check


# --- verify -----------------------------------------------------------------------------------


def test_verify_clean_store(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """A store whose files match their rows passes with exit 0."""
    site.write("a.md", 1, 2, 3)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    capsys.readouterr()
    assert ExitStatus.OK == main(["verify", *site.opts])
    out, err = out_err(capsys)
    assert "" == out
    assert "3 files" in err
    assert "3 manifest rows: 0 missing, 0 corrupt, 0 stray" in err


def damage(site: Site) -> tuple[bytes, Path]:
    """Flip a byte of object 1, delete object 2, add a stray copy of image 9."""
    corrupt = bytearray(site.path(1).read_bytes())
    corrupt[100] ^= 0xFF
    site.path(1).write_bytes(bytes(corrupt))
    site.path(2).unlink()
    stray = site.store / "objects" / sha(image_n(9))[:2] / f"{sha(image_n(9))}.jpg"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(image_n(9))
    return bytes(corrupt), stray


def test_verify_reports_missing_corrupt_and_stray(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flipped byte is corrupt, a deleted file missing, an unknown file stray; nothing changes."""
    site.write("a.md", 1, 2, 3)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    corrupt, stray = damage(site)
    capsys.readouterr()
    assert ExitStatus.INCOMPLETE == main(["verify", *site.opts])
    out, err = out_err(capsys)
    lines = out.splitlines()
    rel = {n: site.path(n).relative_to(site.store).as_posix() for n in (1, 2)}
    assert 3 == len(lines)
    assert any(line.startswith(f"corrupt  {rel[1]}") and src(1) in line for line in lines)
    assert any(line.startswith(f"missing  {rel[2]}") and src(2) in line for line in lines)
    assert any(line.startswith("stray") and stray.name in line for line in lines)
    assert "1 missing, 1 corrupt, 1 stray" in err
    assert "--repair" in err
    assert corrupt == site.path(1).read_bytes()
    with site.manifest() as manifest:
        assert {"mirrored": 3} == {k: v for k, v in manifest.counts().items() if v}


def test_verify_repair_fetches_the_damaged_objects_again_at_once(
    site: Site, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    """--repair re-fetches the corrupt and the missing object from their sources, no run needed."""
    site.write("a.md", 1, 2, 3)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    _corrupt, stray = damage(site)
    before = Counter(origin.hits)
    assert ExitStatus.INCOMPLETE == main(["verify", "--repair", *site.opts])
    err = capsys.readouterr().err
    assert "1 corrupt files deleted, 2 objects fetched again from their sources and restored" in err
    assert {"/img/1.jpg": 1, "/img/2.jpg": 1} == dict(origin.hits - before)
    assert image_n(1) == site.path(1).read_bytes()
    assert image_n(2) == site.path(2).read_bytes()
    assert stray.exists()
    with site.manifest() as manifest:
        rows = manifest.get_many([src(1), src(2), src(3)])
    assert [("mirrored", sha(image_n(n))) for n in (1, 2, 3)] == [
        (rows[src(n)].status, rows[src(n)].sha256) for n in (1, 2, 3)
    ]
    assert ExitStatus.OK == main(["verify", *site.opts])
    assert "0 missing, 0 corrupt, 1 stray" in capsys.readouterr().err


def test_verify_repair_restores_what_a_rewritten_post_names_by_hash(
    site: Site, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `run` the post names only the hash; a lost object still comes back (#13 row 1)."""
    site.write("a.md", 1, 2)
    assert ExitStatus.OK == main(["run", *site.opts, str(site.posts)])
    rewritten = (site.posts / "a.md").read_bytes()
    assert src(1).encode() not in rewritten
    site.path(1).unlink()
    assert ExitStatus.OK == main(["run", *site.opts, str(site.posts)])
    assert not site.path(1).exists()  # a run cannot see it: the post no longer names the source
    assert ExitStatus.INCOMPLETE == main(["verify", "--repair", *site.opts])
    assert image_n(1) == site.path(1).read_bytes()
    assert rewritten == (site.posts / "a.md").read_bytes()
    capsys.readouterr()
    assert ExitStatus.OK == main(["verify", *site.opts])
    assert "0 missing, 0 corrupt, 0 stray" in capsys.readouterr().err


def test_verify_repair_names_what_its_sources_cannot_give_back(
    site: Site, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source now 404: the object is listed, its source marked, and the message says what next."""
    site.write("a.md", 1, 2)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    site.path(2).unlink()
    origin.broken.add("/img/2.jpg")
    capsys.readouterr()
    assert ExitStatus.INCOMPLETE == main(["verify", "--repair", *site.opts])
    err = capsys.readouterr().err
    assert "0 objects fetched again from their sources and restored" in err
    assert "1 object could not be restored" in err
    assert f"{sha(image_n(2))}.jpg" in err
    with site.manifest() as manifest:
        row = manifest.get(src(2))
    assert row is not None
    assert ("failed", "missing-object", None) == (row.status, row.reason, row.sha256)


def test_verify_without_manifest_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store folder with no manifest (a wrong --store) exits 2 and names the path."""
    assert ExitStatus.USAGE == main(["verify", "--store", str(tmp_path / "nope")])
    assert "no manifest" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["verify", "--repair"], ["gc", "--apply", "OTHER"], ["rewrite", "--revert", "POSTS"]],
)
def test_writing_commands_take_the_store_lock(
    site: Site, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --repair, gc --apply and rewrite --revert exit 3 while another mirror holds it."""
    site.write("a.md", 1)
    assert ExitStatus.OK == main(["run", *site.opts, str(site.posts)])
    rewritten = (site.posts / "a.md").read_bytes()
    other = site.posts.parent / "other"
    other.mkdir()
    (other / "b.md").write_text(f'<img src="{WRAP}{src(2)}">\n', encoding="utf-8")
    assert ExitStatus.OK == main(["fetch", *site.opts, str(other)])
    site.path(2).unlink()  # something for --repair to do; gc OTHER would collect object 1
    places = {"POSTS": str(site.posts), "OTHER": str(other)}
    capsys.readouterr()
    with store_locked(site, "mirror run (another one)"):
        assert ExitStatus.FAILED == main([*(places.get(a, a) for a in command), *site.opts])
    assert "locked by another mirror" in capsys.readouterr().err
    assert rewritten == (site.posts / "a.md").read_bytes()
    assert site.path(1).exists()
    with site.manifest() as manifest:
        assert {"mirrored": 2} == {k: v for k, v in manifest.counts().items() if v}


# --- gc ---------------------------------------------------------------------------------------


def test_gc_lists_then_applies(
    site: Site, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    """Objects no post names are listed with their bytes, then deleted rows first with --apply."""
    site.write("a.md", 1, 2)
    site.write("b.md", 3, 4)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    (site.posts / "b.md").unlink()
    site.write("a.md", 1)
    capsys.readouterr()
    assert ExitStatus.OK == main(["gc", *site.opts, str(site.posts)])
    out, err = out_err(capsys)
    assert 3 == len(out.splitlines())
    for n in (2, 3, 4):
        line = f"would remove {site.path(n).relative_to(site.store).as_posix()}  "
        assert line + f"{len(image_n(n))} bytes" in out
    freed = sum(len(image_n(n)) for n in (2, 3, 4))
    assert f"1 objects kept, 3 unneeded ({freed} bytes); run with --apply" in err
    assert all(site.path(n).exists() for n in (1, 2, 3, 4))

    assert ExitStatus.OK == main(["gc", "--apply", *site.opts, str(site.posts)])
    out, err = out_err(capsys)
    assert 3 == out.count("removed ")
    assert "3 sources kept without object" in err
    assert [True, False, False, False] == [site.path(n).exists() for n in (1, 2, 3, 4)]
    with site.manifest() as manifest:
        assert [sha(image_n(1))] == [row.sha256 for row in manifest.objects()]
        row = manifest.get(src(3))
        assert row is not None
        assert ("failed", "collected", None) == (row.status, row.reason, row.sha256)
    assert ExitStatus.OK == main(["verify", *site.opts])
    # The rows kept let a post that names a collected source again get it fetched again.
    site.write("b.md", 3)
    before = Counter(origin.hits)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    assert {"/img/3.jpg": 1} == dict(origin.hits - before)


def test_gc_keeps_what_rewritten_posts_show_whatever_the_base_url(
    tmp_path: Path, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    """Posts rewritten to a CDN base URL keep their objects even when gc runs with another base."""
    site = make_site(tmp_path, origin, extra="[rewrite]\nbase_url = 'https://cdn.example/m/'\n")
    site.write("a.md", 1, 2)
    assert ExitStatus.OK == main(["run", *site.opts, str(site.posts)])
    assert f"https://cdn.example/m/{sha(image_n(1))[:2]}/" in (site.posts / "a.md").read_text()
    capsys.readouterr()
    default = ["--store", str(site.store)]
    assert ExitStatus.OK == main(["gc", "--apply", *default, str(site.posts)])
    assert "2 objects kept, 0 unneeded" in capsys.readouterr().err
    assert site.path(1).exists()
    assert site.path(2).exists()


def test_gc_keeps_served_objects_and_collects_old_strays(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """An open-mode served object stays; an old stray and a stale temp go; a young stray stays."""
    site.write("a.md", 1)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    served = store_object(site.store, image_n(5), "jpg")
    with site.manifest(write=True) as manifest:
        result = SourceResult(
            "http://open.example/5.jpg", "mirrored", sha256=served, ext="jpg", size=1
        )
        manifest.record_served("http://open.example/5.jpg", result)
    old = object_file(site.store, store_object(site.store, image_n(6), "jpg"), "jpg")
    young = object_file(site.store, store_object(site.store, image_n(7), "jpg"), "jpg")
    past = time.time() - 7200
    os.utime(old, (past, past))
    temp = site.path(1).parent / f".{site.path(1).name}.0123456789ab.tmp"
    temp.write_bytes(b"half")
    os.utime(temp, (past, past))
    capsys.readouterr()
    assert ExitStatus.OK == main(["gc", "--apply", *site.opts, str(site.posts)])
    out, err = out_err(capsys)
    removed = old.relative_to(site.store)
    assert [f"removed {removed}  {len(image_n(6))} bytes  (no manifest row)"] == out.splitlines()
    assert "1 stale temp files removed" in err
    assert object_file(site.store, served, "jpg").exists()
    assert young.exists()
    assert not old.exists()
    assert not temp.exists()


@pytest.mark.parametrize(
    ("what", "message"),
    [("missing", "no such file or folder"), ("empty", "no posts under the given PATHs")],
)
def test_gc_refuses_without_posts(
    site: Site, what: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped PATH or a folder without posts is a usage error, never "collect everything"."""
    site.write("a.md", 1)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    target = tmp_path / "typo"
    if what == "empty":
        target.mkdir()
    capsys.readouterr()
    assert ExitStatus.USAGE == main(["gc", "--apply", *site.opts, str(target)])
    assert message in capsys.readouterr().err
    assert site.path(1).exists()


# --- export -----------------------------------------------------------------------------------


def test_export_everything_then_again(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """Without PATHs every mirrored object is copied; a second export only skips them."""
    site.write("a.md", 1, 2)
    site.write("b.md", 3)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    dest = site.store.parent / "public"
    capsys.readouterr()
    assert ExitStatus.OK == main(["export", *site.opts, str(dest)])
    total = sum(len(image_n(n)) for n in (1, 2, 3))
    assert f"export: 3 files ({total} bytes) written; 0 already there; 0 missing" in (
        capsys.readouterr().err
    )
    for n in (1, 2, 3):
        exported = dest / site.path(n).relative_to(site.store / "objects")
        assert image_n(n) == exported.read_bytes()
        assert site.path(n).stat().st_ino != exported.stat().st_ino
    assert [] == [p for p in dest.rglob("*") if p.name.endswith(".tmp")]
    assert ExitStatus.OK == main(["export", *site.opts, str(dest)])
    assert "0 files (0 bytes) written; 3 already there" in capsys.readouterr().err


def test_export_only_what_out_posts_need(
    tmp_path: Path, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    """With PATHs (posts written by run --out), only the objects they point at are exported."""
    site = make_site(tmp_path, origin, extra="[rewrite]\nbase_url = 'https://cdn.example/m/'\n")
    site.write("a.md", 1, 2)
    site.write("b.md", 3)
    public = site.store.parent / "public_posts"
    assert ExitStatus.OK == main(["run", *site.opts, "--out", str(public), str(site.posts)])
    (public / "b.md").unlink()
    dest = site.store.parent / "upload"
    capsys.readouterr()
    assert ExitStatus.OK == main(["export", *site.opts, str(dest), str(public)])
    names = sorted(p.name for p in dest.rglob("*.jpg"))
    assert sorted(site.path(n).name for n in (1, 2)) == names


def test_export_link_and_its_copy_fallback(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--link hard-links; where a link is impossible (another file system) it copies."""
    site.write("a.md", 1)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    linked = site.store.parent / "linked"
    assert ExitStatus.OK == main(["export", "--link", *site.opts, str(linked)])
    assert "1 of them hard-linked" in capsys.readouterr().err
    assert (
        site.path(1).stat().st_ino
        == (linked / site.path(1).relative_to(site.store / "objects")).stat().st_ino
    )

    def cross_device(src: object, dst: object, **dir_fds: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    copied = site.store.parent / "copied"
    assert ExitStatus.OK == main(["export", "--link", *site.opts, str(copied)])
    assert "1 files" in capsys.readouterr().err
    target = copied / site.path(1).relative_to(site.store / "objects")
    assert image_n(1) == target.read_bytes()
    assert site.path(1).stat().st_ino != target.stat().st_ino


def test_export_reports_missing_objects(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """An object a row names but the store lacks is listed and makes the exit status 1."""
    site.write("a.md", 1, 2)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    site.path(2).unlink()
    capsys.readouterr()
    dest = site.store.parent / "public"
    assert ExitStatus.INCOMPLETE == main(["export", *site.opts, str(dest)])
    out, err = out_err(capsys)
    name = site.path(2).relative_to(site.store / "objects").as_posix()
    assert [f"missing  {name}  (not in the store)"] == out.splitlines()
    assert "1 files" in err
    assert "1 missing" in err


# --- rewrite --revert -------------------------------------------------------------------------


def odd_post(site: Site) -> bytes:
    """A post with a BOM, CRLF, an entity, trailing spaces and bytes that are not UTF-8."""
    data = (
        b"\xef\xbb\xbf\r\n---\r\ntitle: 'odd'\r\nheadimg: " + f"{WRAP}{src(1)}".encode() + b"\r\n"
        b"---\r\n\r\n<p>caf\xe9 &amp; \xff  \r\n"
        + f'<img src="{WRAP}{src(2)}" data-size="60,40">  \r\n\r\n'.encode()
        + f"![x]({WRAP}{src(3)})\r\n".encode()
    )
    (site.posts / "odd.md").write_bytes(data)
    return data


def test_revert_restores_posts_byte_for_byte(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a real run, --revert makes every post byte-identical to what it was, and forgets."""
    originals = {"odd.md": odd_post(site), "a.md": site.write("a.md", 1, 4), "c.md": b"plain\n"}
    (site.posts / "c.md").write_bytes(b"plain\n")
    assert ExitStatus.OK == main(["run", *site.opts, str(site.posts)])
    assert originals["odd.md"] != (site.posts / "odd.md").read_bytes()
    assert originals["a.md"] != (site.posts / "a.md").read_bytes()
    capsys.readouterr()
    assert ExitStatus.OK == main(["rewrite", "--revert", *site.opts, str(site.posts)])
    assert "reverted 6 references in 2 posts" in capsys.readouterr().err
    assert originals == {name: (site.posts / name).read_bytes() for name in originals}
    with site.manifest() as manifest:
        assert [] == manifest.spans_for(str(site.posts / "odd.md"))
    assert ExitStatus.OK == main(["rewrite", "--revert", *site.opts, str(site.posts)])
    assert "reverted 0 references" in capsys.readouterr().err


def test_revert_undoes_two_generations(
    site: Site, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    """A post rewritten by two runs (its second image came later) is undone newest first."""
    original = site.write("a.md", 1, 2)
    origin.broken.add("/img/2.jpg")
    assert ExitStatus.INCOMPLETE == main(["run", *site.opts, str(site.posts)])
    first = (site.posts / "a.md").read_bytes()
    origin.broken.clear()
    # --only-failed retries it now: no waiting for the clock to pass its failure_backoff.
    assert ExitStatus.OK == main(["run", "--only-failed", *site.opts, str(site.posts)])
    assert first != (site.posts / "a.md").read_bytes()
    with site.manifest() as manifest:
        assert [2, 1] == [g.generation for g in manifest.spans_for(str(site.posts / "a.md"))]
    assert ExitStatus.OK == main(["rewrite", "--revert", *site.opts, str(site.posts)])
    assert original == (site.posts / "a.md").read_bytes()


def test_revert_leaves_an_edited_post_alone(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """A post edited after the run keeps its edit, with a warning and exit 1; others revert."""
    original = site.write("a.md", 1)
    other = site.write("b.md", 2)
    assert ExitStatus.OK == main(["run", *site.opts, str(site.posts)])
    edited = (site.posts / "a.md").read_bytes() + b"\nan edit\n"
    (site.posts / "a.md").write_bytes(edited)
    capsys.readouterr()
    assert ExitStatus.INCOMPLETE == main(["rewrite", "--revert", *site.opts, str(site.posts)])
    err = capsys.readouterr().err
    assert f"left {site.posts / 'a.md'} alone" in err
    assert "1 left alone" in err
    assert edited == (site.posts / "a.md").read_bytes()
    assert other == (site.posts / "b.md").read_bytes()
    assert original != edited
    with site.manifest() as manifest:
        assert 1 == len(manifest.spans_for(str(site.posts / "a.md")))


def test_revert_dry_run_prints_the_diff_and_writes_nothing(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """--revert --dry-run shows what would come back and changes neither posts nor manifest."""
    site.write("a.md", 1)
    assert ExitStatus.OK == main(["run", *site.opts, str(site.posts)])
    rewritten = (site.posts / "a.md").read_bytes()
    capsys.readouterr()
    assert ExitStatus.OK == main(["rewrite", "--revert", "--dry-run", *site.opts, str(site.posts)])
    out, err = out_err(capsys)
    assert f"+headimg: '{WRAP}{src(1)}'" in out
    assert "would revert 2 references in 1 post" in err
    assert rewritten == (site.posts / "a.md").read_bytes()
    with site.manifest() as manifest:
        assert 1 == len(manifest.spans_for(str(site.posts / "a.md")))


def test_revert_with_map_is_a_usage_error(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--revert takes its spans from the manifest; a map, --rewrap or --out make no sense."""
    argv = ["rewrite", "--revert", "--out", str(tmp_path / "o"), *site.opts, str(site.posts)]
    assert ExitStatus.USAGE == main(argv)
    assert "--revert cannot be combined" in capsys.readouterr().err


def test_rewrite_and_rewrap_in_place_can_be_reverted(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mirror rewrite` (manifest map) and `--rewrap` record their spans; --revert undoes both."""
    original = site.write("a.md", 1, 2)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    assert ExitStatus.OK == main(["rewrite", *site.opts, str(site.posts)])
    rewritten = (site.posts / "a.md").read_bytes()
    assert original != rewritten
    assert ExitStatus.OK == main(["rewrite", "--revert", *site.opts, str(site.posts)])
    assert original == (site.posts / "a.md").read_bytes()
    rewrap = ["rewrite", "--rewrap", "https://img.example.com/", *site.opts, str(site.posts)]
    assert ExitStatus.OK == main(rewrap)
    assert b"https://img.example.com/?" in (site.posts / "a.md").read_bytes()
    assert ExitStatus.OK == main(["rewrite", "--revert", *site.opts, str(site.posts)])
    assert original == (site.posts / "a.md").read_bytes()


# --- touch only what mirror can prove it wrote ---------------------------------------------------


def foreign_object(site: Site, data: bytes = b"someone else's file") -> Path:
    """A file under objects/ named like an object, whose bytes do not hash to its name."""
    name = "ab" + "0" * 62
    path = site.store / "objects" / "ab" / f"{name}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    past = time.time() - 7200  # old enough that gc would otherwise collect it
    os.utime(path, (past, past))
    return path


def test_repair_leaves_a_corrupt_file_no_row_names(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --repair deletes corrupt files a row names, never one nothing proves is mirror's."""
    site.write("a.md", 1)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    foreign = foreign_object(site)
    capsys.readouterr()
    assert ExitStatus.INCOMPLETE == main(["verify", "--repair", *site.opts])
    out, _err = out_err(capsys)
    assert b"someone else's file" == foreign.read_bytes()
    assert any("left alone" in line and foreign.name in line for line in out.splitlines())
    assert site.path(1).exists()


def test_gc_leaves_a_stray_whose_bytes_do_not_match_its_name(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """gc --apply removes old strays only when their bytes prove mirror wrote them."""
    site.write("a.md", 1)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    foreign = foreign_object(site)
    capsys.readouterr()
    assert ExitStatus.OK == main(["gc", "--apply", *site.opts, str(site.posts)])
    _out, err = out_err(capsys)
    assert b"someone else's file" == foreign.read_bytes()
    assert "1 files under objects/ were left alone" in err


def test_export_never_overwrites_another_file(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """A different file where an object would go is left alone and reported; exit 1."""
    site.write("a.md", 1, 2)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    dest = site.store.parent / "public"
    taken = dest / site.path(1).relative_to(site.store / "objects")
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"the publisher's own file")
    capsys.readouterr()
    assert ExitStatus.INCOMPLETE == main(["export", *site.opts, str(dest)])
    out, err = out_err(capsys)
    assert b"the publisher's own file" == taken.read_bytes()
    assert [f"conflict {site.path(1).relative_to(site.store / 'objects').as_posix()}"] == [
        line.split("  ")[0] for line in out.splitlines()
    ]
    assert "1 left alone" in err
    assert image_n(2) == (dest / site.path(2).relative_to(site.store / "objects")).read_bytes()


def test_a_store_known_by_its_manifest_gets_the_marker_on_its_next_write(site: Site) -> None:
    """A store from before markers (manifest only) is marked by the next writing command."""
    site.write("a.md", 1)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    marker = site.store / ".mirror-store"
    marker.unlink()
    assert ExitStatus.OK == main(["gc", *site.opts, str(site.posts)])
    assert not marker.exists()  # gc without --apply only reads
    assert ExitStatus.OK == main(["gc", "--apply", *site.opts, str(site.posts)])
    assert marker.is_file()


def test_revert_from_another_working_folder(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run site/posts` in one folder, `rewrite --revert ../site/posts` in another: reverted."""
    original = site.write("a.md", 1)
    monkeypatch.chdir(tmp_path)
    assert ExitStatus.OK == main(["run", *site.opts, "site/posts"])
    assert original != (site.posts / "a.md").read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert ExitStatus.OK == main(["rewrite", "--revert", *site.opts, "../site/posts"])
    assert "reverted 2 references in 1 post" in capsys.readouterr().err
    assert original == (site.posts / "a.md").read_bytes()


def test_revert_finds_an_older_journal_keyed_by_the_path_as_typed(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rewrite an older mirror recorded under a relative key is reverted from anywhere; the
    same relative key recorded for another post elsewhere is left for that post."""
    from mirror.config import load_config
    from mirror.extract import Extractor
    from mirror.manifest import open_manifest
    from mirror.models import Post
    from mirror.rewrite import rewrite
    from mirror.scan import write_recorded

    original = site.write("a.md", 1)
    twin = tmp_path / "other" / "site" / "posts" / "a.md"
    twin.parent.mkdir(parents=True)
    twin.write_bytes(original.replace(b"'a.md'", b"'twin'"))
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts), str(twin)])
    config = load_config(site.config)
    extractor = Extractor(config.scan)
    relative = Path("site/posts/a.md")
    folders = {f: (f / relative).read_bytes() for f in (tmp_path, tmp_path / "other")}

    async def older_mirror() -> None:
        async with open_manifest(config) as manifest:
            mapping = await manifest.mirrored_mapping(config.base_url)
            # What an older mirror did: the journal keyed by the path as typed in its folder.
            for folder, data in folders.items():
                monkeypatch.chdir(folder)
                result = rewrite(data, mapping, extractor, "a.md")
                post = Post(relative, "a.md", data)
                assert await write_recorded(post, result.data, result.spans, manifest)

    asyncio.run(older_mirror())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert ExitStatus.OK == main(["rewrite", "--revert", *site.opts, "../site/posts"])
    assert "reverted 2 references in 1 post" in capsys.readouterr().err
    assert original == (site.posts / "a.md").read_bytes()
    with site.manifest() as manifest:
        assert 1 == len(manifest.spans_for("site/posts/a.md"))  # the twin's, kept for it
    assert ExitStatus.OK == main(["rewrite", "--revert", *site.opts, str(twin)])
    assert original.replace(b"'a.md'", b"'twin'") == twin.read_bytes()
