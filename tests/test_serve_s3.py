"""``mirror serve`` on an S3 store (moto on 127.0.0.1): stream, redirect and open-mode misses."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from s3_server import S3Bucket
from test_serve import SAFE, MakeClient, make_client, remember, root, serve_config

from mirror.config import Config, ManifestConfig, S3Config, ServeConfig, StoreConfig
from mirror.manifest import Manifest, SourceResult
from mirror.response import IMMUTABLE
from mirror.serve import REDIRECT_CACHE
from mirror.store import open_store

if TYPE_CHECKING:
    from conftest import Upstream

__all__ = ["make_client", "root"]  # fixtures shared with test_serve

PREFIX = "img/m"
WORKTREE = Path(__file__).resolve().parent.parent
# Headers that differ between two servers answering the same object: when each answered, and
# when each backend says the object was written (a file's mtime, the PUT's Last-Modified).
UNRELATED = frozenset({"Date", "Server", "Last-Modified"})


def s3_config(base: Config, bucket: S3Bucket, tmp_path: Path, public: str, **serve: Any) -> Config:
    """``base`` with the store in the moto bucket under PREFIX and the manifest in tmp_path."""
    s3 = S3Config(
        endpoint_url=bucket.endpoint,
        region="us-east-1",
        addressing="path",
        public_url=public,
        acl="public-read" if public else "",
    )
    store = StoreConfig(
        url=f"s3://{bucket.name}/{PREFIX}", staging=str(tmp_path / "staging"), s3=s3
    )
    manifest = ManifestConfig(url=str(tmp_path / "mirror.sqlite3"))
    return dataclasses.replace(base, store=store, manifest=manifest, serve=ServeConfig(**serve))


async def remember_s3(config: Config, source: str, data: bytes) -> str:
    """Put ``data`` in the bucket and a mirrored row for ``source`` in the manifest; its sha256."""
    sha = hashlib.sha256(data).hexdigest()
    async with open_store(config) as store:
        await store.put(data, sha, "png", "image/png")
    result = SourceResult(source, "mirrored", sha256=sha, ext="png", size=len(data))
    result = dataclasses.replace(result, format="PNG", width=64, height=48)
    assert config.manifest_file is not None
    with Manifest(config.manifest_file) as manifest:
        manifest.record_results([result])
    return sha


def comparable(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    """The response's headers, in order, without those two servers never share."""
    return [(k, v) for k, v in response.headers.items() if k not in UNRELATED]


@pytest.mark.parametrize("size", [4096, 2 * 1024 * 1024 + 7], ids=["in-memory", "streamed"])
async def test_stream_hits_answer_as_a_folder_store_does(
    upstream: Upstream,
    s3_bucket: S3Bucket,
    root: Path,
    tmp_path: Path,
    png_bytes: bytes,
    make_client: MakeClient,
    size: int,
) -> None:
    """An S3 hit has a folder hit's status, body and every header: ETag, 304, 206, CSP, CORS."""
    await s3_bucket.create()
    # Over serve's in-memory limit the object is streamed: one ranged GET from the bucket.
    data = png_bytes + bytes(range(256)) * (size // 256)
    source = upstream.url("/img.png")
    sha = remember(root, source, data)
    config = s3_config(upstream.config(), s3_bucket, tmp_path, "")
    assert sha == await remember_s3(config, source, data)
    local = await make_client(serve_config(upstream.config(), root))
    bucket = await make_client(config)
    length = len(data)
    future = "Fri, 01 Jan 2100 00:00:00 GMT"
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"}
    cases: list[tuple[str, str, dict[str, str], int, bytes]] = []
    for path in (f"/?{source}", f"/mirror/{sha[:2]}/{sha}.png"):
        cases += [
            ("GET", path, {}, 200, data),
            ("HEAD", path, {}, 200, b""),
            ("GET", path, {"If-None-Match": f'"{sha}"'}, 304, b""),
            ("GET", path, {"If-None-Match": '"other"'}, 200, data),
            ("GET", path, {"If-Modified-Since": future}, 304, b""),
            ("GET", path, {"Range": "bytes=0-9"}, 206, data[:10]),
            ("GET", path, {"Range": "bytes=-10"}, 206, data[-10:]),
            ("GET", path, {"Range": "bytes=1000-1999"}, 206, data[1000:2000]),
            ("GET", path, {"Range": "bytes=0-9", "If-Range": f'"{sha}"'}, 206, data[:10]),
            ("GET", path, {"Range": "bytes=0-9", "If-Range": '"stale"'}, 200, data),
            ("GET", path, {"Range": f"bytes={length}-"}, 416, b""),
            ("OPTIONS", path, {"Origin": "https://blog.example", **preflight}, 204, b""),
        ]
    for method, path, headers, status, body in cases:
        want = await local.request(method, path, headers=headers)
        got = await bucket.request(method, path, headers=headers)
        case = f"{method} {path} {headers}"
        sent = await got.read()
        assert (status, status) == (want.status, got.status), case
        assert await want.read() == sent, case
        if status != 416:  # whose body is aiohttp's own short text
            assert body == sent, case
        assert comparable(want) == comparable(got), case
        assert ("Last-Modified" in want.headers) == ("Last-Modified" in got.headers), case
        assert SAFE.items() <= dict(got.headers).items(), case
        if method == "OPTIONS":
            continue
        if status in (200, 206, 304):
            assert (f'"{sha}"', IMMUTABLE) == (got.headers["ETag"], got.headers["Cache-Control"])
        if status == 206:
            first, _, last = headers["Range"].removeprefix("bytes=").partition("-")
            start = length - int(last) if not first else int(first)
            end = length - 1 if not first else int(last)
            assert f"bytes {start}-{end}/{length}" == got.headers["Content-Range"], case
        if status == 416:
            assert f"bytes */{length}" == got.headers["Content-Range"], case
    assert not upstream.hits


async def test_redirect_hits_answer_302_to_the_public_url(
    upstream: Upstream, s3_bucket: S3Bucket, tmp_path: Path, make_client: MakeClient
) -> None:
    """serve.hits "redirect" answers 302 to public_url + key, whose bytes are the object's."""
    await s3_bucket.create()
    # A public-read object is served without credentials: the bucket is its own public URL.
    public = f"{s3_bucket.endpoint}/{s3_bucket.name}/"
    config = s3_config(upstream.config(), s3_bucket, tmp_path, public, hits="redirect")
    data = b"\x89PNG\r\n\x1a\n redirected"
    source = upstream.url("/img.png")
    sha = await remember_s3(config, source, data)
    client = await make_client(config)
    target = f"{public}{PREFIX}/{sha[:2]}/{sha}.png"
    # Object paths sit under the base URL's path, here the public URL's (rewritten posts' base).
    assert config.base_url == f"{public}{PREFIX}/"
    objects = urlsplit(config.base_url).path
    for path, cache in (
        (f"/?{source}", REDIRECT_CACHE),
        (f"{objects}{sha[:2]}/{sha}.png", IMMUTABLE),
    ):
        response = await client.get(path, allow_redirects=False)
        assert 302 == response.status, path
        assert (target, cache) == (response.headers["Location"], response.headers["Cache-Control"])
        assert SAFE.items() <= dict(response.headers).items(), path
    async with aiohttp.ClientSession() as session, session.get(target) as cdn:
        assert (200, data, "image/png") == (cdn.status, await cdn.read(), cdn.content_type)
    unknown = await client.get(f"/?{upstream.url('/other.png')}", allow_redirects=False)
    assert (404, "unknown-url") == (unknown.status, unknown.headers["X-Mirror-Reason"])
    assert not upstream.hits


@pytest.mark.parametrize("workers", [1, 2])
def test_redirect_without_a_public_url_refuses_to_start(
    s3_bucket: S3Bucket, tmp_path: Path, workers: int
) -> None:
    """``serve`` with hits "redirect" on a bucket without store.s3.public_url exits 2 at once."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\nurl = "s3://{s3_bucket.name}/{PREFIX}"\nstaging = "{tmp_path / "staging"}"\n'
        f'[store.s3]\nendpoint_url = "{s3_bucket.endpoint}"\naddressing = "path"\n'
        f'[serve]\nhits = "redirect"\nhost = "127.0.0.1"\nport = 0\nworkers = {workers}\n',
        encoding="utf-8",
    )
    # A subprocess with a timeout: a server that wrongly starts is killed, not waited on.
    done = subprocess.run(
        [sys.executable, "-m", "mirror", "serve", "--config", str(config)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 2 == done.returncode, done.stderr
    assert "serve.hits" in done.stderr
    assert "store.s3.public_url" in done.stderr
    assert f"s3://{s3_bucket.name}/{PREFIX} has none" in done.stderr


async def test_open_mode_miss_is_stored_into_the_bucket(
    upstream: Upstream,
    s3_bucket: S3Bucket,
    tmp_path: Path,
    png_bytes: bytes,
    make_client: MakeClient,
) -> None:
    """An open-mode miss is fetched once and lands under the prefix with its type and sha256."""
    await s3_bucket.create()
    config = s3_config(upstream.config(), s3_bucket, tmp_path, "", open=True)
    client = await make_client(config)
    source = upstream.url("/img.png")
    for _ in range(2):
        response = await client.get(f"/?{source}")
        assert (200, png_bytes) == (response.status, await response.read())
    assert 1 == upstream.hits["/img.png"]
    sha = hashlib.sha256(png_bytes).hexdigest()
    key = f"{PREFIX}/{sha[:2]}/{sha}.png"
    async with s3_bucket.client() as s3:
        listed = await s3.list_objects_v2(Bucket=s3_bucket.name)
        assert [key] == [item["Key"] for item in listed.get("Contents", [])]
        head = await s3.head_object(Bucket=s3_bucket.name, Key=key)
        assert ("image/png", {"sha256": sha}, IMMUTABLE) == (
            head["ContentType"],
            head["Metadata"],
            head["CacheControl"],
        )
        answer = await s3.get_object(Bucket=s3_bucket.name, Key=key)
        async with answer["Body"] as body:
            assert png_bytes == await body.read()
    assert config.manifest_file is not None
    with Manifest(config.manifest_file, readonly=True) as manifest:
        served = [row for row in manifest.objects() if row.served]
    assert [(sha, (source,))] == [(row.sha256, row.served) for row in served]
    assert not any(p.is_file() for p in (tmp_path / "staging").rglob("*"))
