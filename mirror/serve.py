"""
``mirror serve``: the CORS proxy's drop-in replacement, answering from verified local copies.

Routes:

``GET /?<url>``                 the worker's form: the inner URL raw (its own query string kept)
                                or percent-encoded; also ``/?url=<encoded>``. HEAD too.
``GET <base path><ab>/<sha256>.<ext>``  the objects rewritten posts point at.
``OPTIONS`` on both                 a CORS preflight: 204 (:func:`~mirror.response.preflight`).
``/healthz`` ``/readyz`` ``/metrics`` and ``/`` (a status page; the last two only for
``serve.admin_networks``).

A hit is answered from the in-memory URL map (:class:`~mirror.catalog.Catalog`) and the object
cache without touching the manifest (a SQLite file, or PostgreSQL shared by several serve
nodes); a miss goes to the fetch owner (:mod:`mirror.resolver`), in this
process or, with several workers, over a socket. Error responses are short text with
``Cache-Control: no-store``; upstream headers and bodies are never relayed.

The store is reached only through its protocol (:class:`~mirror.store.ObjectStore`), so the
same server answers from a folder or a bucket. ``serve.hits`` says how a hit is answered:
``"stream"`` sends the bytes (ETag = sha256, 304s, ranges, CORS and CSP headers, from either
backend); ``"redirect"`` answers 302 to the object's public URL (a bucket's CDN then carries the
bytes), which needs a store that has one. ``serve.accel_redirect`` hands hits to nginx and needs a
store whose objects are files on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web
from aiohttp.abc import AbstractResolver

from mirror.bounded import BoundedMap, url_key
from mirror.catalog import Catalog, Entry
from mirror.config import Config
from mirror.downloader import Downloader
from mirror.errors import ConfigError, MirrorError, StoreError
from mirror.fetch import Fetcher
from mirror.manifest import open_manifest
from mirror.metrics import Metrics, merge, render
from mirror.resolver import Resolution, Resolver, Resolves
from mirror.response import IMMUTABLE, SAFE_HEADERS, Loaded, ObjectCache, preflight, send
from mirror.source import Classified, Classifier, hostname, inner_absolute
from mirror.store import ObjectStore, open_store

log = logging.getLogger(__name__)

HEARTBEAT = 2.0
# Raw query -> source, keyed by a digest of the query: a query can be 8 KB, and so can its source.
SOURCE_MEMO = 8192
SOURCE_MEMO_BYTES = 4 * 1024 * 1024
# Open-mode hit times waiting for the next heartbeat; beyond this the oldest hit times are lost,
# which only makes the least-recently-served order a little staler.
MAX_SEEN = 16384
SEEN_BYTES = 4 * 1024 * 1024
_OBJECT_NAME = re.compile(r"([0-9a-f]{64})\.([a-z0-9]{1,10})")
_ENCODED = re.compile(r"https?%3a", re.IGNORECASE)
# A DNS name (IDN letters allowed), an IPv4 literal, or a bracketed IPv6 literal.
_HOST = re.compile(r"[\w.-]+|\[[0-9a-f:.]+\]", re.IGNORECASE)
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A name to ask the store about in /readyz and at startup: no object has it (it hashes nothing).
PROBE_SHA256 = "0" * 64
# How long a client may keep a redirect from /?<url>: a source's object can change (a refresh),
# an object path's never does.
REDIRECT_CACHE = "public, max-age=86400"


class QueryClassifier(Classifier):
    """
    A :class:`~mirror.source.Classifier` without its memo, for ``serve``.

    The memo is for posts, which repeat URLs; it keeps 4096 URLs whatever their size (64 MB of
    8 KB ones). serve remembers what queries name in :attr:`ServeState.sources`, bounded by bytes.
    """

    def classify(self, decoded: str) -> Classified | None:
        """Classify as the base class does, remembering nothing."""
        return self._classify(decoded)


@dataclass
class ServeState:
    """Everything a request handler needs; built by the app's cleanup context."""

    config: Config
    store: ObjectStore
    catalog: Catalog
    cache: ObjectCache
    classifier: Classifier
    resolver: Resolves
    metrics: Metrics = field(default_factory=Metrics)
    seen: BoundedMap[str, float] = field(default_factory=lambda: BoundedMap(MAX_SEEN, SEEN_BYTES))
    admin: tuple[_Network, ...] = ()
    # Parsing costs as much as the rest of a hit, and hot URLs repeat; "" means "names none".
    sources: BoundedMap[bytes, str] = field(
        default_factory=lambda: BoundedMap(SOURCE_MEMO, SOURCE_MEMO_BYTES)
    )

    def source(self, query: str) -> str | None:
        """:func:`requested_source`, remembered for the :data:`SOURCE_MEMO` latest queries."""
        key = url_key(query)
        found = self.sources.get(key)
        if found is None:
            found = requested_source(query, self.classifier) or ""
            self.sources.put(key, found)
        return found or None


@dataclass(frozen=True, slots=True)
class Wiring:
    """What ``create_app`` was given besides the config."""

    remote: Resolves | None = None
    dns: AbstractResolver | None = None
    store: ObjectStore | None = None


CONFIG = web.AppKey("config", Config)
WIRING = web.AppKey("wiring", Wiring)
STATE = web.AppKey("state", ServeState)


def requested_source(query: str, classifier: Classifier) -> str | None:
    """
    Return the source URL a ``/?<query>`` request asks for, or None when it names none.

    ``query`` is the raw query string: the framework's decoded one is already unquoted once,
    which would corrupt an inner URL that carries its own percent-escapes.
    """
    if query[:4].lower() == "url=":
        inner = unquote(query[4:].split("&", 1)[0])
    elif _ENCODED.match(query):
        inner = unquote(query)
    else:
        inner = query
    if not inner or (inner.startswith("/") and not inner.startswith("//")):
        return None
    if "://" not in inner[:12] and not inner.startswith("//") and "." not in inner.split("/")[0]:
        return None  # "host/path" without a scheme is accepted only when it names a domain
    found = classifier.classify(inner_absolute(inner))
    if found is None or _HOST.fullmatch(hostname(found.source)) is None:
        return None
    return found.source


def error_response(status: int, reason: str, message: str) -> web.Response:
    """A short plain-text error that no cache keeps."""
    headers = {**SAFE_HEADERS, "Cache-Control": "no-store", "X-Mirror-Reason": reason}
    return web.Response(status=status, text=f"{status} {reason}: {message}\n", headers=headers)


def _count(state: ServeState, route: str, response: web.StreamResponse) -> web.StreamResponse:
    state.metrics.inc("mirror_requests_total", (route, str(response.status)))
    length = response.content_length
    if length is not None:
        state.metrics.inc("mirror_served_bytes_total", by=length)
    return response


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    """``/?<url>``: serve from the store, or fetch on a miss; ``/`` alone is the status page."""
    state = request.app[STATE]
    query = request.rel_url.raw_query_string
    if not query:
        return await handle_status(request)
    source = state.source(query)
    if source is None:
        return _count(state, "proxy", error_response(400, "bad-url", "not an http(s) image URL"))
    entry = state.catalog.lookup(source)
    if entry is not None:
        hit = await _hit(request, state, entry, REDIRECT_CACHE)
        if hit is not None:
            state.metrics.inc("mirror_cache_hits_total")
            if source in state.catalog.served:
                state.seen.put(source, time.time())  # open mode's least-recently-served order
            return _count(state, "proxy", hit)
        state.catalog.forget(source)
    state.metrics.inc("mirror_cache_misses_total")
    timeout = state.config.serve.request_timeout
    try:
        async with asyncio.timeout(timeout):
            resolution = await state.resolver.resolve(source)
    except TimeoutError:
        resolution = Resolution(504, "timeout", f"no answer within {timeout:g} s")
    except MirrorError as exc:
        log.error("serving %s: %s", source, exc)
        resolution = Resolution(exc.http_status, exc.reason, "the store cannot take it now")
    if resolution.status != 200 or resolution.entry is None:
        reason = resolution.reason or "error"
        return _count(state, "proxy", error_response(resolution.status, reason, resolution.message))
    state.catalog.add(source, resolution.entry)
    hit = await _hit(request, state, resolution.entry, REDIRECT_CACHE, known=True)
    if hit is None:
        return _count(state, "proxy", error_response(502, "store", "the object vanished; retry"))
    return _count(state, "proxy", hit)


async def _hit(
    request: web.Request, state: ServeState, entry: Entry, cache: str, *, known: bool = False
) -> web.StreamResponse | None:
    """
    Answer with a stored object as ``serve.hits`` says, or None when it is not in the store.

    ``known``: the object was just stored, so a redirect or nginx need no check first.
    """
    serve = state.config.serve
    if serve.hits == "redirect":
        # The catalog is trusted: a HEAD per hit would cost what the redirect saves.
        return _redirect(state.store, entry.sha256, entry.ext, cache)
    if serve.accel_redirect:
        if not known and await _stat(state, entry.sha256, entry.ext) is None:
            return None
        return _accel(serve.accel_redirect, entry)
    obj = await _load(state, entry.sha256, entry.ext)
    if obj is None:
        return None
    return await _send(request, state, obj)


async def _stat(state: ServeState, sha256: str, ext: str) -> object | None:
    try:
        return await state.store.stat(sha256, ext)
    except StoreError as exc:
        raise _StoreDown(str(exc)) from exc


async def _load(state: ServeState, sha256: str, ext: str) -> Loaded | None:
    try:
        return await state.cache.load(sha256, ext)
    except StoreError as exc:
        raise _StoreDown(str(exc)) from exc


async def _send(request: web.Request, state: ServeState, obj: Loaded) -> web.StreamResponse:
    try:
        return await send(request, obj, state.store)
    except StoreError as exc:
        raise _StoreDown(str(exc)) from exc


class _StoreDown(Exception):
    """The store failed while answering a hit: 503, said once by :func:`_errors`."""


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer a failing store with 503 (the next request may find it back) instead of a 500."""
    try:
        response: web.StreamResponse = await handler(request)
    except _StoreDown as exc:
        log.error("the store failed: %s", exc)
        state = request.app[STATE]
        return _count(state, "store", error_response(503, "store", "the store cannot answer now"))
    return response


def _redirect(store: ObjectStore, sha256: str, ext: str, cache: str) -> web.Response:
    """302 to the object's public URL (the CDN then carries the bytes)."""
    target = store.public_url(sha256, ext)
    assert target is not None  # checked at startup (_check_store)
    headers = {**SAFE_HEADERS, "Location": target, "Cache-Control": cache}
    return web.Response(status=302, headers=headers)


def _accel(prefix: str, entry: Entry) -> web.Response:
    """Hand the file to nginx: it sends it with its own sendfile, ranges and 304s."""
    target = f"{prefix}{entry.sha256[:2]}/{entry.sha256}.{entry.ext}"
    headers = {**SAFE_HEADERS, "X-Accel-Redirect": target, "Content-Type": entry.mime}
    return web.Response(headers=headers)


async def handle_object(request: web.Request) -> web.StreamResponse:
    """``<base path><ab>/<sha256>.<ext>``: a stored object by name."""
    state = request.app[STATE]
    match = _OBJECT_NAME.fullmatch(request.match_info["name"])
    if match is None or request.match_info["shard"] != match[1][:2]:
        return _count(state, "object", error_response(404, "not-found", "no such object"))
    if state.config.serve.hits == "redirect":
        # An object's name is its bytes: the redirect never changes, and the bucket says 404.
        return _count(state, "object", _redirect(state.store, match[1], match[2], IMMUTABLE))
    obj = await _load(state, match[1], match[2])
    if obj is None:
        return _count(state, "object", error_response(404, "not-found", "no such object"))
    return _count(state, "object", await _send(request, state, obj))


async def handle_preflight(request: web.Request) -> web.StreamResponse:
    """``OPTIONS`` on ``/?<url>`` or an object path: the CORS preflight browsers send first."""
    state = request.app[STATE]
    if "name" not in request.match_info and not request.rel_url.raw_query_string:
        # The bare / is the status page, not an image.
        response = error_response(405, "method-not-allowed", "OPTIONS is for /?<url> and objects")
        response.headers["Allow"] = "GET, HEAD"
        return _count(state, "status", response)
    return _count(state, "preflight", preflight(request))


async def handle_healthz(request: web.Request) -> web.StreamResponse:
    """Alive: the event loop answers."""
    return _count(request.app[STATE], "healthz", web.Response(text="ok\n"))


async def _readiness(state: ServeState) -> list[str]:
    problems: list[str] = []
    store = state.store
    try:
        # Both halves of a miss: a body can be staged, and the backend answers.
        async with store.staging() as staged:
            folder = staged.path.parent
        await store.stat(PROBE_SHA256, "png")
    except StoreError as exc:
        problems.append(f"store {store.description}: {exc}")
    else:
        try:
            free = (await asyncio.to_thread(shutil.disk_usage, folder)).free
        except OSError as exc:
            problems.append(f"cannot read free space of {folder}: {exc.strerror or exc}")
        else:
            if free < state.config.serve.min_free_bytes:
                problems.append(f"only {free} bytes free on the disk of {folder}")
    try:
        await state.catalog.readable()
    except MirrorError as exc:
        problems.append(str(exc))
    return problems


async def handle_readyz(request: web.Request) -> web.StreamResponse:
    """Ready: store writable, disk headroom, manifest readable."""
    state = request.app[STATE]
    problems = await _readiness(state)
    if problems:
        response = web.Response(status=503, text="\n".join(problems) + "\n")
    else:
        response = web.Response(text="ready\n")
    response.headers["Cache-Control"] = "no-store"
    return _count(state, "readyz", response)


def _admin(request: web.Request, state: ServeState) -> bool:
    try:
        address = ipaddress.ip_address((request.remote or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in state.admin)


async def _status(state: ServeState) -> dict[str, Any]:
    return await state.resolver.status(state.metrics.snapshot())


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text: this server's counters summed over every worker."""
    state = request.app[STATE]
    if not _admin(request, state):
        return _count(state, "metrics", error_response(403, "forbidden", "not for this network"))
    status = await _status(state)
    gauges = {
        "mirror_catalog_objects": ("Source URLs with a stored object.", len(state.catalog.entries)),
        "mirror_fetches_in_flight": ("Upstream fetches running now.", status["in_flight"]),
    }
    text = render(merge(status["snapshots"]), gauges)
    response = web.Response(text=text, content_type="text/plain", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    return _count(state, "metrics", response)


async def handle_status(request: web.Request) -> web.StreamResponse:
    """A small HTML page: counts and recent failures by host."""
    state = request.app[STATE]
    if not _admin(request, state):
        return _count(state, "status", error_response(403, "forbidden", "not for this network"))
    status = await _status(state)
    total = merge(status["snapshots"])
    hits = sum(total.counters["mirror_cache_hits_total"].values())
    misses = sum(total.counters["mirror_cache_misses_total"].values())
    by_host: Counter[str] = Counter(f["host"] for f in status["failures"])
    rows = "".join(
        f"<tr><td>{html.escape(host)}</td><td>{n}</td></tr>" for host, n in by_host.most_common()
    )
    recent = "".join(
        f"<li>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(f['time']))} {f['status']} "
        f"{html.escape(str(f['reason']))} <code>{html.escape(f['source'])}</code></li>"
        for f in reversed(status["failures"][-20:])
    )
    store = html.escape(state.store.description)
    mode = "open" if state.config.serve.open else "closed world"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mirror serve</title></head>
<body><h1>mirror serve</h1><p>Mode: {mode}. Store: <code>{store}</code></p>
<ul><li>{len(state.catalog.entries)} source URLs with a stored object</li>
<li>{len(state.catalog.known)} source URLs named by posts</li>
<li>{hits} hits, {misses} misses, {status["in_flight"]} fetches in flight</li></ul>
<h2>Recent failures by host</h2><table><tr><th>host</th><th>failures</th></tr>{rows}</table>
<ul>{recent}</ul></body></html>
"""
    response = web.Response(text=page, content_type="text/html", charset="utf-8")
    response.headers.update({"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
    return _count(state, "status", response)


async def _heartbeat(state: ServeState) -> None:
    """Write open-mode hit times and share this worker's counters, every few seconds."""
    while True:
        await asyncio.sleep(HEARTBEAT)
        await _flush(state)


async def _flush(state: ServeState) -> None:
    seen = state.seen.drain()
    try:
        await state.resolver.touch(seen)
        await _status(state)
    except (MirrorError, OSError) as exc:
        log.warning("cannot reach the fetch owner: %s", exc)


@contextlib.asynccontextmanager
async def local_resolver(
    config: Config, store: ObjectStore, catalog: Catalog, dns: AbstractResolver | None
) -> AsyncIterator[Resolver]:
    """
    Run the fetch owner over ``config``'s manifest, SQLite or PostgreSQL, until exit.

    Records go through the async manifest; eviction has a connection of its own (it holds the
    write lock across the store's deletes).
    """
    async with contextlib.AsyncExitStack() as stack:
        manifest = await stack.enter_async_context(open_manifest(config))
        evictor = await stack.enter_async_context(open_manifest(config))
        fetcher = await stack.enter_async_context(Fetcher(config, resolver=dns))
        downloader = Downloader(config, fetcher, store, manifest, breaker=False)
        resolver = Resolver(
            config,
            store=store,
            manifest=manifest,
            evictor=evictor,
            downloader=downloader,
            catalog=catalog,
            metrics=Metrics(),
        )
        try:
            yield resolver
        finally:
            await resolver.flight.close()


async def open_catalog(config: Config, stack: contextlib.AsyncExitStack) -> Catalog:
    """
    Build the URL map over ``config``'s manifest; a PostgreSQL one gets a connection of its own.

    The PostgreSQL manifest is opened for writing, so the first node to start brings the
    schema up (the migration takes an advisory lock; the catalog itself only reads).
    """
    path = config.manifest_file
    if path is None:
        feed = await stack.enter_async_context(open_manifest(config))
        return Catalog(feed=feed)
    # A SQLite file is read directly: the catalog notices a replaced file by its inode.
    return Catalog(path)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    wiring = app[WIRING]
    store = wiring.store if wiring.store is not None else open_store(config)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(store)
        catalog = await open_catalog(config, stack)
        resolver: Resolves
        if wiring.remote is None:
            local = local_resolver(config, store, catalog, wiring.dns)
            resolver = await stack.enter_async_context(local)
        else:
            resolver = wiring.remote
        refresh = await catalog.run_refresh(config.serve.refresh_interval)
        state = ServeState(
            config=config,
            store=store,
            catalog=catalog,
            cache=ObjectCache(store, config.serve.memory_cache_bytes),
            classifier=QueryClassifier(config.scan.wrappers),
            resolver=resolver,
            admin=tuple(ipaddress.ip_network(n, strict=False) for n in config.serve.admin_networks),
        )
        app[STATE] = state
        heartbeat = asyncio.create_task(_heartbeat(state), name="serve-heartbeat")
        try:
            yield
        finally:
            for task in (heartbeat, refresh):
                task.cancel()
            await asyncio.gather(heartbeat, refresh, return_exceptions=True)
            await _flush(state)


def check_store(config: Config, store: ObjectStore) -> None:
    """
    Refuse a ``serve`` setting the store cannot honour, before anything starts.

    Raises:
        ConfigError: ``serve.hits = "redirect"`` on a store with no public URL, or
            ``serve.accel_redirect`` on one whose objects are not files here.
    """
    if config.serve.hits == "redirect" and store.public_url(PROBE_SHA256, "png") is None:
        raise ConfigError(
            "serve.hits",
            f'"redirect" needs a store with a public URL (store.s3.public_url); '
            f"{store.description} has none",
        )
    if config.serve.accel_redirect and store.local_file(PROBE_SHA256, "png") is None:
        raise ConfigError(
            "serve.accel_redirect",
            f"nginx can send only files on this machine; {store.description} keeps none",
        )


def create_app(
    config: Config,
    *,
    remote: Resolves | None = None,
    dns: AbstractResolver | None = None,
) -> web.Application:
    """
    Build the ``serve`` application.

    Args:
        config: the whole config tree (``serve``, ``store``, ``fetch``, ``network``...).
        remote: the fetch owner in another process; None owns fetching here.
        dns: a resolver for upstream host names (tests); None uses the system's.

    Raises:
        ConfigError: the store cannot honour ``serve.hits`` or ``serve.accel_redirect``.
    """
    store = open_store(config)
    check_store(config, store)
    app = web.Application(client_max_size=1024, middlewares=[_errors])
    app[CONFIG] = config
    app[WIRING] = Wiring(remote, dns, store)
    app.cleanup_ctx.append(_resources)
    prefix = urlsplit(config.base_url).path or "/"
    objects = prefix + "{shard:[0-9a-f]{2}}/{name}"
    app.router.add_get("/", handle_proxy)
    app.router.add_route("OPTIONS", "/", handle_preflight)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get(objects, handle_object)
    app.router.add_route("OPTIONS", objects, handle_preflight)
    return app
