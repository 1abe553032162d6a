"""Tests for the store package: atomic_write, the store config and open_store, and what only the
local folder backend does (the contract both backends keep is test_store_contract)."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirror.config import Config, S3Config, StoreConfig, config_from_mapping
from mirror.errors import ConfigError, StoreError
from mirror.store import FolderStore, ObjectStore, atomic_write, local_url, open_store
from mirror.store.s3 import ByteBudget

DATA = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"
SHA = hashlib.sha256(DATA).hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_local_url_depends_only_on_the_bytes() -> None:
    """The local URL is the base URL, the shard and the object name."""
    assert f"/mirror/{SHA[:2]}/{SHA}.png" == local_url("/mirror/", SHA, "png")


async def test_an_empty_folder_store_lists_nothing_and_makes_no_folder(tmp_path: Path) -> None:
    """A store that was never written has no objects, and reading it creates nothing."""
    async with FolderStore(tmp_path / "none") as store:
        assert [] == [info async for info in store.objects()]
        assert None is await store.stat(SHA, "jpg")
    assert not (tmp_path / "none").exists()


def test_folder_store_stands_for_the_protocol(tmp_path: Path) -> None:
    """FolderStore is an ObjectStore; its keys are the public layout's paths."""
    store: ObjectStore = FolderStore(tmp_path)
    assert f"objects/{SHA[:2]}/{SHA}.gif" == store.key(SHA, "gif")


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    """atomic_write creates a new file, then replaces it whole."""
    post = tmp_path / "post.md"
    atomic_write(post, b"one")
    atomic_write(post, b"two")
    assert b"two" == post.read_bytes()
    assert ["post.md"] == _files(tmp_path)


def test_atomic_write_keeps_mode(tmp_path: Path) -> None:
    """The replaced file keeps the original's permission bits."""
    post = tmp_path / "post.md"
    post.write_bytes(b"old")
    post.chmod(0o640)
    atomic_write(post, b"new", fsync=False)
    assert 0o640 == stat.S_IMODE(post.stat().st_mode)


def test_atomic_write_follows_a_symlink(tmp_path: Path) -> None:
    """Writing through a symlink changes its target and keeps the link."""
    real = tmp_path / "real.md"
    real.write_bytes(b"old")
    link = tmp_path / "link.md"
    link.symlink_to(real)
    atomic_write(link, b"new")
    assert (True, b"new") == (link.is_symlink(), real.read_bytes())


def test_atomic_write_failing_replace_leaves_original_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the rename fails, the original stays and the temp file is removed."""
    post = tmp_path / "post.md"
    post.write_bytes(b"original")

    def broken(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(StoreError, match="unchanged"):
        atomic_write(post, b"new")
    assert (b"original", ["post.md"]) == (post.read_bytes(), _files(tmp_path))


def test_atomic_write_on_a_full_disk_keeps_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC gives a StoreError saying the disk is full, with the original intact."""
    post = tmp_path / "post.md"
    post.write_bytes(b"original")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreError, match="disk is full; nothing was half-written") as caught:
        atomic_write(post, b"new")
    assert errno.ENOSPC == getattr(caught.value.__cause__, "errno", None)
    assert (b"original", ["post.md"]) == (post.read_bytes(), _files(tmp_path))


def test_atomic_write_into_a_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    """A folder that does not exist is reported, not created."""
    with pytest.raises(StoreError, match="cannot write"):
        atomic_write(tmp_path / "nope" / "post.md", b"x")


def test_atomic_write_leaves_no_temp_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a KeyboardInterrupt mid-write removes the temp file and passes through."""
    post = tmp_path / "post.md"
    post.write_bytes(b"original")

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(post, b"new")
    assert (b"original", ["post.md"]) == (post.read_bytes(), _files(tmp_path))


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.EDQUOT, "quota exceeded"), (errno.EROFS, "read-only"), (errno.EACCES, "cannot write")],
)
async def test_commit_maps_os_errors_to_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    """Quota, read-only and other OS errors while storing become a StoreError naming the file."""
    store = FolderStore(tmp_path)

    def refuse(self: Path, target: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "replace", refuse)
    with pytest.raises(StoreError, match=words) as caught:
        await store.put(DATA, SHA, "jpg", "image/jpeg")
    monkeypatch.undo()
    assert str(store.local_file(SHA, "jpg")) in str(caught.value)
    assert [] == _files(tmp_path)


@pytest.mark.parametrize(
    ("table", "scheme", "path", "bucket", "prefix"),
    [
        ({}, "file", "cache", "", ""),
        ({"path": "/srv/cache"}, "file", "/srv/cache", "", ""),
        ({"url": "./data"}, "file", "data", "", ""),
        ({"url": "file:///srv/mirror"}, "file", "/srv/mirror", "", ""),
        ({"url": "s3://my-bucket"}, "s3", "cache", "my-bucket", ""),
        ({"url": "s3://my.bucket/img/mirror/"}, "s3", "cache", "my.bucket", "img/mirror"),
    ],
)
def test_store_url_names_the_backend(
    table: dict[str, str], scheme: str, path: str, bucket: str, prefix: str
) -> None:
    """store.url (or the deprecated store.path) gives the scheme, folder, bucket and prefix."""
    store = config_from_mapping({"store": table}).store
    assert (scheme, Path(path), bucket, prefix) == (
        store.scheme,
        Path(store.path),
        store.bucket,
        store.prefix,
    )


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"url": "./a", "path": "./b"}, "store.url", "both set"),
        ({"url": "gs://bucket/x"}, "store.url", "unknown scheme 'gs'"),
        ({"url": "s3://Bad_Bucket"}, "store.url", "not an S3 bucket name"),
        ({"url": "s3://bucket/a/../b"}, "store.url", "prefix part '..'"),
        ({"url": "file://host/x"}, "store.url", "file:///abs/path"),
        ({"url": "./a", "staging": "/tmp/s"}, "store.staging", "only for s3://"),
        ({"s3": {"addressing": "dns"}}, "store.s3.addressing", "one of"),
        ({"s3": {"part_size": 1024}}, "store.s3.part_size", "between"),
        ({"s3": {"acl": "world"}}, "store.s3.acl", "one of"),
        ({"s3": {"public_url": "https://cdn.example.com"}}, "store.s3.public_url", "ending /"),
        ({"s3": {"endpoint_url": "minio:9000"}}, "store.s3.endpoint_url", "not an http(s) URL"),
        ({"s3": {"access_key": "AKIA"}}, "store.s3.access_key", "unknown key"),
    ],
)
def test_bad_store_settings_name_their_key(table: dict[str, object], key: str, words: str) -> None:
    """Each bad store setting is a ConfigError naming its key (credentials are no key at all)."""
    with pytest.raises(ConfigError, match=re.escape(words)) as caught:
        config_from_mapping({"store": table})
    assert key == caught.value.key


def test_replacing_a_store_setting_keeps_its_url() -> None:
    """dataclasses.replace on a url-configured store does not count the derived path as set."""
    store = StoreConfig(url="s3://bucket/p", staging="/tmp/s")
    changed = dataclasses.replace(store, durability="power")
    assert ("s3://bucket/p", "power") == (changed.location, changed.durability)


def test_open_store_picks_the_local_backend_without_aiobotocore(tmp_path: Path) -> None:
    """A folder URL opens a FolderStore, and aiobotocore is not even imported for it."""
    code = (
        "import sys; from pathlib import Path; from mirror.config import Config, StoreConfig;"
        "from mirror.store import open_store;"
        f"s = open_store(Config(store=StoreConfig(url='file://{tmp_path}')));"
        "print(type(s).__name__, s.description, 'aiobotocore' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert f"FolderStore {tmp_path} False\n" == out.stdout


def test_open_store_picks_s3_for_an_s3_url(tmp_path: Path) -> None:
    """An s3:// URL opens an S3Store with its bucket, prefix and staging folder."""
    from mirror.store.s3 import S3Store

    config = Config(store=StoreConfig(url="s3://bucket/a/b", staging=str(tmp_path)))
    store = open_store(config)
    assert isinstance(store, S3Store)
    assert ("s3://bucket/a/b", "bucket", "a/b") == (store.description, store.bucket, store.prefix)


async def test_folder_store_reads_the_public_layout_older_mirrors_wrote(tmp_path: Path) -> None:
    """A file at objects/<ab>/<sha256>.<ext> is an object, and a put lands in that layout."""
    old = tmp_path / "objects" / SHA[:2] / f"{SHA}.jpg"
    old.parent.mkdir(parents=True)
    old.write_bytes(DATA)
    other = b"GIF89a other bytes"
    other_sha = hashlib.sha256(other).hexdigest()
    async with FolderStore(tmp_path) as store:
        assert [(SHA, "jpg", len(DATA))] == [
            (o.sha256, o.ext, o.size) async for o in store.objects()
        ]
        await store.put(other, other_sha, "gif", "image/gif")
    assert other == (tmp_path / "objects" / other_sha[:2] / f"{other_sha}.gif").read_bytes()


async def test_folder_store_power_durability_fsyncs_body_and_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With durability "power", a commit fsyncs the body and the folders it created."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    async with FolderStore(tmp_path / "store", durability="power") as store:
        await store.put(DATA, SHA, "jpg", "image/jpeg")
        assert DATA == await store.read(SHA, "jpg")
    # body, shard folder, objects folder (new), root (objects was new)
    assert 4 == len(synced)


async def test_folder_store_commit_on_a_full_disk_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while staging a put is a StoreError saying so; no object and no staged file stay."""

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    async with FolderStore(tmp_path) as store:
        monkeypatch.setattr(os, "write", full)
        with pytest.raises(StoreError, match="disk is full"):
            await store.put(DATA, SHA, "jpg", "image/jpeg")
        monkeypatch.undo()
        assert [] == _files(tmp_path)


async def test_folder_store_cleanup_sweeps_old_temp_files_beside_objects(tmp_path: Path) -> None:
    """Older mirrors' stale .tmp files beside objects go by age; objects and strays stay."""
    async with FolderStore(tmp_path) as store:
        await store.put(DATA, SHA, "jpg", "image/jpeg")
    shard = tmp_path / "objects" / SHA[:2]
    leftover = shard / f".{SHA}.jpg.0123456789ab.tmp"
    leftover.write_bytes(DATA[:3])
    (shard / "README").write_text("stray")
    async with FolderStore(tmp_path) as store:
        assert 0 == await store.cleanup(older_than=3600)
        old = time.time() - 7200
        os.utime(leftover, (old, old))
        assert 1 == await store.cleanup(older_than=3600)
    assert [f"objects/{SHA[:2]}/{SHA}.jpg", f"objects/{SHA[:2]}/README"] == _files(tmp_path)


async def test_folder_store_reader_creates_no_folders(tmp_path: Path) -> None:
    """Opening, stat, listing and cleanup on a store that does not exist write nothing."""
    root = tmp_path / "none"
    async with FolderStore(root) as store:
        assert None is await store.stat(SHA, "jpg")
        assert [] == [o async for o in store.objects()]
        assert 0 == await store.cleanup(older_than=0)
    assert not root.exists()


async def test_s3_addressing_and_profile_reach_botocore(s3_bucket: object, tmp_path: Path) -> None:
    """store.s3.addressing becomes botocore's addressing style; an unknown profile a StoreError."""
    from mirror.store.s3 import S3Store

    for style in ("auto", "path", "virtual"):
        settings = S3Config(endpoint_url="http://127.0.0.1:9", region="us-east-1", addressing=style)
        async with S3Store("bucket", "", settings, tmp_path) as store:
            assert style == store.client.meta.config.s3["addressing_style"]
            assert "standard" == store.client.meta.config.retries["mode"]
    with pytest.raises(StoreError, match="nope"):
        async with S3Store("bucket", "", S3Config(profile="nope"), tmp_path):
            pass


@pytest.mark.parametrize("problem", ["others-write", "other-owner", "symlink"])
async def test_s3_staging_refuses_a_folder_that_is_not_private(
    tmp_path: Path, problem: str
) -> None:
    """A shared-temp staging folder someone else could swap files in is refused, naming it."""
    from mirror.store.s3 import S3Store

    folder = tmp_path / "staging"
    if problem == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder.mkdir(mode=0o700)
        if problem == "others-write":
            folder.chmod(0o777)
        elif os.geteuid() == 0:
            os.chown(folder, 4242, -1)
        else:
            pytest.skip("giving a folder to another user needs root")
    store = S3Store("bucket", "", S3Config(), folder)
    with pytest.raises(StoreError, match="not a private folder"):
        async with store.staging():
            pass
    assert [] == [p for p in folder.iterdir()]


async def test_the_s3_byte_budget_holds_bodies_one_budget_at_a_time() -> None:
    """Two bodies that do not fit together wait in turn; one over the budget goes alone."""
    budget = ByteBudget(10)
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def hold(name: str, size: int) -> None:
        async with budget.hold(size):
            order.append(f"{name}+")
            assert budget.held <= max(size, budget.limit)
            if name == "a":
                first_in.set()
                await release.wait()
            order.append(f"{name}-")

    a = asyncio.create_task(hold("a", 6))
    await first_in.wait()
    b = asyncio.create_task(hold("b", 6))  # does not fit beside a: waits
    c = asyncio.create_task(hold("c", 2))  # would fit, but comes after b
    for _ in range(5):
        await asyncio.sleep(0)
    assert ["a+"] == order
    release.set()
    await asyncio.gather(a, b, c)
    assert ["a+", "a-", "b+", "b-", "c+", "c-"] == order
    await asyncio.wait_for(hold("big", 50), 5)  # larger than the whole budget: alone, not never
    assert 0 == budget.held
