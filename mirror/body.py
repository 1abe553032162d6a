"""
Read one response body: hashed as it streams, under the byte cap and the rate floor.

The body goes to memory, or chunk by chunk into a file the caller gives (``into``), so a large
object need not be held whole. Any failure drops the connection rather than draining a body nobody
wants.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import BinaryIO

import aiohttp

from mirror.atomic import describe_os_error
from mirror.config import FetchConfig
from mirror.errors import StoreError, TooLarge, Truncated, UpstreamTimeout
from mirror.rate import RateFloor

CHUNK = 64 * 1024


async def read_body(
    url: str, resp: aiohttp.ClientResponse, fetch: FetchConfig, into: BinaryIO | None = None
) -> tuple[bytes, str]:
    """
    Read ``resp``'s body whole; return it (``b""`` when written ``into`` a file) and its sha256.

    Raises:
        TooLarge: the body is, or says it is, over ``fetch.max_bytes``.
        Truncated: it ended before its Content-Length.
        UpstreamTimeout: it fell under ``fetch.min_rate``.
        StoreError: ``into`` cannot be written.
    """
    cap = fetch.max_bytes
    declared = resp.content_length
    watch = _Watch(fetch) if fetch.min_rate else None
    try:
        if declared is not None and declared > cap:
            raise TooLarge(
                f"{url}: Content-Length {declared} is over the cap of {cap}",
                detail=f"Content-Length {declared} is over the cap of {cap} bytes",
            )
        digest, parts, total = hashlib.sha256(), list[bytes](), 0
        while chunk := await resp.content.read(CHUNK):
            if watch is not None:
                watch.floor.feed(len(chunk))
            total += len(chunk)
            if total > cap:
                raise TooLarge(
                    f"{url}: body passed the cap of {cap} bytes",
                    detail=f"body passed the cap of {cap} bytes",
                )
            digest.update(chunk)
            if into is None:
                parts.append(chunk)
            else:
                _write(into, chunk)
        # Compressed bodies are measured after decoding, so only an identity body can be short.
        if declared is not None and total < declared and not resp.headers.get("Content-Encoding"):
            raise Truncated(
                f"{url}: got {total} of {declared} bytes", detail=f"got {total} of {declared} bytes"
            )
    except asyncio.CancelledError as exc:
        resp.close()
        if watch is not None and watch.tripped():
            rate, window = fetch.min_rate, fetch.min_rate_window
            raise UpstreamTimeout(
                f"{url}: under {rate} bytes/s over {window:g} s",
                detail=f"under {rate} bytes/s over {window:g} s",
            ) from exc
        raise
    except BaseException:
        resp.close()
        raise
    finally:
        if watch is not None:
            watch.close()
    return b"".join(parts), digest.hexdigest()


class _Watch:
    """
    Cancel the reading task once its body falls under the rate floor.

    One timer per response, set for the floor's deadline and moved on only when it fires (the
    deadline moves with every chunk, a timer per chunk cost more than the rest of the loop).
    """

    def __init__(self, fetch: FetchConfig) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.floor = RateFloor(fetch.min_rate, fetch.min_rate_window, loop.time)
        self._loop, self._task, self._fired = loop, task, False
        self._timer = loop.call_at(self.floor.deadline(), self._check)

    def _check(self) -> None:
        if self.floor.too_slow():
            self._fired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(self.floor.deadline(), self._check)

    def tripped(self) -> bool:
        """Tell whether this watch (and nothing else) cancelled the task; if so, undo it."""
        # As asyncio.timeout does: a cancellation from outside as well stays a cancellation.
        return self._fired and self._task.uncancel() == 0

    def close(self) -> None:
        """Stop watching."""
        self._timer.cancel()


def _write(into: BinaryIO, chunk: bytes) -> None:
    try:
        into.write(chunk)
    except OSError as exc:
        # The caller's file, not the upstream: never reported (or retried) as a fetch failure.
        raise StoreError(describe_os_error(exc, Path("the download"))) from exc
