"""
Name what went wrong with a download: aiohttp's and the OS's exceptions → a FetchError.

Each FetchError gets its report ``reason`` (the public vocabulary) and a short, human ``detail``
("cannot resolve img.example.com", "connection refused by 1.2.3.4:80", "TLS: certificate verify
failed (hostname mismatch)", "read timeout after 20 s", "HTTP 403 Forbidden"). Details can quote
an upstream (a status line's phrase), so :func:`short` makes them one bounded, printable line
before they reach a log line or a report.
"""

from __future__ import annotations

import re
import ssl

import aiohttp

from mirror.config import FetchConfig
from mirror.connect import BlockedAddress
from mirror.errors import FetchError, PolicyError, Truncated, UpstreamTimeout

DETAIL_CHARS = 160
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\s]+")
# How asyncio and Happy Eyeballs spell the address that refused: "('1.2.3.4', 80)".
_SOCKADDR = re.compile(r"\('([0-9A-Fa-f:.%]+)', (\d+)")


def short(text: str, limit: int = DETAIL_CHARS) -> str:
    """Return ``text`` as one line of printable characters, at most ``limit`` long."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_detail(status: int, phrase: str | None) -> str:
    """The status line as a detail: ``HTTP 403 Forbidden``."""
    return short(f"HTTP {status} {phrase or ''}")


def _where(exc: aiohttp.ClientConnectorError) -> str:
    found = _SOCKADDR.search(str(exc.os_error))
    if found is not None:
        address = found[1]
        return f"[{address}]:{found[2]}" if ":" in address else f"{address}:{found[2]}"
    return f"{exc.host}:{exc.port}"


def _tls(exc: aiohttp.ClientSSLError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        message = getattr(error, "verify_message", "") or str(error)
        if "hostname mismatch" in message.lower():
            message = "hostname mismatch"
        return f"TLS: certificate verify failed ({message.rstrip('.').lower()})"
    error = exc.os_error
    reason = getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None
    words = str(reason).replace("_", " ").lower() if reason else str(error)
    return f"TLS: handshake failed ({words})"


def classify(exc: BaseException, url: str, fetch: FetchConfig) -> FetchError:
    """
    Return the FetchError that ``exc``, raised while fetching ``url``, stands for.

    Args:
        exc: an aiohttp, OS or timeout error (a FetchError is returned as it is).
        url: the URL being fetched, for the message.
        fetch: the timeouts, for the detail.
    """
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(
            f"{url}: timed out connecting",
            detail=f"connect timeout after {fetch.connect_timeout:g} s",
        )
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return UpstreamTimeout(
            f"{url}: timed out reading", detail=f"read timeout after {fetch.read_timeout:g} s"
        )
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(
            f"{url}: timed out", detail=f"timed out after {fetch.total_timeout:g} s in all"
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Truncated(f"{url}: body cut short: {exc}", detail="body cut short")
    if isinstance(exc, aiohttp.InvalidURL):
        return FetchError(f"{url}: bad URL: {exc}", "bad-url", "bad URL")
    if isinstance(exc, aiohttp.ClientSSLError):
        return FetchError(f"{url}: TLS failed: {exc}", "tls", short(_tls(exc)))
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return FetchError(f"{url}: cannot resolve: {exc}", "dns", f"cannot resolve {exc.host}")
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        where = f"the proxy {exc.host}:{exc.port}"
        return FetchError(f"{url}: cannot connect to {where}", detail=f"cannot connect to {where}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Happy Eyeballs folds the errors of several addresses into one message.
        if BlockedAddress.MARK in str(exc.os_error):
            return PolicyError(f"{url}: {exc}", "private-address", short(str(exc.os_error)))
        if isinstance(exc.os_error, ConnectionRefusedError) or "refused" in str(exc.os_error):
            detail = f"connection refused by {_where(exc)}"
        else:
            detail = f"cannot connect to {_where(exc)}: {exc.strerror or exc.os_error}"
        return FetchError(f"{url}: cannot connect: {exc}", detail=short(detail))
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        detail = status_detail(exc.status, exc.message)
        return FetchError(f"{url}: proxy refused: {exc}", detail=f"proxy answered {detail}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return FetchError(f"{url}: {exc}", detail="the server closed the connection")
    if isinstance(exc, ConnectionResetError) or "reset by peer" in str(exc):
        return FetchError(f"{url}: {exc!r}", detail="connection reset")
    return FetchError(f"{url}: connection failed: {exc!r}", detail=short(f"{exc!r}"))
