"""
Hostile post trees (issue #13): FIFOs, devices, sockets, folders and huge files named like posts,
posts edited while they are rewritten, temp files left by a killed run, symlinks planted in output
trees. Each test reproduces the attack on real files, bounded in time (pytest-timeout) and memory
(an address-space cap), so the code before the fix fails it instead of hanging or filling memory.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import make_image, store_object, threaded_server
from test_store_contract import DEAD_WRITER, WORKTREE

from mirror import scan, swap
from mirror.atomic import atomic_write, temp_name, write_temp
from mirror.cli import main
from mirror.config import ScanConfig
from mirror.errors import ExitStatus, StoreError
from mirror.manifest import Manifest, SourceResult, manifest_path
from mirror.marker import mark_out
from mirror.models import Post
from mirror.scan import find_posts, iter_posts, write_post
from mirror.swap import CONFLICT_SUFFIX

W = "http://proxy.example/?"
REF = f'<img src="{W}http://origin.example/a.jpg">\n'
CAP = 1000  # scan.max_post_bytes in these tests
JPEG = make_image("JPEG", (60, 40))


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


@pytest.fixture
def memory_cap() -> Iterator[None]:
    """Cap the address space 1 GiB above its size now, so a runaway read fails fast."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + (1 << 30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Path]:
    """A posts folder holding two real posts and every kind of file that is not one."""
    posts = tmp_path / "p"
    (posts / "dir.md").mkdir(parents=True)
    (posts / "good.md").write_text("\n---\ntitle: good\n---\n" + REF, encoding="utf-8")
    (posts / "dir.md" / "inner.md").write_text("inner\n" + REF, encoding="utf-8")
    os.mkfifo(posts / "fifo.md")
    (posts / "zero.md").symlink_to("/dev/zero")
    (posts / "pipe-link.md").symlink_to("fifo.md")
    (posts / "big.md").write_bytes(b"x" * (CAP + 1))
    server = socket.socket(socket.AF_UNIX)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(posts)  # a relative name: socket paths are limited to 108 bytes
        server.bind("sock.md")
    try:
        yield posts
    finally:
        server.close()


def _config(tmp_path: Path, port: int = 9) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f"[scan]\nmax_post_bytes = {CAP}\n"
        "wrappers = ['^http://proxy\\.example/\\?(?P<url>.+)$']\n"
        "[fetch]\nsources = ['origin']\nattempts = 1\n"
        f"[network]\nconnect_to = ['origin.example:80:127.0.0.1:{port}']\n"
        f"[store]\npath = '{tmp_path / 'cache'}'\n",
        encoding="utf-8",
    )
    return config


def _hostile_warnings(posts: Path) -> list[str]:
    return [
        f"skipped {posts / 'fifo.md'}: it is a FIFO (named pipe), not a regular file",
        f"skipped {posts / 'pipe-link.md'}: it is a FIFO (named pipe), not a regular file",
        f"skipped {posts / 'sock.md'}: it is a socket, not a regular file",
        f"skipped {posts / 'zero.md'}: it is a symlink to /dev/zero, outside {posts}",
        f"skipped {posts / 'zero.md'}: it is a character device, not a regular file",
        f"skipped {posts / 'big.md'}: {CAP + 1} bytes is over scan.max_post_bytes ({CAP})",
    ]


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("memory_cap")
def test_scan_skips_what_is_not_a_post_with_a_warning_each(
    hostile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """scan lists the real posts and names every FIFO, socket, device and huge file it skipped."""
    argv = ["scan", "--json", "--config", str(_config(tmp_path))]
    tracemalloc.start()
    try:
        status = main([*argv, str(hostile), str(hostile / "zero.md"), str(hostile / "fifo.md")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out, err = capsys.readouterr()
    assert ExitStatus.OK == status
    assert ["good.md", "dir.md/inner.md"] == [json.loads(line)["post"] for line in out.splitlines()]
    assert [] == [line for line in _hostile_warnings(hostile) if line not in err]
    assert peak < 16 * 1024 * 1024


@pytest.fixture
def origin() -> Iterator[int]:
    """origin.example on a local port: every path is the same 60x40 JPEG."""

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=JPEG, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/{tail:.*}", image)
    with threaded_server(app) as port:
        yield port


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("memory_cap")
def test_run_mirrors_the_real_posts_and_skips_the_rest(
    hostile: Path, tmp_path: Path, origin: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """run finishes, rewrites the two real posts, warns about each hostile file, and exits 0."""
    argv = ["run", "--config", str(_config(tmp_path, origin))]
    status = main([*argv, str(hostile), str(hostile / "zero.md"), str(hostile / "fifo.md")])
    err = capsys.readouterr().err
    assert ExitStatus.OK == status
    assert [] == [line for line in _hostile_warnings(hostile) if line not in err]
    for post in (hostile / "good.md", hostile / "dir.md" / "inner.md"):
        assert W not in post.read_text(encoding="utf-8")
    assert b"x" * (CAP + 1) == (hostile / "big.md").read_bytes()


def test_a_post_that_grows_past_the_cap_while_read_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cap holds on the bytes read, not only on the size the file had when stat'ed."""
    path = tmp_path / "a.md"
    path.write_bytes(b"x" * 10)
    with path.open("ab") as grower:
        (found,) = find_posts([path], ScanConfig(max_post_bytes=CAP))
        real_stat = Path.stat

        def stat_then_grow(self: Path, **kwargs: bool) -> os.stat_result:
            result = real_stat(self, **kwargs)
            grower.write(b"y" * 2 * CAP)  # a generator appending between stat and read
            grower.flush()
            return result

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Path, "stat", stat_then_grow)
            assert None is scan.read_post(*found, ScanConfig(max_post_bytes=CAP))
    assert f"grew over scan.max_post_bytes ({CAP})" in caplog.text


# --- a post edited while mirror replaces it (issue #13, row 11) ---------------------------------


def _read_one(folder: Path) -> Post:
    (post,) = iter_posts([folder], ScanConfig())
    return post


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_append_during_the_swap_is_put_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A paragraph appended between the last check and the rename survives, with a warning."""
    path = tmp_path / "a.md"
    path.write_bytes(b"old post\n")
    post = _read_one(tmp_path)

    def append() -> None:
        with path.open("ab") as editor:
            editor.write(b"a new paragraph\n")

    assert not write_post(post, b"mirror's version", before_replace=append)
    assert b"old post\na new paragraph\n" == path.read_bytes()
    assert ["a.md"] == _names(tmp_path)
    assert f"left {path} alone: it was edited while mirror replaced it" in caplog.text


def test_an_editor_save_by_rename_during_the_swap_is_put_back(tmp_path: Path) -> None:
    """An editor saving by rename at the worst moment keeps its version; nothing is left over."""
    path = tmp_path / "a.md"
    path.write_bytes(b"old post\n")
    post = _read_one(tmp_path)

    def save() -> None:
        (tmp_path / "a.md~").write_bytes(b"the editor's version\n")
        (tmp_path / "a.md~").replace(path)

    assert not write_post(post, b"mirror's version", before_replace=save)
    assert (b"the editor's version\n", ["a.md"]) == (path.read_bytes(), _names(tmp_path))


def test_without_rename_exchange_the_edit_is_written_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where renameat2 is missing, the edited bytes are read back from the held file."""
    monkeypatch.setattr("mirror.swap._renameat2", lambda: None)
    path = tmp_path / "a.md"
    path.write_bytes(b"old post\n")
    path.chmod(0o640)
    post = _read_one(tmp_path)

    def append() -> None:
        with path.open("ab") as editor:
            editor.write(b"more\n")

    assert not write_post(post, b"mirror's version", before_replace=append)
    assert (b"old post\nmore\n", 0o640) == (path.read_bytes(), path.stat().st_mode & 0o777)
    assert ["a.md"] == _names(tmp_path)


def test_a_save_racing_the_swap_back_is_kept_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Even an editor saving between the swap and the swap back loses nothing: both are named."""
    path = tmp_path / "a.md"
    path.write_bytes(b"old post\n")
    older = tmp_path / f"a.md{CONFLICT_SUFFIX}"
    older.write_bytes(b"an older conflict")
    post = _read_one(tmp_path)
    real_keep = swap._keep
    calls: list[str] = []

    def keep_then_save(dir_fd: int, entry: str, name: str) -> str:
        kept = real_keep(dir_fd, entry, name)
        if not calls:  # the worst moment: right before the swap back
            (tmp_path / "a.md~").write_bytes(b"saved over mirror's version\n")
            (tmp_path / "a.md~").replace(path)
        calls.append(kept)
        return kept

    def append() -> None:
        with path.open("ab") as editor:
            editor.write(b"appended\n")

    monkeypatch.setattr(swap, "_keep", keep_then_save)
    assert not write_post(post, b"mirror's version", before_replace=append)
    newest = tmp_path / f"a.md{CONFLICT_SUFFIX}-2"
    assert {
        "a.md": b"old post\nappended\n",
        older.name: b"an older conflict",
        newest.name: b"saved over mirror's version\n",
    } == {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert f"a version saved meanwhile is kept as {newest}" in caplog.text


def test_without_rename_exchange_a_save_racing_the_write_back_keeps_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without renameat2, an edit that cannot go back in place is saved beside the post."""
    monkeypatch.setattr("mirror.swap._renameat2", lambda: None)
    path = tmp_path / "a.md"
    path.write_bytes(b"old post\n")
    post = _read_one(tmp_path)
    real_write_temp = write_temp
    calls: list[str] = []

    def write_temp_then_save(*args: Any, **kwargs: Any) -> tuple[str, os.stat_result]:
        made = real_write_temp(*args, **kwargs)
        calls.append(made[0])
        if len(calls) == 2:  # writing the edit back: an editor saves over the post right now
            (tmp_path / "a.md~").write_bytes(b"saved by the editor\n")
            (tmp_path / "a.md~").replace(path)
        return made

    def append() -> None:
        with path.open("ab") as editor:
            editor.write(b"appended\n")

    monkeypatch.setattr(swap, "write_temp", write_temp_then_save)
    assert not write_post(post, b"mirror's version", before_replace=append)
    kept = tmp_path / f"a.md{CONFLICT_SUFFIX}"
    assert {"a.md": b"saved by the editor\n", kept.name: b"old post\nappended\n"} == {
        p.name: p.read_bytes() for p in tmp_path.iterdir()
    }
    assert f"the edit is kept as {kept}" in caplog.text


def test_an_edit_before_the_write_leaves_the_post_alone(tmp_path: Path) -> None:
    """A post that changed since it was read is not replaced, and no temp file is left."""
    path = tmp_path / "a.md"
    path.write_bytes(b"old")
    post = _read_one(tmp_path)
    path.write_bytes(b"regenerated")
    assert not write_post(post, b"mirror's version")
    assert (b"regenerated", ["a.md"]) == (path.read_bytes(), _names(tmp_path))


def test_a_quiet_swap_replaces_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """With nobody editing, the new bytes land, the mode stays, and only the post is left."""
    path = tmp_path / "a.md"
    path.write_bytes(b"old")
    path.chmod(0o600)
    post = _read_one(tmp_path)
    assert write_post(post, b"new", before_replace=lambda: None)
    assert (b"new", 0o600, ["a.md"]) == (
        path.read_bytes(),
        path.stat().st_mode & 0o777,
        _names(tmp_path),
    )


@pytest.mark.timeout(60)
def test_run_reports_an_edit_made_during_the_rewrite_and_keeps_it(
    tmp_path: Path, origin: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """mirror run exits 1 naming the post, the edit stays, and no rewrite of it is recorded."""
    posts = tmp_path / "p"
    posts.mkdir()
    path = posts / "a.md"
    path.write_text("\n---\ntitle: a\n---\n" + REF, encoding="utf-8")

    def append() -> None:
        with path.open("a", encoding="utf-8") as editor:
            editor.write("An appended paragraph.\n")

    monkeypatch.setattr(scan, "write_post", functools.partial(write_post, before_replace=append))
    status = main(["run", "--config", str(_config(tmp_path, origin)), str(posts)])
    assert ExitStatus.INCOMPLETE == status
    assert f"left {path} alone: it was edited while mirror replaced it" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8").endswith(REF + "An appended paragraph.\n")
    with sqlite3.connect(manifest_path(tmp_path / "cache")) as conn:
        assert [] == conn.execute("SELECT post FROM rewrites").fetchall()
    assert ["a.md"] == _names(posts)


# --- temp files a killed run left beside posts (issue #13, row 13) ------------------------------


def test_run_removes_post_temp_files_at_once_whatever_their_age(
    tmp_path: Path, origin: int
) -> None:
    """Fresh post temps go at once under the store lock; other files that look alike stay."""
    posts = tmp_path / "p"
    (posts / "sub").mkdir(parents=True)
    (posts / "sub" / "a.md").write_text(REF, encoding="utf-8")
    left = [posts / temp_name("a.md"), posts / "sub" / temp_name("b.md" * 80)]
    kept = [posts / temp_name("cover.jpg"), posts / f"a.md{CONFLICT_SUFFIX}"]
    for path in left + kept:
        path.write_bytes(b"half a post")  # written just now: the old 60 s rule kept these
    assert ExitStatus.OK == main(["run", "--config", str(_config(tmp_path, origin)), str(posts)])
    assert ([False, False], [True, True]) == (
        [p.exists() for p in left],
        [p.exists() for p in kept],
    )


def test_run_removes_a_killed_writers_staged_download_at_once(tmp_path: Path, origin: int) -> None:
    """A download staged by a writer that died (kill -9) goes at the next run, however fresh."""
    posts = tmp_path / "p"
    posts.mkdir()
    (posts / "a.md").write_text(REF, encoding="utf-8")
    config = str(_config(tmp_path, origin))
    assert ExitStatus.OK == main(["run", "--config", config, str(posts)])
    staging = tmp_path / "cache" / ".staging"
    dead = [sys.executable, "-c", DEAD_WRITER, str(WORKTREE), str(staging)]
    assert 0 == subprocess.run(dead, check=False, timeout=60).returncode
    assert 1 == len(list(staging.iterdir()))  # seconds old: the one-hour rule alone keeps it
    assert ExitStatus.OK == main(["run", "--config", config, str(posts)])
    assert [] == list(staging.iterdir())


def test_a_dry_run_removes_no_temp_file(tmp_path: Path) -> None:
    """A dry run takes no store lock, so it may not assume no mirror is writing: temps stay."""
    posts = tmp_path / "p"
    posts.mkdir()
    (posts / "a.md").write_text(REF, encoding="utf-8")
    temp = posts / temp_name("a.md")
    temp.write_bytes(b"half")
    argv = ["run", "--dry-run", "--config", str(_config(tmp_path)), str(posts)]
    assert ExitStatus.INCOMPLETE == main(argv)  # the reference is "skipped: dry-run"
    assert temp.exists()


# --- symlinks planted in output trees -----------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim.txt").write_bytes(b"precious")
    return folder


def _rewrite_out(tmp_path: Path, posts: Path, out: Path) -> int:
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"http://origin.example/a.jpg": "/m/a.jpg"}), encoding="utf-8")
    argv = ["rewrite", "--config", str(_config(tmp_path)), "--map", str(mapping), "--out"]
    return main([*argv, str(out), str(posts)])


def test_out_refuses_a_symlink_planted_at_the_target(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out never writes through a symlink at a post's place; the file it points at stays."""
    posts, out = tmp_path / "p", tmp_path / "out"
    posts.mkdir()
    out.mkdir()
    mark_out(out)  # an earlier --out, so the symlink is what stops the write
    (posts / "a.md").write_text(REF, encoding="utf-8")
    (out / "a.md").symlink_to(outside / "victim.txt")
    assert ExitStatus.OK != _rewrite_out(tmp_path, posts, out)
    assert f"refusing to write {out / 'a.md'}: it is a symlink" in capsys.readouterr().err
    assert (b"precious", True) == (
        (outside / "victim.txt").read_bytes(),
        (out / "a.md").is_symlink(),
    )


def test_out_refuses_a_symlinked_folder_on_the_way(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder inside --out that is a symlink out of it is refused; nothing lands outside."""
    posts, out = tmp_path / "p", tmp_path / "out"
    (posts / "sub").mkdir(parents=True)
    out.mkdir()
    mark_out(out)  # an earlier --out, so the symlink is what stops the write
    (posts / "sub" / "victim.txt.md").write_text(REF, encoding="utf-8")
    (out / "sub").symlink_to(outside)
    assert ExitStatus.OK != _rewrite_out(tmp_path, posts, out)
    assert f"refusing to write through {out / 'sub'}: it is a symlink" in capsys.readouterr().err
    assert ["victim.txt"] == _names(outside)


def test_out_still_writes_a_fresh_tree(tmp_path: Path) -> None:
    """Without planted links, --out makes its folders and writes every post there."""
    posts, out = tmp_path / "p", tmp_path / "out" / "deep"
    (posts / "a" / "b").mkdir(parents=True)
    (posts / "a" / "b" / "c.md").write_text(REF, encoding="utf-8")
    assert ExitStatus.OK == _rewrite_out(tmp_path, posts, out)
    assert '<img src="/m/a.jpg">\n' == (out / "a" / "b" / "c.md").read_text(encoding="utf-8")


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, str]:
    """A store holding one object a source names; returns its root and the object's relpath."""
    root = tmp_path / "cache"
    sha = store_object(root, JPEG, "jpg")
    source = "http://origin.example/a.jpg"
    with Manifest(manifest_path(root)) as manifest:
        manifest.record_results(
            [SourceResult(source, "mirrored", sha256=sha, ext="jpg", size=len(JPEG))]
        )
    return root, f"{sha[:2]}/{sha}.jpg"


def _export(tmp_path: Path, root: Path, dest: Path) -> int:
    return main(["export", "--config", str(_config(tmp_path)), "--store", str(root), str(dest)])


@pytest.mark.parametrize("planted", ["shard", "object"])
def test_export_refuses_symlinks_planted_in_its_folder(
    tmp_path: Path,
    store: tuple[Path, str],
    outside: Path,
    planted: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """export never follows a symlink inside DIR, at a folder or at the object's own place."""
    root, rel = store
    dest = tmp_path / "public"
    if planted == "shard":
        dest.mkdir()
        (dest / rel.split("/")[0]).symlink_to(outside)
    else:
        (dest / rel).parent.mkdir(parents=True)
        (dest / rel).symlink_to(outside / "victim.txt")
    assert ExitStatus.OK != _export(tmp_path, root, dest)
    assert "refusing to write" in capsys.readouterr().err
    assert (["victim.txt"], b"precious") == (
        _names(outside),
        (outside / "victim.txt").read_bytes(),
    )


def test_export_refuses_a_symlinked_object_even_of_the_same_size(
    tmp_path: Path, store: tuple[Path, str], outside: Path
) -> None:
    """A planted link to a file of the object's size is not taken as the object being there."""
    root, rel = store
    (outside / "victim.txt").write_bytes(b"p" * len(JPEG))
    dest = tmp_path / "public"
    (dest / rel).parent.mkdir(parents=True)
    (dest / rel).symlink_to(outside / "victim.txt")
    assert ExitStatus.OK != _export(tmp_path, root, dest)
    assert b"p" * len(JPEG) == (outside / "victim.txt").read_bytes()


def test_atomic_write_with_a_root_refuses_a_link_swapped_in(tmp_path: Path, outside: Path) -> None:
    """The refusal holds for the library call too, with a StoreError naming the link."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to(outside)
    with pytest.raises(StoreError, match="is a symlink inside"):
        atomic_write(out / "a" / "victim.txt", b"x", root=out)
    assert b"precious" == (outside / "victim.txt").read_bytes()


# --- a real full disk before the manifest exists (issue #13, row 14) ----------------------------


def _mount_script(store: Path, lines: list[str]) -> list[str]:
    """A command running ``lines`` in a private mount namespace with a 32 KiB tmpfs at ``store``."""
    body = [f"mount -t tmpfs -o size=32k tmpfs '{store}' || exit 97", *lines]
    return ["unshare", "--map-root-user", "--mount", "sh", "-c", "\n".join(body)]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Path:
    """A folder a 32 KiB tmpfs can be mounted on in a user+mount namespace, or a skip."""
    store = tmp_path / "cache"
    store.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a small tmpfs")
    probe = subprocess.run(_mount_script(store, []), capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr!r}")
    return store


@pytest.mark.timeout(120)
def test_run_on_a_really_full_disk_leaves_no_half_made_manifest(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    """On a 32 KiB tmpfs run says the disk is full and leaves no manifest; with room it works."""
    posts = tmp_path / "p"
    posts.mkdir()
    (posts / "a.md").write_text("no images here\n", encoding="utf-8")
    mirror = f"'{sys.executable}' -m mirror"
    opts = f"--config '{_config(tmp_path)}' --store '{small_tmpfs}'"
    lines = [
        f"{mirror} run {opts} '{posts}'; echo \"first run: $?\"",
        f"ls -A '{small_tmpfs}'; echo listed",
        f"{mirror} verify --store '{small_tmpfs}'; echo \"verify: $?\"",
        f"mount -o remount,size=4m '{small_tmpfs}' || exit 98",
        f"{mirror} run {opts} '{posts}'; echo \"second run: $?\"",
        f"{mirror} verify --store '{small_tmpfs}'; echo \"verify: $?\"",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(scan.__file__).parents[1])}
    done = subprocess.run(
        _mount_script(small_tmpfs, lines),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert 0 == done.returncode, done.stderr
    # verify exits 2 after the failure: no manifest at all, rather than one "needing an upgrade".
    # Exit 3: the run itself failed; the store's marker is all that stands (the store lock is
    # taken once the manifest is open: a PostgreSQL manifest's lock lives in its schema).
    expected = "first run: 3\n.mirror-store\nlisted\nverify: 2\nsecond run: 0\nverify: 0\n"
    assert expected == done.stdout
    assert "the disk is full while creating it" in done.stderr
    assert "cannot rollback" not in done.stderr
