"""
The exception tree; each class carries its exit status and, where ``serve`` meets it, its HTTP
status.

::

    MirrorError                      exit 3 (the command itself failed), HTTP 500
    ├── UsageError                   exit 2  (bad command line, a missing PATH, not a store)
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
    ├── StoreError                   exit 3  the store cannot be written (a full disk, ...)
    ├── ManifestError                exit 3  the manifest cannot be read or written
    ├── QueueError                   exit 3  the fetch queue cannot be reached or used
    └── ListenError                  exit 3  ``serve`` cannot listen (the port is in use, ...)

``LockedError`` (:mod:`mirror.lock`) is a MirrorError too: exit 3. Exit 1 never comes from an
exception: it is a finished run's verdict (some reference not mirrored, a post left alone).

The report ``reason`` strings are a public vocabulary (reports, the manifest and ``serve`` agree on
them), so they live on the exceptions rather than in message text. A FetchError's ``detail`` is the
short human half ("cannot resolve img.example.com", "read timeout after 20 s", "HTTP 403
Forbidden") that reports and ``-v`` show beside the reason; ``serve`` never sends it to a client.
:data:`REASONS` lists every reason a failed or blocked source can carry.
"""

from __future__ import annotations

import enum
import re


class ExitStatus(enum.IntEnum):
    """What ``mirror`` returns to the shell (httpie's ``ExitStatus``, rsync's partial codes)."""

    OK = 0
    INCOMPLETE = 1
    USAGE = 2
    FAILED = 3
    INTERRUPTED = 130


# What each status means, for `mirror --help` and the README (tests/test_cli.py keeps them equal).
EXIT_STATUSES: tuple[tuple[ExitStatus, str], ...] = (
    (ExitStatus.OK, "done: every reference is mirrored, or there was nothing to do"),
    (
        ExitStatus.INCOMPLETE,
        "finished, but some references were not mirrored (failed, blocked, skipped) "
        "or a post was left alone",
    ),
    (
        ExitStatus.USAGE,
        "usage or config error: a bad option or key, a PATH that does not exist, "
        "a --store that is not a store",
    ),
    (
        ExitStatus.FAILED,
        "the run itself failed: disk full, store unreadable, manifest corrupt or from a newer "
        "mirror, store lock held, port in use",
    ),
    (ExitStatus.INTERRUPTED, "interrupted (Ctrl-C, or SIGTERM during an --every run)"),
)

# Every reason a failed or blocked source can carry, for `--retry-reason` (plus http-NNN). The
# fetch, verify and care stages raise them; tests/test_cli.py checks that this list covers every
# reason in errors.py, downloader.py and the README.
REASONS: tuple[str, ...] = (
    # the network
    "dns",
    "connection",
    "timeout",
    "tls",
    "truncated",
    "too-large",
    "too-many-redirects",
    "bad-url",
    "host-down",
    "no-source",
    # the address policy (blocked)
    "private-address",
    "bad-port",
    "not-allowed",
    # verification
    "not-an-image",
    "pixel-bomb",
    "size-mismatch",
    # store care
    "missing-object",
    "corrupt-object",
    "collected",
    # mirror's own trouble
    "unreadable",
    "store",
    "manifest",
    "queue",
    # a queued run's source no worker finished (its task failed past its retries)
    "not-fetched",
    "error",
)
HTTP_REASON = re.compile(r"http-[1-5][0-9][0-9]")


def is_reason(code: str) -> bool:
    """Tell whether ``code`` is a reason a failed or blocked source can carry."""
    return code in REASONS or HTTP_REASON.fullmatch(code) is not None


class MirrorError(Exception):
    """Base of everything mirror raises on purpose; escaping a command, it means it failed."""

    exit_status: ExitStatus = ExitStatus.FAILED
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
        self.problem = problem


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

    exit_status = ExitStatus.FAILED
    reason = "store"


class ManifestError(MirrorError):
    """The manifest cannot be read or written."""

    exit_status = ExitStatus.FAILED
    reason = "manifest"


class QueueError(MirrorError):
    """The fetch queue (procrastinate's tables in PostgreSQL) cannot be reached or used."""

    exit_status = ExitStatus.FAILED
    reason = "queue"


class ListenError(MirrorError):
    """``serve`` cannot listen on its address (the port is in use, or not ours to take)."""

    exit_status = ExitStatus.FAILED
