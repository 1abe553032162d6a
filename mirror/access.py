"""
The access log of ``serve``: one line per request, the combined log format plus why and how long::

    127.0.0.1 - - [29/Nov/2026:13:55:36 +0000] "GET /?http://a.example/x.jpg HTTP/1.1" 404 38
    "https://blog.example/post.html" "Mozilla/5.0 ..." reason=http-404 time=0.012345

(one line). ``reason`` is the response's ``X-Mirror-Reason`` (``-`` for a success) and ``time``
the seconds from the request's arrival until its response was sent. The bytes field is the body
as announced (Content-Length; ``-`` for none, HEAD, 204 and 304).

aiohttp calls :meth:`AccessLog.log` after each response; the records go to the logger
``mirror.access``, whose handlers :func:`mirror.log.configure_access_log` sets up. Only the fields
above are written: never a request body, cookies or Authorization. The request line, Referer and
User-Agent are escaped as Apache escapes them (``\\"``, ``\\\\``, ``\\xhh``), so a client cannot
forge a line or a field.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from mirror.log import ACCESS

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f-\x9f]')
# Each text field is cut to this many characters, so a line stays a few KB whatever is sent.
MAX_FIELD = 1024


def _escape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        char = match[0]
        return "\\" + char if char in '"\\' else f"\\x{ord(char):02x}"

    return _UNSAFE.sub(one, text[:MAX_FIELD]) or "-"


def _when(started: float) -> str:
    # By hand: strftime's %b follows the locale, the format wants English month names.
    tm = time.localtime(started)
    offset = tm.tm_gmtoff // 60
    sign = "-" if offset < 0 else "+"
    zone = f"{sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"
    return (
        f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {zone}"
    )


def access_line(request: BaseRequest, response: StreamResponse, seconds: float) -> str:
    """Return the access log line of one answered request (without a newline)."""
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    first = f"{request.method} {request.raw_path} {version}"
    sent = response.content_length
    if request.method == "HEAD" or response.status in (204, 304):
        sent = None
    headers = request.headers
    return (
        f"{request.remote or '-'} - - [{_when(time.time() - seconds)}] "
        f'"{_escape(first)}" {response.status} {sent or "-"} '
        f'"{_escape(headers.get("Referer", "-"))}" "{_escape(headers.get("User-Agent", "-"))}" '
        f"reason={_escape(response.headers.get('X-Mirror-Reason', '-'))} time={seconds:.6f}"
    )


class AccessLog(AbstractAccessLogger):
    """aiohttp's access logger for ``serve`` (``access_log_class``); see the module docstring."""

    def __init__(self, logger: logging.Logger, log_format: str = "") -> None:
        super().__init__(logger, log_format)

    @property
    def enabled(self) -> bool:
        """Tell aiohttp whether to time and log requests at all (asked once per connection)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """Write one request's line."""
        self.logger.info("%s", access_line(request, response, time))


def runner_options() -> dict[str, Any]:
    """The ``AppRunner`` (or test server) options that turn this access log on."""
    return {"access_log": logging.getLogger(ACCESS), "access_log_class": AccessLog}
