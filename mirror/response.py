"""
Responses for stored objects: ETag and Last-Modified, 304s, byte ranges, CORS preflights, and the
headers that make an image proxy safe to point browsers at.

Objects are read through the store's protocol (:class:`~mirror.store.ObjectStore`), whatever the
backend. Small objects (the usual web image) are read whole into memory and kept in a bounded LRU
of hot objects, then sent as one body: measured against aiohttp's FileResponse, whose thread hops
per request cost most of a hit's time. Objects over :data:`STREAM_OVER` bytes are streamed
(:meth:`~mirror.store.ObjectStore.stream`: chunks read in a thread from a folder, or one ranged
GET from a bucket), so one large image never holds the event loop or much memory.
"""

from __future__ import annotations

import email.utils
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from mirror.catalog import mime_for
from mirror.errors import StoreError
from mirror.store import ObjectStore
from mirror.store.base import CACHE_CONTROL

STREAM_OVER = 1024 * 1024
# What a cached object holds besides its bytes (its record, path, headers and key): tracemalloc
# measured 1,276 bytes; counted so a cache of tiny images stays within memory_cache_bytes.
ENTRY_BYTES = 1536
IMMUTABLE = CACHE_CONTROL
# An image proxy must never let a stored file act as a page or script in the viewer's origin.
# Any page may read the images (they are public): "*", never an echoed Origin, so no answer
# depends on Origin and none needs Vary: Origin.
SAFE_HEADERS: dict[str, str] = {
    "Access-Control-Allow-Origin": "*",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "cross-origin",
}
METHODS = "GET, HEAD, OPTIONS"
# The request headers a preflight may ask for and get: those an image GET can use (validators,
# ranges, content negotiation) and those fetch() callers and XHR libraries add (Content-Type,
# X-Requested-With, which cors-anywhere's clients send). Anything else (Authorization, Cookie,
# custom headers) is left out of the answer, so the browser does not send it.
PREFLIGHT_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-language",
        "content-type",
        "range",
        "if-range",
        "if-none-match",
        "if-modified-since",
        "cache-control",
        "pragma",
        "x-requested-with",
    }
)
# A day: Firefox keeps a preflight that long, Chromium at most two hours.
PREFLIGHT_MAX_AGE = 86400

# What a 304 leaves out: it has no body to describe.
_BODY_HEADERS = frozenset({"Content-Type", "Accept-Ranges"})


@dataclass(frozen=True, slots=True)
class Loaded:
    """An object ready to send: its bytes (None when streamed from the store) and headers."""

    sha256: str
    ext: str
    data: bytes | None
    size: int
    etag: str
    mtime: int
    headers: dict[str, str]


class ObjectCache:
    """Loads objects from the store, keeping up to ``max_bytes`` of hot small ones in memory."""

    def __init__(self, store: ObjectStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.held = 0
        self._items: OrderedDict[str, Loaded] = OrderedDict()

    async def load(self, sha256: str, ext: str) -> Loaded | None:
        """
        Return the object, or None when it is not in the store.

        A folder store answers a stat and a small read synchronously (a page-cache read takes
        tens of microseconds, less than a thread hop costs).

        Raises:
            StoreError: the store failed (a bucket that does not answer).
        """
        key = f"{sha256}.{ext}"
        cached = self._items.get(key)
        if cached is not None:
            self._items.move_to_end(key)
            return cached
        info = await self.store.stat(sha256, ext)
        if info is None:
            return None
        data = None
        if info.size <= STREAM_OVER:
            try:
                data = await self.store.read(sha256, ext, 0, info.size)
            except StoreError:
                if await self.store.stat(sha256, ext) is None:
                    return None  # evicted or collected between the two calls
                raise
        mtime = int(info.modified)
        etag = f'"{sha256}"'
        headers = {
            **SAFE_HEADERS,
            "Cache-Control": IMMUTABLE,
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(mtime, usegmt=True),
            "Content-Type": mime_for(ext),
            "Accept-Ranges": "bytes",
        }
        size = info.size if data is None else len(data)
        loaded = Loaded(sha256, ext, data, size, etag, mtime, headers)
        if data is not None and len(data) + ENTRY_BYTES <= self.max_bytes:
            self._items[key] = loaded
            self.held += len(data) + ENTRY_BYTES
            while self.held > self.max_bytes:
                _sha, old = self._items.popitem(last=False)
                self.held -= old.size + ENTRY_BYTES
        return loaded

    def drop(self, sha256: str, ext: str) -> None:
        """Forget an object (it was evicted)."""
        old = self._items.pop(f"{sha256}.{ext}", None)
        if old is not None:
            self.held -= old.size + ENTRY_BYTES


def preflight(request: web.BaseRequest) -> web.Response:
    """
    Answer a CORS preflight (``OPTIONS``): 204, any origin, GET/HEAD/OPTIONS, and the requested
    headers that :data:`PREFLIGHT_HEADERS` allows, in the order asked, for a day.

    The answer depends on Access-Control-Request-Headers, hence ``Vary`` on it; not on Origin
    or the requested method (the browser checks the method against the list itself).
    """
    asked = request.headers.get("Access-Control-Request-Headers", "")
    allowed: list[str] = []
    for token in asked.split(","):
        name = token.strip().lower()
        if name in PREFLIGHT_HEADERS and name not in allowed:
            allowed.append(name)
    headers = {
        **SAFE_HEADERS,
        "Access-Control-Allow-Methods": METHODS,
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        "Allow": METHODS,
        "Vary": "Access-Control-Request-Headers",
    }
    if allowed:
        headers["Access-Control-Allow-Headers"] = ", ".join(allowed)
    return web.Response(status=204, headers=headers)


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match's weak comparison of ``etag`` against a header's list (or ``*``)."""
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in header.split(","))


def not_modified(request: web.BaseRequest, obj: Loaded) -> bool:
    """Tell whether the request's validators say the client's copy is current."""
    none_match = request.headers.get("If-None-Match")
    if none_match is not None:
        # RFC 9110 13.1.3: If-Modified-Since is ignored when If-None-Match is present.
        return etag_matches(none_match, obj.etag)
    since = request.headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        when = email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError, IndexError):
        return False
    if when.tzinfo is None:
        return False
    return obj.mtime <= when.timestamp()


def byte_range(request: web.BaseRequest, obj: Loaded) -> tuple[int, int] | None:
    """
    Return the one range ``(start, end inclusive)`` to send, or None for the whole object.

    Multiple ranges, malformed headers and a stale If-Range get the whole object (RFC 9110
    allows ignoring Range).

    Raises:
        web.HTTPRequestRangeNotSatisfiable: the range starts past the end.
    """
    header = request.headers.get("Range")
    if header is None:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() not in (obj.etag, obj.headers["Last-Modified"]):
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if not first.isdigit() and not (first == "" and last.isdigit()):
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise _unsatisfiable(obj)
        return max(0, obj.size - suffix), obj.size - 1
    start = int(first)
    if last and not last.isdigit():
        return None
    if start >= obj.size:
        raise _unsatisfiable(obj)
    end = int(last) if last else obj.size - 1
    if end < start:
        return None
    return start, min(end, obj.size - 1)


def _unsatisfiable(obj: Loaded) -> web.HTTPRequestRangeNotSatisfiable:
    return web.HTTPRequestRangeNotSatisfiable(
        headers={
            **SAFE_HEADERS,
            "Content-Range": f"bytes */{obj.size}",
            "Cache-Control": "no-store",
        }
    )


async def send(request: web.BaseRequest, obj: Loaded, store: ObjectStore) -> web.StreamResponse:
    """
    Answer with ``obj``: 200, 206 for a range, or 304 when the client's copy is current.

    Raises:
        StoreError: a streamed object cannot be read (before any byte is sent).
    """
    if not_modified(request, obj):
        headers = {k: v for k, v in obj.headers.items() if k not in _BODY_HEADERS}
        return web.Response(status=304, headers=headers)
    span = byte_range(request, obj) if request.method in ("GET", "HEAD") else None
    status, start, end = 200, 0, obj.size - 1
    headers = obj.headers
    if span is not None:
        status, (start, end) = 206, span
        headers = {**headers, "Content-Range": f"bytes {start}-{end}/{obj.size}"}
    if obj.data is not None:
        body = obj.data if status == 200 else obj.data[start : end + 1]
        return web.Response(status=status, body=body, headers=headers)
    return await _stream(request, obj, store, status, headers, start, end - start + 1)


async def _stream(
    request: web.BaseRequest,
    obj: Loaded,
    store: ObjectStore,
    status: int,
    headers: dict[str, str],
    start: int,
    count: int,
) -> web.StreamResponse:
    chunks = store.stream(obj.sha256, obj.ext, start, count)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = count
    try:
        # The first chunk before the headers: a missing object is still an error status.
        first = b"" if request.method == "HEAD" else await anext(chunks, b"")
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        sent = len(first)
        if first:
            await response.write(first)
        # Bounded by the object's size: the store yields at most ``count`` bytes.
        async for chunk in chunks:
            await response.write(chunk)
            sent += len(chunk)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    if sent != count:
        # The object shrank or vanished mid-way: cut the connection rather than end the body
        # short with a clean end-of-stream the client would take as the whole image.
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
