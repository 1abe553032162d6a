"""
One contract for every object-store backend: the local folder and S3 (moto on 127.0.0.1).

Each test runs once per backend through :func:`mirror.store.open_store`, so both answer the
same calls the same way; a few look behind a backend (the folder, or the bucket through the S3
API) to prove what the contract alone cannot show: no second upload, multipart, crash safety.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from s3_server import ChecksumlessS3, S3Bucket

from mirror.config import Config, S3Config, StoreConfig
from mirror.errors import StoreError
from mirror.models import StoredObject
from mirror.store import ObjectInfo, ObjectStore, open_store
from mirror.store.local import FolderStore
from mirror.store.s3 import S3Store

MiB = 1024 * 1024
PART = 5 * MiB
PUBLIC = "https://img.example.com/"
WORKTREE = Path(__file__).resolve().parent.parent


def body(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that do not compress to nothing."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class Backend:
    """One backend under test: its store, and what lets a test look behind it."""

    kind: str
    store: ObjectStore
    root: Path
    staging: Path
    bucket: S3Bucket | None = None
    calls: Counter[str] = dataclasses.field(default_factory=Counter)

    @property
    def s3(self) -> S3Store:
        assert isinstance(self.store, S3Store)
        return self.store


def store_config(
    kind: str, root: Path, staging: Path, bucket: S3Bucket | None, **s3: Any
) -> Config:
    """The Config naming a local folder at ``root`` or ``s3://bucket/pre/fix``."""
    if kind == "local":
        return Config(store=StoreConfig(url=str(root)))
    assert bucket is not None
    settings = {
        "endpoint_url": bucket.endpoint,
        "region": "us-east-1",
        "addressing": "path",
        "public_url": PUBLIC,
        "multipart_threshold": PART,
        "part_size": PART,
        **s3,
    }
    url = f"s3://{bucket.name}/pre/fix"
    return Config(store=StoreConfig(url=url, staging=str(staging), s3=S3Config(**settings)))


@pytest.fixture(params=["local", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """An entered store of each kind, empty; S3 calls are counted by operation."""
    kind = request.param
    bucket: S3Bucket | None = None
    if kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
    root, staging = tmp_path / "store", tmp_path / "staging"
    async with open_store(store_config(kind, root, staging, bucket)) as store:
        state = Backend(kind, store, root, staging, bucket)
        if isinstance(store, S3Store):
            await store.client.create_bucket(Bucket=store.bucket)

            def count(model: Any, **kwargs: Any) -> None:
                state.calls[model.name] += 1

            store.client.meta.events.register("before-call.s3.*", count)
        yield state


DATA = body(100_000)
SHA = sha(DATA)


async def listing(store: ObjectStore) -> list[tuple[str, str, int]]:
    return [(o.sha256, o.ext, o.size) async for o in store.objects()]


def staged_files(backend: Backend) -> list[str]:
    folder = backend.root / ".staging" if backend.kind == "local" else backend.staging
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


async def test_key_and_public_url_follow_each_layout(backend: Backend) -> None:
    """Keys are objects/<ab>/<sha>.<ext> locally and <prefix>/<ab>/<sha>.<ext> in S3."""
    store = backend.store
    expected: tuple[str, str | None]
    if backend.kind == "local":
        expected = (f"objects/{SHA[:2]}/{SHA}.png", None)
        assert backend.root / "objects" / SHA[:2] / f"{SHA}.png" == store.local_file(SHA, "png")
    else:
        key = f"pre/fix/{SHA[:2]}/{SHA}.png"
        expected = (key, PUBLIC + key)
        assert None is store.local_file(SHA, "png")
    assert expected == (store.key(SHA, "png"), store.public_url(SHA, "png"))


@pytest.mark.parametrize(
    ("sha256", "ext"), [("../" + SHA[3:], "png"), (SHA.upper(), "png"), (SHA, "p/g")]
)
async def test_malformed_keys_are_refused(backend: Backend, sha256: str, ext: str) -> None:
    """A sha256 or extension that could escape the store is a ValueError before any I/O."""
    with pytest.raises(ValueError, match="not"):
        backend.store.key(sha256, ext)
    with pytest.raises(ValueError, match="not"):
        await backend.store.stat(sha256, ext)


async def test_put_stores_and_stat_read_return_it(backend: Backend) -> None:
    """put returns the stored record; stat and read give the object back."""
    store = backend.store
    stored = await store.put(DATA, SHA, "png", "image/png")
    assert StoredObject(SHA, "png", len(DATA), store.key(SHA, "png")) == stored
    info = await store.stat(SHA, "png")
    assert info is not None
    assert (SHA, "png", len(DATA)) == (info.sha256, info.ext, info.size)
    assert abs(time.time() - info.modified) < 3600
    assert DATA == await store.read(SHA, "png")
    assert [] == staged_files(backend)


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (0, None),
        (0, 10),
        (5, 1),
        (99_990, None),
        (99_990, 50),
        (100_000, None),
        (200_000, 5),
        (7, 0),
    ],
)
async def test_read_and_stream_return_the_same_range(
    backend: Backend, start: int, length: int | None
) -> None:
    """A range reads as Python slices it: clipped at the end, empty past it."""
    store = backend.store
    await store.put(DATA, SHA, "png", "image/png")
    end = None if length is None else start + length
    assert DATA[start:end] == await store.read(SHA, "png", start, length)
    assert DATA[start:end] == b"".join([c async for c in store.stream(SHA, "png", start, length)])


async def test_stream_yields_a_large_object_in_chunks(backend: Backend) -> None:
    """A 3 MB object streams in several chunks that add up to it."""
    data = body(3 * MiB, seed=3)
    await backend.store.put(data, sha(data), "jpg", "image/jpeg")
    chunks = [c async for c in backend.store.stream(sha(data), "jpg")]
    assert (True, data) == (len(chunks) > 1, b"".join(chunks))


async def test_a_missing_object_is_none_to_stat_and_an_error_to_read(backend: Backend) -> None:
    """stat says None; read, stream and a zero-length read raise a StoreError naming it."""
    store = backend.store
    assert None is await store.stat(SHA, "png")
    for length in (None, 0, 10):
        with pytest.raises(StoreError, match="no such object"):
            await store.read(SHA, "png", 0, length)
    with pytest.raises(StoreError, match="no such object"):
        _ = [c async for c in store.stream(SHA, "png")]


async def test_delete_removes_and_reports(backend: Backend) -> None:
    """delete tells whether the object was there, and it is gone after."""
    store = backend.store
    await store.put(DATA, SHA, "png", "image/png")
    assert (True, False) == (await store.delete(SHA, "png"), await store.delete(SHA, "png"))
    assert None is await store.stat(SHA, "png")


async def add_strays(backend: Backend) -> None:
    """Put names that are not objects where a careless listing would pick them up."""
    stray = body(10, seed=9)
    if backend.kind == "local":
        shard = backend.root / "objects" / SHA[:2]
        shard.mkdir(parents=True, exist_ok=True)
        (shard / f".{SHA}.png.0123456789ab.tmp").write_bytes(stray)
        (shard / "README").write_text("stray")
        (shard / f"{'f' * 64}.png").write_bytes(stray)  # in the wrong shard
        (backend.root / "objects" / "zz").mkdir()
        (backend.root / "manifest.sqlite3").write_bytes(stray)
        return
    assert backend.bucket is not None
    async with backend.bucket.client() as client:
        for key in (
            f"pre/fix/{SHA[:2]}/README",
            f"pre/fix/{SHA[:2]}/{'f' * 64}.png",
            f"pre/fixed/{SHA[:2]}/{SHA}.png",
            f"other/{SHA[:2]}/{SHA}.png",
            "pre/fix/manifest.sqlite3",
        ):
            await client.put_object(Bucket=backend.bucket.name, Key=key, Body=stray)


async def test_objects_lists_every_object_in_key_order_and_skips_strays(backend: Backend) -> None:
    """objects() yields exactly the stored objects, sorted by key, whatever else lies around."""
    store = backend.store
    blobs = [body(1000 + n, seed=n) for n in range(6)]
    for n, data in enumerate(blobs):
        await store.put(data, sha(data), "png" if n % 2 else "jpg", "image/png")
    await add_strays(backend)
    found = [o async for o in store.objects()]
    expected = sorted(
        ((sha(d), "png" if n % 2 else "jpg", len(d)) for n, d in enumerate(blobs)),
        key=lambda t: store.key(t[0], t[1]),
    )
    assert expected == [(o.sha256, o.ext, o.size) for o in found]
    assert all(isinstance(o, ObjectInfo) and o.modified > 0 for o in found)


async def test_commit_moves_a_streamed_body_into_the_store(backend: Backend) -> None:
    """A body written into staging in pieces becomes the object; staging is empty after."""
    store = backend.store
    async with store.staging() as staged:
        assert staged.path.exists()
        for start in range(0, len(DATA), 4096):
            staged.file.write(DATA[start : start + 4096])
        assert [staged.path.name] == staged_files(backend)
        stored = await store.commit(staged, SHA, "png", "image/png")
    assert (len(DATA), DATA) == (stored.size, await store.read(SHA, "png"))
    assert [] == staged_files(backend)


async def test_staging_is_removed_when_not_committed(backend: Backend) -> None:
    """Leaving staging without a commit, or by an exception, leaves no file and no object."""
    store = backend.store
    async with store.staging() as staged:
        staged.file.write(DATA)

    async def refuse() -> None:
        async with store.staging() as staged:
            staged.file.write(DATA)
            raise RuntimeError("verification failed")

    with pytest.raises(RuntimeError, match="verification failed"):
        await refuse()
    assert ([], []) == (staged_files(backend), await listing(store))


async def test_commit_of_an_object_already_there_writes_nothing(backend: Backend) -> None:
    """Same bytes committed twice are uploaded (or renamed) once; the second commit is a HEAD."""
    store = backend.store
    first = await store.put(DATA, SHA, "png", "image/png")
    if backend.kind == "local":
        before = (backend.root / first.file).stat()
    async with store.staging() as staged:
        staged.file.write(DATA)
        assert first == await store.commit(staged, SHA, "png", "image/png")
    assert first == await store.put(DATA, SHA, "png", "image/png")
    if backend.kind == "local":
        after = (backend.root / first.file).stat()
        assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    else:
        assert 1 == backend.calls["PutObject"]
        assert 3 == backend.calls["HeadObject"]
    assert [] == staged_files(backend)


async def test_commit_replaces_an_object_of_the_wrong_size(backend: Backend) -> None:
    """A truncated object under the key is written again in full."""
    store = backend.store
    if backend.kind == "local":
        path = backend.root / store.key(SHA, "png")
        path.parent.mkdir(parents=True)
        path.write_bytes(DATA[:5])
    else:
        assert backend.bucket is not None
        async with backend.bucket.client() as client:
            key = store.key(SHA, "png")
            await client.put_object(Bucket=backend.bucket.name, Key=key, Body=DATA[:5])
    await store.put(DATA, SHA, "png", "image/png")
    assert DATA == await store.read(SHA, "png")


async def test_s3_objects_carry_type_cache_control_and_sha256(s3_backend: Backend) -> None:
    """An uploaded object has its format's type, an immutable Cache-Control and its sha256."""
    await s3_backend.store.put(DATA, SHA, "png", "image/png")
    head = await s3_backend.s3.client.head_object(
        Bucket=s3_backend.s3.bucket, Key=s3_backend.store.key(SHA, "png"), ChecksumMode="ENABLED"
    )
    assert (
        "image/png",
        "public, max-age=31536000, immutable",
        {"sha256": SHA},
        base64.b64encode(bytes.fromhex(SHA)).decode(),
    ) == (head["ContentType"], head["CacheControl"], head["Metadata"], head["ChecksumSHA256"])


async def test_s3_object_without_its_sha256_is_uploaded_again(s3_backend: Backend) -> None:
    """An object of the right size but no sha256 metadata (not mirror's upload) is replaced."""
    assert s3_backend.bucket is not None
    key = s3_backend.store.key(SHA, "png")
    async with s3_backend.bucket.client() as client:
        await client.put_object(Bucket=s3_backend.bucket.name, Key=key, Body=DATA)
    await s3_backend.store.put(DATA, SHA, "png", "image/png")
    head = await s3_backend.s3.client.head_object(Bucket=s3_backend.s3.bucket, Key=key)
    assert (1, {"sha256": SHA}) == (s3_backend.calls["PutObject"], head["Metadata"])


@pytest.fixture
async def s3_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The S3 backend alone, for what only S3 has (multipart, checksums, metadata)."""
    bucket = request.getfixturevalue("s3_bucket")
    config = store_config("s3", tmp_path / "store", tmp_path / "staging", bucket)
    async with open_store(config) as store:
        state = Backend("s3", store, tmp_path / "store", tmp_path / "staging", bucket)
        await state.s3.client.create_bucket(Bucket=bucket.name)

        def count(model: Any, **kwargs: Any) -> None:
            state.calls[model.name] += 1

        state.s3.client.meta.events.register("before-call.s3.*", count)
        yield state


async def test_s3_body_above_the_threshold_goes_in_parts(s3_backend: Backend) -> None:
    """11 MiB with 5 MiB parts is one multipart upload of three parts, complete and intact."""
    data = body(11 * MiB, seed=11)
    async with s3_backend.store.staging() as staged:
        staged.file.write(data)
        await s3_backend.store.commit(staged, sha(data), "png", "image/png")
    calls = s3_backend.calls
    expected = {"CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1}
    assert expected == {name: calls[name] for name in expected}
    assert (0, data) == (calls["PutObject"], await s3_backend.store.read(sha(data), "png"))
    uploads = await s3_backend.s3.client.list_multipart_uploads(Bucket=s3_backend.s3.bucket)
    assert [] == uploads.get("Uploads", [])


async def test_s3_failed_multipart_upload_is_aborted(s3_backend: Backend) -> None:
    """A part the server refuses aborts the upload: no object and no upload is left behind."""
    s3 = s3_backend.s3

    def refuse(params: dict[str, Any], **kwargs: Any) -> None:
        if params.get("PartNumber") == 2:
            params["UploadId"] = "no-such-upload"

    s3.client.meta.events.register("before-parameter-build.s3.UploadPart", refuse)
    data = body(11 * MiB, seed=12)
    with pytest.raises(StoreError, match="part 2"):
        await s3.put(data, sha(data), "png", "image/png")
    uploads = await s3.client.list_multipart_uploads(Bucket=s3.bucket)
    assert (1, [], None) == (
        s3_backend.calls["AbortMultipartUpload"],
        uploads.get("Uploads", []),
        await s3.stat(sha(data), "png"),
    )


async def test_s3_without_checksums_falls_back_cleanly(
    checksumless_s3: ChecksumlessS3, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """A server refusing S3 checksums gets the same objects without them, refused once a session."""
    await s3_bucket.create()
    bucket = S3Bucket(checksumless_s3.endpoint, s3_bucket.name)
    big, small = body(11 * MiB, seed=13), body(500, seed=14)
    # One session meets the refusal on a PutObject, the other on a CreateMultipartUpload.
    for n, order in enumerate([(DATA, big), (big, small)]):
        config = store_config("s3", tmp_path / "s", tmp_path / "staging", bucket)
        config = dataclasses.replace(
            config, store=dataclasses.replace(config.store, url=f"s3://{bucket.name}/run{n}")
        )
        async with open_store(config) as store:
            for data in order:
                await store.put(data, sha(data), "png", "image/png")
            assert [await store.read(sha(d), "png") for d in order] == list(order)
            assert 2 == len(await listing(store))
        assert n + 1 == checksumless_s3.refused
    assert checksumless_s3.forwarded > 0


async def test_s3_cleanup_aborts_only_mirrors_stale_uploads(s3_backend: Backend) -> None:
    """Uploads at object keys are aborted once old; one at a key mirror never writes is kept."""
    s3 = s3_backend.s3
    ours, theirs = s3.key(SHA, "png"), "pre/fix/backup.tar"
    for key in (ours, theirs):
        await s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)
    late = S3Store(
        s3.bucket, s3.prefix, s3.config, s3_backend.staging, clock=lambda: time.time() + 7200
    )
    async with late:
        assert 1 == await late.cleanup(older_than=3600)
    uploads = await s3.client.list_multipart_uploads(Bucket=s3.bucket)
    assert [theirs] == [u["Key"] for u in uploads.get("Uploads", [])]


DEAD_WRITER = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from mirror.store.staging import Staging

async def main():
    async with Staging(Path(sys.argv[2])).open() as staged:
        staged.file.write(b"half a body")
        staged.committed = True  # so that exiting keeps it, as a kill would
asyncio.run(main())
"""


async def test_cleanup_removes_a_dead_writers_staging_at_once(backend: Backend) -> None:
    """A staged file whose writer is gone is swept now; a live writer's only once it is old."""
    folder = backend.root / ".staging" if backend.kind == "local" else backend.staging
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DEAD_WRITER, str(WORKTREE), str(folder)
    )
    assert 0 == await writer.wait()
    assert 1 == len(staged_files(backend))
    async with backend.store.staging() as live:
        live.file.write(b"mine")
        assert 1 == await backend.store.cleanup(older_than=3600)
        assert [live.path.name] == staged_files(backend)
        store = open_aged(backend, 7200)
        async with store:
            assert 1 == await store.cleanup(older_than=3600)
        assert [] == staged_files(backend)


def open_aged(backend: Backend, ahead: float) -> ObjectStore:
    """The same store seen from a clock ``ahead`` seconds in the future."""
    clock = lambda: time.time() + ahead  # noqa: E731 - a one-off clock
    if isinstance(backend.store, S3Store):
        s3 = backend.store
        return S3Store(s3.bucket, s3.prefix, s3.config, backend.staging, clock=clock)
    return FolderStore(backend.root, clock=clock)


UPLOADER = """
import asyncio, hashlib, os, sys
sys.path.insert(0, sys.argv[1])
from mirror.config import Config, S3Config, StoreConfig
from mirror.store import open_store

kind, url, staging, endpoint, size, hook = sys.argv[2:8]
size = int(size)

def block(*args, **kwargs):
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the parent kills this process

async def main():
    if kind == "local":
        config = Config(store=StoreConfig(url=url))
    else:
        s3 = S3Config(endpoint_url=endpoint, region="us-east-1", addressing="path",
                      multipart_threshold=5 * 2**20, part_size=5 * 2**20)
        config = Config(store=StoreConfig(url=url, staging=staging, s3=s3))
    block_bytes = hashlib.sha256(b"kill").digest() * 32768
    digest = hashlib.sha256()
    async with open_store(config) as store:
        if hook == "part":
            store.client.meta.events.register("after-call.s3.UploadPart", block)
        async with store.staging() as staged:
            written = 0
            while written < size:
                chunk = block_bytes[: size - written]
                staged.file.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                if hook == "staged" and written >= size // 2:
                    staged.file.flush()
                    block()
            await store.commit(staged, digest.hexdigest(), "png", "image/png")
    print("done", flush=True)
asyncio.run(main())
"""


def upload(backend: Backend, url: str, hook: str, size: int) -> subprocess.Popen[str]:
    """Start a process that streams ``size`` bytes into the store at ``url`` and commits them."""
    endpoint = backend.bucket.endpoint if backend.bucket else ""
    args = [backend.kind, url, str(backend.staging), endpoint, str(size), hook]
    return subprocess.Popen(
        [sys.executable, "-c", UPLOADER, str(WORKTREE), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate(timeout=60)
    assert 0 == process.returncode
    return out


async def snapshot(store: ObjectStore, bucket: S3Bucket | None, prefix: str) -> list[Any]:
    """What a reader can see: objects, their bytes and, in S3, headers and pending uploads."""
    seen: list[Any] = []
    async for info in store.objects():
        entry: list[Any] = [info.sha256, info.ext, info.size]
        entry.append(sha(await store.read(info.sha256, info.ext)))
        if isinstance(store, S3Store):
            head = await store.client.head_object(
                Bucket=store.bucket, Key=store.key(info.sha256, info.ext)
            )
            entry += [head["ContentType"], head["CacheControl"], head["Metadata"]]
        seen.append(entry)
    if bucket is not None:
        async with bucket.client() as client:
            uploads = await client.list_multipart_uploads(Bucket=bucket.name, Prefix=prefix)
            seen.append([u["Key"].removeprefix(prefix) for u in uploads.get("Uploads", [])])
    return seen


async def test_kill_9_mid_upload_leaves_nothing_visible_and_a_rerun_completes(
    backend: Backend, tmp_path: Path
) -> None:
    """SIGKILL after the first part (S3) or half the body (local): nothing shows, rerun is whole."""
    size = 12 * MiB
    if backend.kind == "local":
        urls = (str(tmp_path / "killed"), str(tmp_path / "clean"))
        hook = "staged"
    else:
        assert backend.bucket is not None
        urls = (f"s3://{backend.bucket.name}/killed", f"s3://{backend.bucket.name}/clean")
        hook = "part"
    victim = upload(backend, urls[0], hook, size)
    assert victim.stdout is not None
    assert "ready\n" == victim.stdout.readline()
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)  # reaps it and closes its pipes

    def reopen(url: str) -> ObjectStore:
        config = store_config(backend.kind, Path(url), backend.staging, backend.bucket)
        config = dataclasses.replace(config, store=dataclasses.replace(config.store, url=url))
        return open_store(config)

    killed = reopen(urls[0])
    async with killed:
        assert [] == await listing(killed)
        if backend.kind == "local":
            leftovers = [p.name for p in (Path(urls[0]) / ".staging").iterdir()]
        else:
            leftovers = [p.name for p in backend.staging.iterdir()]
            uploads = await backend.s3.client.list_multipart_uploads(
                Bucket=backend.s3.bucket, Prefix="killed/"
            )
            assert 1 == len(uploads.get("Uploads", []))
        assert [f"{victim.pid}."] == [name[: len(str(victim.pid)) + 1] for name in leftovers]
        assert "done\n" == finish(upload(backend, urls[0], "none", size))
        assert 1 == len(await listing(killed))
        # The dead writer's staged file goes at once; the stale upload once it counts as old.
        await killed.cleanup(older_than=3600)
        assert [] == staged_names(backend, urls[0])
        await killed.cleanup(older_than=0)
        assert "done\n" == finish(upload(backend, urls[1], "none", size))
        clean = reopen(urls[1])
        async with clean:
            prefixes = ("killed/", "clean/")
            assert await snapshot(clean, backend.bucket, prefixes[1]) == await snapshot(
                killed, backend.bucket, prefixes[0]
            )
            assert size == (await listing(killed))[0][2]


def staged_names(backend: Backend, url: str) -> list[str]:
    folder = Path(url) / ".staging" if backend.kind == "local" else backend.staging
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


PEAK = """
import asyncio, hashlib, sys
sys.path.insert(0, sys.argv[1])
from mirror.config import Config, S3Config, StoreConfig
from mirror.store import open_store

kind, url, staging, endpoint = sys.argv[2:6]
SIZE = 60 * 2**20

def rss():
    # VmHWM, the peak RSS of this process image: ru_maxrss would carry the parent's over exec.
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

async def main():
    if kind == "local":
        config = Config(store=StoreConfig(url=url))
    else:
        s3 = S3Config(endpoint_url=endpoint, region="us-east-1", addressing="path")
        config = Config(store=StoreConfig(url=url, staging=staging, s3=s3))
    async with open_store(config) as store:
        if kind == "s3":
            await store.client.create_bucket(Bucket=url.split("/")[2])
        before = rss()
        digest = hashlib.sha256()
        chunk = hashlib.sha256(b"peak").digest() * 2048  # 64 KiB, as a download arrives
        async with store.staging() as staged:
            for n in range(SIZE // len(chunk)):
                piece = bytes([n % 251]) + chunk[1:]
                staged.file.write(piece)
                digest.update(piece)
            stored = await store.commit(staged, digest.hexdigest(), "png", "image/png")
        print(stored.size, before, rss(), flush=True)
asyncio.run(main())
"""


def test_a_60_mb_body_goes_through_staging_without_being_held_in_memory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Staging then committing 60 MB keeps the process's peak RSS far below the body (< 100 MB)."""
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    runs = {
        "local": (str(tmp_path / "local"), ""),
        "s3": (f"s3://{bucket.name}/peak", bucket.endpoint),
    }
    for kind, (url, endpoint) in runs.items():
        args = [str(WORKTREE), kind, url, str(tmp_path / "staging"), endpoint]
        out = subprocess.run(
            [sys.executable, "-c", PEAK, *args], capture_output=True, text=True, check=True
        ).stdout
        size, before, peak = map(int, out.split())
        print(f"{kind}: 60 MiB committed, peak RSS {peak / MiB:.1f} MiB", end=" ")
        print(f"(before staging {before / MiB:.1f} MiB)")
        assert (60 * MiB, True) == (size, peak < 100 * MiB)


async def test_s3_acl_is_sent_with_every_upload(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """store.s3.acl = "public-read" makes a single and a multipart upload readable by all."""
    config = store_config("s3", tmp_path, tmp_path / "staging", s3_bucket, acl="public-read")
    big = body(6 * MiB, seed=21)
    async with open_store(config) as store:
        assert isinstance(store, S3Store)
        await store.client.create_bucket(Bucket=s3_bucket.name)
        granted = []
        for data in (DATA, big):
            await store.put(data, sha(data), "png", "image/png")
            acl = await store.client.get_object_acl(
                Bucket=store.bucket, Key=store.key(sha(data), "png")
            )
            granted.append(
                {
                    g["Permission"]
                    for g in acl["Grants"]
                    if g["Grantee"].get("URI", "").endswith("/global/AllUsers")
                }
            )
    assert [{"READ"}, {"READ"}] == granted
