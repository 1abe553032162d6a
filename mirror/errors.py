"""
The exception tree; each class carries its exit status and, where ``serve`` meets it, its HTTP
status.

::

    MirrorError                      exit 1, HTTP 500
    ├── UsageError                   exit 2  (bad command line)
    ├── ConfigError                  exit 2  (bad config key or value; names the key)
    ├── ExtractError                 a post that cannot be read at all
    ├── FetchError                   HTTP 502, carries a report ``reason`` and a short ``detail``
    │   ├── PolicyError              HTTP 403 (private-address, bad-port, not-allowed)
    │   ├── UpstreamStatusError      http-NNN; HTTP 404 for an upstream 404, else 502
    │   ├── UpstreamTimeout          HTTP 504 (also a TimeoutError)
    │   ├── TooLarge                 too-large
    │   └── Truncated                truncated
    ├── VerifyError                  HTTP 502, carries a report ``reason``
    │   └── NotAnImage               HTTP 415
    ├── StoreError                   the store cannot be written (a full disk, ...)
    └── ManifestError                the manifest cannot be read or written

The report ``reason`` strings are a public vocabulary (reports, the manifest and ``serve`` agree on
them), so they live on the exceptions rather than in message text. A FetchError's ``detail`` is the
short human half ("cannot resolve img.example.com", "read timeout after 20 s", "HTTP 403
Forbidden") that reports and ``-v`` show beside the reason; ``serve`` never sends it to a client.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """What ``mirror`` returns to the shell."""

    OK = 0
    INCOMPLETE = 1
    USAGE = 2
    INTERRUPTED = 130


class MirrorError(Exception):
    """Base of everything mirror raises on purpose."""

    exit_status: ExitStatus = ExitStatus.INCOMPLETE
    http_status: int = 500
    reason: str = "error"


class UsageError(MirrorError):
    """The command line asks for something impossible."""

    exit_status = ExitStatus.USAGE


class ConfigError(MirrorError):
    """A config key or value is wrong; the message names the key."""

    exit_status = ExitStatus.USAGE

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key


class ExtractError(MirrorError):
    """A post could not be read."""

    reason = "unreadable"


class FetchError(MirrorError):
    """Downloading failed; ``reason`` is the report's reason code, ``detail`` says what happened."""

    http_status = 502
    reason = "connection"

    def __init__(self, message: str, reason: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.detail = detail if detail is not None else message


class PolicyError(FetchError):
    """Refused before connecting: a blocked address, port or host."""

    http_status = 403
    reason = "private-address"


class UpstreamStatusError(FetchError):
    """The server answered with a status that is not a success."""

    def __init__(self, status: int, message: str | None = None, detail: str | None = None) -> None:
        message = message or f"upstream answered HTTP {status}"
        super().__init__(message, f"http-{status}", detail or f"HTTP {status}")
        self.status = status
        self.http_status = 404 if status == 404 else 502


class UpstreamTimeout(FetchError, TimeoutError):
    """The server was too slow."""

    http_status = 504
    reason = "timeout"


class TooLarge(FetchError):
    """The body passed the byte cap."""

    reason = "too-large"


class Truncated(FetchError):
    """The body ended before its Content-Length, or the image before its end marker."""

    reason = "truncated"


class VerifyError(MirrorError):
    """The bytes are not the image the post declares."""

    http_status = 502
    reason = "not-an-image"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class NotAnImage(VerifyError):
    """The bytes are not an image of an allowed format."""

    http_status = 415
    reason = "not-an-image"


class StoreError(MirrorError):
    """The store cannot be written or read."""

    reason = "store"


class ManifestError(MirrorError):
    """The manifest cannot be read or written."""

    reason = "manifest"
