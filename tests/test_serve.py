"""``mirror serve`` through aiohttp's test client against ``create_app``, with a real upstream."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import FakeResolver, object_file, store_object
from yarl import URL

from mirror.access import _escape, runner_options
from mirror.config import Config, ServeConfig, StoreConfig
from mirror.errors import ConfigError
from mirror.log import ACCESS, configure_access_log, configure_logging
from mirror.manifest import Manifest, SourceResult, manifest_path
from mirror.resolver import Resolver
from mirror.serve import STATE, create_app, requested_source
from mirror.source import Classifier

if TYPE_CHECKING:
    from conftest import Canary, Upstream

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
SAFE = {
    "Access-Control-Allow-Origin": "*",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "cross-origin",
}


def serve_config(base: Config, root: Path, **serve: Any) -> Config:
    """``base`` with the store in ``root`` and ``serve`` overrides."""
    return dataclasses.replace(base, store=StoreConfig(path=str(root)), serve=ServeConfig(**serve))


def remember(root: Path, source: str, data: bytes | None, status: str = "mirrored") -> str:
    """Put ``data`` in the store and a row for ``source`` in the manifest; return its sha256."""
    sha = hashlib.sha256(data or b"").hexdigest()
    if data is not None:
        store_object(root, data, "png")
        result = SourceResult(source, "mirrored", sha256=sha, ext="png", size=len(data))
        result = dataclasses.replace(result, format="PNG", width=64, height=48)
    else:
        result = SourceResult(source, status, reason="http-500")
    with Manifest(manifest_path(root)) as manifest:
        manifest.record_results([result])
    return sha


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(config: Config, **kwargs: Any) -> Client:
        client: Client = await aiohttp_client(create_app(config, **kwargs))
        return client

    return make


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# --- the request forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "source"),
    [
        ("http://a.example/x.jpg", "http://a.example/x.jpg"),
        ("http://a.example/x.jpg?w=1&h=2", "http://a.example/x.jpg?w=1&h=2"),
        ("http%3A%2F%2Fa.example%2Fx.jpg%3Fw%3D1", "http://a.example/x.jpg?w=1"),
        ("url=http%3A%2F%2Fa.example%2Fx%20y.jpg", "http://a.example/x y.jpg"),
        ("HTTP://A.EXAMPLE:80/x.jpg", "http://a.example/x.jpg"),
        ("//a.example/x.jpg", "http://a.example/x.jpg"),
        ("http://a.example/%E5%9B%BE.jpg", "http://a.example/%E5%9B%BE.jpg"),
        ("https://cors.zfour.workers.dev/?http://a.example/x.jpg", "http://a.example/x.jpg"),
        ("ftp://a.example/x.jpg", None),
        ("/etc/passwd", None),
        ("url=", None),
    ],
)
def test_requested_source(query: str, source: str | None) -> None:
    """The inner URL is read raw, percent-encoded or as url=, and normalized like a post's."""
    assert source == requested_source(query, Classifier(Config().scan.wrappers))


# --- hits ---------------------------------------------------------------------------------------


async def test_hit_raw_inner_url(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """A stored source is served from the store: body, validators, safety headers, no upstream."""
    source = upstream.url("/img.png?size=big&v=2")
    sha = remember(root, source, png_bytes)
    client = await make_client(serve_config(upstream.config(), root))
    response = await client.get(f"/?{source}")
    assert 200 == response.status
    assert png_bytes == await response.read()
    assert f'"{sha}"' == response.headers["ETag"]
    assert "image/png" == response.headers["Content-Type"]
    assert "public, max-age=31536000, immutable" == response.headers["Cache-Control"]
    assert SAFE.items() <= dict(response.headers).items()
    assert not upstream.hits


async def test_hit_encoded_and_url_forms(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """The percent-encoded and ``url=`` forms reach the same object as the raw one."""
    source = upstream.url("/a b/img.png?x=1&y=%2F")
    remember(root, source, png_bytes)
    client = await make_client(serve_config(upstream.config(), root))
    for path in (f"/?{quote(source, safe='')}", f"/?url={quote(source, safe='')}"):
        # encoded=True: sent byte for byte, as a browser sends what the page holds.
        response = await client.get(URL(path, encoded=True))
        assert (200, png_bytes) == (response.status, await response.read()), path
    assert not upstream.hits


async def test_head_and_object_path(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """HEAD has the headers and no body; the object path serves the file by its name."""
    source = upstream.url("/img.png")
    sha = remember(root, source, png_bytes)
    client = await make_client(serve_config(upstream.config(), root))
    head = await client.head(f"/?{source}")
    assert (200, str(len(png_bytes)), b"") == (
        head.status,
        head.headers["Content-Length"],
        await head.read(),
    )
    obj = await client.get(f"/mirror/{sha[:2]}/{sha}.png")
    assert (200, png_bytes) == (obj.status, await obj.read())
    assert SAFE.items() <= dict(obj.headers).items()
    for bad in (f"/mirror/00/{sha}.png", f"/mirror/{sha[:2]}/{sha}.jpg", "/mirror/ab/x.png"):
        missing = await client.get(bad)
        assert 404 == missing.status, bad
        assert "no-store" == missing.headers["Cache-Control"]


async def test_conditional_requests(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """If-None-Match (lists, weak, *) and If-Modified-Since give 304; others the object."""
    source = upstream.url("/img.png")
    sha = remember(root, source, png_bytes)
    client = await make_client(serve_config(upstream.config(), root))
    path = f"/?{source}"
    future, past = "Fri, 01 Jan 2100 00:00:00 GMT", "Mon, 01 Jan 2001 00:00:00 GMT"
    cases = [
        ({"If-None-Match": f'"{sha}"'}, 304),
        ({"If-None-Match": f'"other", W/"{sha}"'}, 304),
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": '"other"'}, 200),
        ({"If-Modified-Since": future}, 304),
        ({"If-Modified-Since": past}, 200),
        ({"If-Modified-Since": "not a date"}, 200),
        ({"If-None-Match": '"other"', "If-Modified-Since": future}, 200),
    ]
    for headers, status in cases:
        response = await client.get(path, headers=headers)
        body = await response.read()
        assert status == response.status, headers
        assert (b"" if status == 304 else png_bytes) == body
        assert f'"{sha}"' == response.headers["ETag"]


async def test_ranges(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """One byte range gives 206; past the end 416; several ranges or a stale If-Range the whole."""
    source = upstream.url("/img.png")
    sha = remember(root, source, png_bytes)
    client = await make_client(serve_config(upstream.config(), root))
    size = len(png_bytes)
    path = f"/?{source}"
    cases = [
        ("bytes=0-9", {}, 206, png_bytes[:10], f"bytes 0-9/{size}"),
        ("bytes=-10", {}, 206, png_bytes[-10:], f"bytes {size - 10}-{size - 1}/{size}"),
        ("bytes=5-", {}, 206, png_bytes[5:], f"bytes 5-{size - 1}/{size}"),
        ("bytes=5-999999", {}, 206, png_bytes[5:], f"bytes 5-{size - 1}/{size}"),
        ("bytes=0-1,4-5", {}, 200, png_bytes, None),
        ("bytes=0-9", {"If-Range": '"stale"'}, 200, png_bytes, None),
        ("bytes=0-9", {"If-Range": f'"{sha}"'}, 206, png_bytes[:10], f"bytes 0-9/{size}"),
        ("items=0-9", {}, 200, png_bytes, None),
    ]
    for spec, extra, status, body, content_range in cases:
        response = await client.get(path, headers={"Range": spec, **extra})
        assert (status, body) == (response.status, await response.read()), spec
        assert content_range == response.headers.get("Content-Range"), spec
    beyond = await client.get(path, headers={"Range": f"bytes={size}-"})
    assert (416, f"bytes */{size}") == (beyond.status, beyond.headers["Content-Range"])


async def test_stale_copy_is_served_when_the_origin_is_gone(
    root: Path, png_bytes: bytes, make_client: MakeClient, make_config: Callable[..., Config]
) -> None:
    """The mirror outlives the origin: a stored object is served though its host cannot answer."""
    source = "http://gone.example/img.png"
    remember(root, source, png_bytes)
    client = await make_client(serve_config(make_config(), root))
    response = await client.get(f"/?{source}")
    assert (200, png_bytes) == (response.status, await response.read())


async def test_large_object_is_streamed_with_ranges(
    upstream: Upstream, root: Path, make_client: MakeClient
) -> None:
    """An object over the in-memory limit is streamed from disk, ranges included."""
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 9000  # 2.3 MB
    sha = hashlib.sha256(data).hexdigest()
    store_object(root, data, "png")
    client = await make_client(serve_config(upstream.config(), root))
    whole = await client.get(f"/mirror/{sha[:2]}/{sha}.png")
    assert (200, data) == (whole.status, await whole.read())
    part = await client.get(f"/mirror/{sha[:2]}/{sha}.png", headers={"Range": "bytes=1000-1999"})
    assert (206, data[1000:2000]) == (part.status, await part.read())


# --- misses -----------------------------------------------------------------------------------


async def test_closed_world_miss_fetches_a_known_source(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """A source the manifest knows (failed before) is fetched, verified, stored and recorded."""
    source = upstream.url("/img.png")
    remember(root, source, None, status="failed")
    client = await make_client(serve_config(upstream.config(), root))
    first = await client.get(f"/?{source}")
    assert (200, png_bytes) == (first.status, await first.read())
    second = await client.get(f"/?{source}")
    assert (200, png_bytes) == (second.status, await second.read())
    assert 1 == upstream.hits["/img.png"]
    sha = hashlib.sha256(png_bytes).hexdigest()
    assert object_file(root, sha, "png").is_file()
    with Manifest(manifest_path(root), readonly=True) as manifest:
        row = manifest.get(source)
    assert row is not None
    assert ("mirrored", sha) == (row.status, row.sha256)


async def test_closed_world_refuses_unknown_urls(
    upstream: Upstream, root: Path, make_client: MakeClient
) -> None:
    """A URL no post names is 404 without a fetch: the server is no open relay."""
    client = await make_client(serve_config(upstream.config(), root))
    response = await client.get(f"/?{upstream.url('/img.png')}")
    assert 404 == response.status
    assert "unknown-url" == response.headers["X-Mirror-Reason"]
    assert "no-store" == response.headers["Cache-Control"]
    assert not upstream.hits


async def test_open_mode_allowlist(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """Open mode fetches any image URL from allowed hosts and refuses the rest with 403."""
    config = serve_config(upstream.config(), root, open=True, allow_hosts=("*.example",))
    client = await make_client(config)
    ok = await client.get(f"/?{upstream.url('/img.png')}")
    assert (200, png_bytes) == (ok.status, await ok.read())
    other = serve_config(upstream.config(), root, open=True, allow_hosts=("cdn.test",))
    refused = await (await make_client(other)).get(f"/?{upstream.url('/img.jpg')}")
    assert (403, "not-allowed") == (refused.status, refused.headers["X-Mirror-Reason"])
    assert 0 == upstream.hits["/img.jpg"]


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/status/404", 404, "http-404"),
        ("/status/500", 502, "http-500"),
        ("/status/403", 502, "http-403"),
        ("/html", 415, "not-an-image"),
        ("/stall?seconds=3", 504, "timeout"),
        ("/to-canary", 403, "private-address"),
        ("/big?declared=1", 502, "too-large"),
    ],
)
async def test_error_codes(
    upstream: Upstream,
    canary: Canary,
    root: Path,
    make_client: MakeClient,
    path: str,
    status: int,
    reason: str,
) -> None:
    """Each upstream failure has its status; no upstream body or header is relayed."""
    base = upstream.config(attempts=1, read_timeout=0.3, total_timeout=1.0, max_bytes=1_000_000)
    client = await make_client(serve_config(base, root, open=True))
    response = await client.get(f"/?{upstream.url(path)}")
    body = await response.text()
    assert (status, reason) == (response.status, response.headers["X-Mirror-Reason"])
    assert "no-store" == response.headers["Cache-Control"]
    assert "gone" not in body
    assert "<html" not in body
    assert "ETag" not in response.headers
    assert 0 == canary.connections


@pytest.mark.parametrize(
    "query", ["not-a-url", "ftp://origin.example/x.png", "url=", "/x", "http://a%20b.example/x.png"]
)
async def test_malformed_url_is_400(
    upstream: Upstream, root: Path, make_client: MakeClient, query: str
) -> None:
    client = await make_client(serve_config(upstream.config(), root, open=True))
    response = await client.get(URL(f"/?{query}", encoded=True))
    assert (400, "bad-url") == (response.status, response.headers["X-Mirror-Reason"])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://10.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://0x7f.1/x.png",
    ],
)
async def test_blocked_addresses_are_403(
    upstream: Upstream, root: Path, make_client: MakeClient, url: str
) -> None:
    """Loopback and private literals are refused before connecting (the guard would see one)."""
    client = await make_client(serve_config(upstream.config(), root, open=True))
    response = await client.get(URL(f"/?{url}", encoded=True))
    assert 403 == response.status


async def test_rebinding_name_is_403(
    root: Path,
    canary: Canary,
    make_client: MakeClient,
    make_config: Callable[..., Config],
) -> None:
    """A name that resolves to loopback is refused; the canary behind it sees nothing."""
    dns = FakeResolver({"rebind.example": [[("127.0.0.1", canary.port)]]})
    client = await make_client(serve_config(make_config(), root, open=True), dns=dns)
    response = await client.get("/?http://rebind.example/x.png")
    assert (403, "private-address") == (response.status, response.headers["X-Mirror-Reason"])
    assert 0 == canary.connections


async def test_single_flight_shares_one_fetch(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """N concurrent requests for one URL cause one upstream request, and all get the image."""
    client = await make_client(serve_config(upstream.config(), root, open=True))
    path = "/slow?seconds=0.3"
    responses = await asyncio.gather(*(client.get(f"/?{upstream.url(path)}") for _ in range(12)))
    bodies = [(r.status, await r.read()) for r in responses]
    assert [(200, png_bytes)] * 12 == bodies
    assert 1 == upstream.hits[path]
    metrics = await (await client.get("/metrics")).text()
    assert "mirror_coalesced_waiters_total 11" in metrics


async def test_single_flight_shares_a_failure(
    upstream: Upstream, root: Path, make_client: MakeClient
) -> None:
    """A failing fetch is shared too: one upstream request, every waiter gets its error."""
    config = serve_config(upstream.config(attempts=1), root, open=True)
    client = await make_client(config)
    path = "/status/500?seconds=0.3"
    responses = await asyncio.gather(*(client.get(f"/?{upstream.url(path)}") for _ in range(8)))
    assert [502] * 8 == [r.status for r in responses]
    assert 1 == upstream.hits[path]


async def test_waiter_gives_up_after_the_request_timeout(
    upstream: Upstream, root: Path, make_client: MakeClient
) -> None:
    """A request behind a slow fetch ends with 504 after serve.request_timeout, not never."""
    base = upstream.config(attempts=1)
    client = await make_client(serve_config(base, root, open=True, request_timeout=0.3))
    response = await client.get(f"/?{upstream.url('/stall?seconds=5')}")
    assert (504, "timeout") == (response.status, response.headers["X-Mirror-Reason"])


class Clock:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def use_clock(client: Client, clock: Clock) -> None:
    """Make the app's resolver (this process's fetch owner) read ``clock``."""
    resolver = client.app[STATE].resolver
    assert isinstance(resolver, Resolver)
    resolver.clock = clock


async def test_negative_cache_backs_off(
    upstream: Upstream, root: Path, make_client: MakeClient
) -> None:
    """A failure is answered from memory until its backoff passes, which doubles per failure."""
    config = serve_config(upstream.config(attempts=1), root, open=True, negative_ttl=60.0)
    client = await make_client(config)
    clock = Clock()
    use_clock(client, clock)
    url = f"/?{upstream.url('/status/503')}"
    statuses = [(await client.get(url)).status for _ in range(3)]
    assert [502, 502, 502] == statuses
    assert 1 == upstream.hits["/status/503"]
    clock.now += 59.9
    assert 502 == (await client.get(url)).status
    assert 1 == upstream.hits["/status/503"]
    clock.now += 0.2  # past the first 60 s
    assert 502 == (await client.get(url)).status
    assert 2 == upstream.hits["/status/503"]
    clock.now += 119.9  # the second failure backs off 120 s
    assert 502 == (await client.get(url)).status
    assert 2 == upstream.hits["/status/503"]
    clock.now += 0.2
    assert 502 == (await client.get(url)).status
    assert 3 == upstream.hits["/status/503"]
    metrics = await (await client.get("/metrics")).text()
    assert "mirror_negative_cache_hits_total 4" in metrics


async def test_open_mode_evicts_least_recently_served(
    upstream: Upstream, root: Path, png_bytes: bytes, jpeg_bytes: bytes, make_client: MakeClient
) -> None:
    """Beyond max_store_bytes open mode forgets its oldest objects, never a post's."""
    post_source = upstream.url("/post.png")
    post_sha = remember(root, post_source, png_bytes + b"post")
    limit = max(len(png_bytes), len(jpeg_bytes)) + 10
    config = serve_config(upstream.config(), root, open=True, max_store_bytes=limit)
    client = await make_client(config)
    assert 200 == (await client.get(f"/?{upstream.url('/img.png')}")).status
    assert 200 == (await client.get(f"/?{upstream.url('/img.jpg')}")).status
    png_sha = hashlib.sha256(png_bytes).hexdigest()
    jpg_sha = hashlib.sha256(jpeg_bytes).hexdigest()
    assert not object_file(root, png_sha, "png").exists()
    assert object_file(root, jpg_sha, "jpg").is_file()
    assert object_file(root, post_sha, "png").is_file()
    with Manifest(manifest_path(root), readonly=True) as manifest:
        served = manifest.conn.execute("SELECT source FROM served").fetchall()
    assert [(upstream.url("/img.jpg"),)] == served


async def test_catalog_follows_the_manifest(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """Rows another process writes become hits without a restart (no SQLite per request)."""
    remember(root, upstream.url("/first.png"), png_bytes + b"1")
    client = await make_client(serve_config(upstream.config(), root, refresh_interval=0.01))
    source = upstream.url("/later.png")
    assert 404 == (await client.get(f"/?{source}")).status
    catalog = client.app[STATE].catalog
    loop = asyncio.get_running_loop()
    reloaded = asyncio.Event()
    real_reload = catalog.reload

    def reload() -> bool:
        changed = real_reload()  # the background refresh calls this in a thread
        if changed:
            loop.call_soon_threadsafe(reloaded.set)
        return changed

    catalog.reload = reload  # type: ignore[method-assign]
    remember(root, source, png_bytes)
    async with asyncio.timeout(30):
        # Bounded by the timeout: each pass waits for one more reload of the changed manifest.
        while catalog.lookup(source) is None:
            reloaded.clear()
            await reloaded.wait()
    response = await client.get(f"/?{source}")
    assert (200, png_bytes) == (response.status, await response.read())
    assert not upstream.hits


async def test_missing_object_file_is_fetched_again(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """A manifest row whose file was deleted counts as a miss and is repaired from the origin."""
    source = upstream.url("/img.png")
    sha = remember(root, source, png_bytes)
    object_file(root, sha, "png").unlink()
    client = await make_client(serve_config(upstream.config(), root))
    response = await client.get(f"/?{source}")
    assert (200, png_bytes) == (response.status, await response.read())
    assert 1 == upstream.hits["/img.png"]


# --- the admin routes -------------------------------------------------------------------------


async def test_health_ready_metrics_and_status(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """healthz, readyz, Prometheus text with the counters, and the status page's failures."""
    remember(root, upstream.url("/img.png"), png_bytes)
    client = await make_client(serve_config(upstream.config(attempts=1), root, open=True))
    sent = 0
    for path in ("/healthz", "/readyz"):
        response = await client.get(path)
        assert 200 == response.status
        sent += len(await response.read())
    for path in ("/img.png", "/status/404"):
        sent += len(await (await client.get(f"/?{upstream.url(path)}")).read())
    metrics = await client.get("/metrics")
    text = await metrics.text()
    assert 200 == metrics.status
    for line in (
        'mirror_requests_total{route="proxy",status="200"} 1',
        'mirror_requests_total{route="proxy",status="404"} 1',
        "mirror_cache_hits_total 1",
        "mirror_cache_misses_total 1",
        'mirror_upstream_fetches_total{outcome="failed",reason="http-404"} 1',
        'mirror_fetch_seconds_bucket{le="+Inf"} 1',
        f"mirror_served_bytes_total {sent}",
    ):
        assert any(row.startswith(line) for row in text.splitlines()), line
    page = await client.get("/")
    assert "origin.example" in await page.text()
    assert "text/html" in page.headers["Content-Type"]


async def test_readyz_reports_low_disk(
    upstream: Upstream, root: Path, make_client: MakeClient
) -> None:
    client = await make_client(serve_config(upstream.config(), root, min_free_bytes=2**62))
    response = await client.get("/readyz")
    assert 503 == response.status
    assert "free" in await response.text()


async def test_admin_routes_are_limited_to_admin_networks(
    upstream: Upstream, root: Path, make_client: MakeClient
) -> None:
    config = serve_config(upstream.config(), root, admin_networks=("10.0.0.0/8",))
    client = await make_client(config)
    assert 403 == (await client.get("/metrics")).status
    assert 403 == (await client.get("/")).status
    assert 200 == (await client.get("/healthz")).status


async def test_accel_redirect_hands_hits_to_nginx(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """With serve.accel_redirect a hit is an empty answer naming the file for nginx to send."""
    source = upstream.url("/img.png")
    sha = remember(root, source, png_bytes)
    config = serve_config(upstream.config(), root, accel_redirect="/objects/")
    client = await make_client(config)
    response = await client.get(f"/?{source}")
    assert (200, b"") == (response.status, await response.read())
    assert f"/objects/{sha[:2]}/{sha}.png" == response.headers["X-Accel-Redirect"]
    assert "image/png" == response.headers["Content-Type"]
    missing = await client.get(f"/?{upstream.url('/other.png')}")
    assert 404 == missing.status
    assert "X-Accel-Redirect" not in missing.headers


# --- CORS preflights ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "allowed"),
    [
        ("Range, If-None-Match, X-Requested-With", "range, if-none-match, x-requested-with"),
        ("authorization, cookie, x-custom, accept", "accept"),
        ("CONTENT-TYPE,content-type , If-Modified-Since", "content-type, if-modified-since"),
        ("authorization", None),
        (None, None),
    ],
)
async def test_preflight_answers_for_every_image_route(
    upstream: Upstream,
    root: Path,
    png_bytes: bytes,
    make_client: MakeClient,
    asked: str | None,
    allowed: str | None,
) -> None:
    """OPTIONS on /?<url> and object paths: 204, any origin, our methods, allowlisted headers."""
    sha = remember(root, upstream.url("/img.png"), png_bytes)
    client = await make_client(serve_config(upstream.config(), root))
    headers = {"Origin": "https://blog.example", "Access-Control-Request-Method": "GET"}
    if asked is not None:
        headers["Access-Control-Request-Headers"] = asked
    for path in (
        f"/?{upstream.url('/img.png')}",
        f"/?{upstream.url('/unknown.png')}",
        f"/mirror/{sha[:2]}/{sha}.png",
        f"/mirror/{sha[:2]}/{'0' * 64}.png",
    ):
        response = await client.options(path, headers=headers)
        assert (204, b"") == (response.status, await response.read()), path
        assert "*" == response.headers["Access-Control-Allow-Origin"]
        assert "GET, HEAD, OPTIONS" == response.headers["Access-Control-Allow-Methods"]
        assert "86400" == response.headers["Access-Control-Max-Age"]
        assert allowed == response.headers.get("Access-Control-Allow-Headers"), path
        assert "Access-Control-Request-Headers" == response.headers["Vary"]
        assert "Access-Control-Allow-Credentials" not in response.headers
    assert not upstream.hits
    metrics = await (await client.get("/metrics")).text()
    assert 'mirror_requests_total{route="preflight",status="204"} 4' in metrics


async def test_preflight_on_the_status_page_is_405(
    upstream: Upstream, root: Path, make_client: MakeClient
) -> None:
    """The bare / serves no image, so it has no preflight."""
    client = await make_client(serve_config(upstream.config(), root))
    response = await client.options("/", headers={"Access-Control-Request-Method": "GET"})
    assert (405, "GET, HEAD") == (response.status, response.headers["Allow"])


async def test_answers_do_not_vary_on_origin(
    upstream: Upstream, root: Path, png_bytes: bytes, make_client: MakeClient
) -> None:
    """Hits and errors give every origin the same answer: *, and no Vary: Origin."""
    source = upstream.url("/img.png")
    remember(root, source, png_bytes)
    client = await make_client(serve_config(upstream.config(), root))
    for origin in ("https://a.example", "https://b.example", None):
        headers = {"Origin": origin} if origin else {}
        for path, status in ((f"/?{source}", 200), (f"/?{upstream.url('/x.png')}", 404)):
            response = await client.get(path, headers=headers)
            assert status == response.status
            assert "*" == response.headers["Access-Control-Allow-Origin"]
            assert "origin" not in response.headers.get("Vary", "").lower()


# --- the access log -----------------------------------------------------------------------------

ACCESS_LINE = re.compile(
    r"(?P<host>\S+) - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)" '
    r"reason=(?P<reason>\S+) time=(?P<time>\d+\.\d{6})"
)


async def logged_client(aiohttp_client: Any, app: web.Application) -> Client:
    """A test client for ``app`` on a server with serve's access log, as ``mirror serve`` runs."""
    server = TestServer(app)
    await server.start_server(**runner_options())
    client: Client = await aiohttp_client(server)
    return client


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    """The ``mirror.access`` and ``mirror`` loggers, put back as they were after the test."""
    access, parent = logging.getLogger(ACCESS), logging.getLogger("mirror")
    saved = (list(access.handlers), access.level, access.propagate)
    saved_parent = (list(parent.handlers), parent.level)
    yield access
    for handler in list(access.handlers):
        if handler not in saved[0]:
            handler.close()
    access.handlers[:], access.level, access.propagate = saved
    parent.handlers[:], parent.level = saved_parent


async def test_access_log_lines(
    upstream: Upstream,
    root: Path,
    png_bytes: bytes,
    aiohttp_client: Any,
    access_logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One combined-format line per request, with reason and time; no cookie or credential."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    source = upstream.url("/img.png")
    remember(root, source, png_bytes)
    client = await logged_client(aiohttp_client, create_app(serve_config(upstream.config(), root)))
    secret = {"Cookie": "session=cookie-secret", "Authorization": "Bearer token-secret"}
    agent = 'Mozilla/5.0 "quoted" \\ agent'
    sent = {"Referer": "https://blog.example/post.html", "User-Agent": agent, **secret}
    assert 200 == (await client.get(f"/?{source}", headers=sent)).status
    assert 404 == (await client.get(f"/?{upstream.url('/x.png')}")).status
    assert 200 == (await client.head(f"/?{source}")).status
    assert 204 == (await client.options(f"/?{source}")).status
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS]
    assert 4 == len(lines), lines
    found = [ACCESS_LINE.fullmatch(line) for line in lines]
    assert all(found), lines
    hit, miss, head, options = (m.groupdict() for m in found if m is not None)
    assert ("127.0.0.1", f"GET /?{source} HTTP/1.1", "200") == (
        hit["host"],
        hit["request"],
        hit["status"],
    )
    assert (str(len(png_bytes)), "-") == (hit["bytes"], hit["reason"])
    assert ("https://blog.example/post.html", 'Mozilla/5.0 \\"quoted\\" \\\\ agent') == (
        hit["referer"],
        hit["agent"],
    )
    assert ("404", "unknown-url", "-") == (miss["status"], miss["reason"], miss["referer"])
    assert ("HEAD", "-") == (head["request"].split()[0], head["bytes"])
    assert ("OPTIONS", "204", "-") == (
        options["request"].split()[0],
        options["status"],
        options["bytes"],
    )
    assert all(float(m["time"]) >= 0 for m in (hit, miss, head, options))
    for line in lines:
        assert "secret" not in line


def test_access_line_escapes_control_characters() -> None:
    """A header cannot end a line or a field early: quotes, backslashes and controls are escaped."""
    assert '\\"a\\\\b\\x0a\\x1b' == _escape('"a\\b\n\x1b')
    assert "-" == _escape("")
    assert 1024 == len(_escape("x" * 5000))


async def test_access_log_to_a_file_and_off(
    upstream: Upstream,
    root: Path,
    tmp_path: Path,
    png_bytes: bytes,
    aiohttp_client: Any,
    access_logger: logging.Logger,
) -> None:
    """A configured file gets one line per request; "" without -v writes nothing."""
    configure_logging(0)
    target = tmp_path / "access.log"
    target.write_text("an older line\n")
    assert configure_access_log(str(target))
    source = upstream.url("/img.png")
    remember(root, source, png_bytes)
    app = create_app(serve_config(upstream.config(), root, access_log=str(target)))
    client = await logged_client(aiohttp_client, app)
    for _ in range(3):
        assert 200 == (await client.get(f"/?{source}")).status
    lines = target.read_text().splitlines()
    assert "an older line" == lines[0]
    assert 4 == len(lines)
    assert all(ACCESS_LINE.fullmatch(line) for line in lines[1:])
    assert not configure_access_log("")
    assert not access_logger.isEnabledFor(logging.INFO)
    # aiohttp asks whether the log is on once per connection: this one is new.
    response = await client.get(f"/?{source}", headers={"Connection": "close"})
    assert 200 == response.status
    other = await logged_client(aiohttp_client, create_app(serve_config(upstream.config(), root)))
    assert 200 == (await other.get(f"/?{source}")).status
    assert 4 == len(target.read_text().splitlines())


def test_access_log_targets(access_logger: logging.Logger, tmp_path: Path) -> None:
    """-v turns the default "" on (stderr); "-" is stderr; an unwritable file is a config error."""
    configure_logging(1)
    assert configure_access_log("")
    assert [sys.stderr] == [getattr(h, "stream", None) for h in access_logger.handlers]
    configure_logging(0)
    assert configure_access_log("-")
    assert not access_logger.propagate
    with pytest.raises(ConfigError, match=r"serve\.access_log"):
        configure_access_log(str(tmp_path / "no-such-folder" / "access.log"))
