"""
Getting one source's image from wherever it still lives: the download half of the pipeline.

For each source URL the configured ``fetch.sources`` are tried in order:

``origin``      the source URL itself
``proxy``       the wrapper exactly as the post writes it
``https``       the origin upgraded from http to https
``alternates``  the other URLs of the same element (``data-original``, ``data-gif-url``, srcset)
``wayback``     the Internet Archive's raw copy, ``web.archive.org/web/<timestamp>id_/<url>``,
                nearest the post's ``date:`` (else the latest)

The first that delivers a verified image wins. Every candidate streams into one staged file per
source (in the store's staging area, truncated by each attempt) while it is hashed and counted;
verification reads that file, and :meth:`~mirror.store.ObjectStore.commit` moves it into the
store, so no body is ever held whole in memory. When a host answers 403 or a placeholder of
another size, the request profiles configured for it (Referer, User-Agent, headers) are tried
in order; the one that worked is remembered per host (in the manifest) and tried first next
time, and recorded per object as ``<source>/<profile>`` in ``via``.

Each object records how it was found: ``via`` is the source and profile (``origin``, ``proxy``,
``https``, ``alternates``, ``wayback``, ``origin/<profile>``) and ``fetched_from`` the URL that
delivered the bytes after redirects (the exact ``web.archive.org/web/<ts>id_/...`` capture, say),
by which a rescue is audited. Every try is an :class:`~mirror.manifest.Attempt` with its reason
and a short detail; ``-v`` logs one line per failed try (logger ``mirror.fetch``).

A per-host circuit breaker: after ``fetch.host_failures`` consecutive host-level failures
(DNS, connection, timeout, TLS, truncation, 5xx) in one run, the origin host is not asked again in
that run: its remaining sources go straight to the other candidates (proxy, wayback...) and, when
none delivers, fail with ``host-down``, due again next run instead of eating this run's time.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from mirror.config import Config, ProfileConfig
from mirror.errors import FetchError, MirrorError, PolicyError, StoreError, VerifyError
from mirror.failure import short
from mirror.fetch import Fetcher, HostFilter
from mirror.manifest import Attempt, SourceResult
from mirror.models import ImageInfo, ImageRef, StoredObject
from mirror.source import host_allowed, hostname, origin_host
from mirror.store import ObjectStore, Staged
from mirror.verify import verify_async

log = logging.getLogger("mirror.fetch")

WAYBACK = "https://web.archive.org/web/{stamp}id_/{url}"
# Answers that a different request might change: a hotlink block or a placeholder image.
PROFILE_REASONS = frozenset({"http-403", "size-mismatch"})
_HOST_LEVEL = re.compile(r"dns|connection|timeout|tls|truncated|http-5\d\d")


def is_host_level(reason: str) -> bool:
    """Tell whether a failure's reason says the host is in trouble (what the breaker counts)."""
    return _HOST_LEVEL.fullmatch(reason) is not None


class HostGuard(Protocol):
    """
    Per-host slots and a breaker shared beyond this process (:mod:`mirror.queue.hosts`).

    ``slot(host)`` is held around each request to the origin host and may raise a FetchError
    ``host-down``; ``is_down(host)`` is asked before it.
    """

    def is_down(self, host: str) -> bool:
        """Tell whether ``host`` is known to be down."""
        ...

    def slot(self, host: str) -> AbstractAsyncContextManager[None]:
        """Hold one of ``host``'s request slots."""
        ...


# Protects an object from serve's eviction until the rows naming it are committed (issue #13
# row 1): the bytes may already be there as an open-mode object no post names yet, and the post
# will name it before its sources row commits. A pin taken after an eviction finds the object
# gone, and the commit that follows writes it again.
Pin = Callable[[str], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    How one source ended in this run; ``next_attempt`` is when a failure is due again.

    ``via`` is the source (and profile) that delivered, ``fetched_from`` the URL it came from.
    """

    status: str
    reason: str | None = None
    obj: StoredObject | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    fetched_from: str | None = None
    attempts: tuple[Attempt, ...] = ()
    next_attempt: float | None = None
    etag: str | None = None
    last_modified: str | None = None
    http_status: int = 200
    via: str | None = None

    def result(self, source: str, now: float) -> SourceResult:
        """The manifest row this outcome of ``source`` makes."""
        obj = self.obj
        return SourceResult(
            source=source,
            status=self.status,
            reason=self.reason,
            sha256=obj.sha256 if obj else None,
            ext=obj.ext if obj else None,
            size=obj.size if obj else None,
            format=self.format,
            width=self.width,
            height=self.height,
            fetched_from=self.fetched_from,
            via=self.via,
            attempts=self.attempts,
            etag=self.etag,
            last_modified=self.last_modified,
            attempted_at=now,
            next_attempt=self.next_attempt,
        )


@dataclass(frozen=True, slots=True)
class Context:
    """
    What a source's post says besides the references: alternates and the post's date; and,
    for ``serve``, the proxy to try (a post's own wrapper comes from its references).
    """

    alternates: tuple[str, ...] = ()
    date: str | None = None
    proxy: str | None = None


def wayback_url(source: str, date: str | None, now: float) -> str:
    """The Wayback Machine's raw-bytes URL of ``source`` nearest ``date`` (YYYYMMDDhhmmss)."""
    stamp = date or time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return WAYBACK.format(stamp=stamp, url=source)


def candidates(
    names: tuple[str, ...], source: str, refs: list[ImageRef], context: Context, now: float
) -> list[tuple[str, str]]:
    """The (source name, URL) pairs to try for ``source``, in order, without repeats."""
    found: list[tuple[str, str]] = []
    for name in names:
        if name == "origin":
            found.append((name, source))
        elif name == "proxy":
            wrapper = next((r.decoded.strip() for r in refs if r.proxied), context.proxy)
            if wrapper is not None:
                found.append((name, wrapper))
        elif name == "https" and source.startswith("http://"):
            found.append((name, "https://" + source[len("http://") :]))
        elif name == "alternates":
            found += [(name, alt) for alt in context.alternates]
        elif name == "wayback":
            found.append((name, wayback_url(source, context.date, now)))
    seen: set[str] = set()
    unique = []
    for name, url in found:
        if url not in seen:
            seen.add(url)
            unique.append((name, url))
    return unique


class HostProfiles(Protocol):
    """
    Where the downloader remembers which request profile worked per host: the manifest.

    Any :class:`mirror.manifest.base.Manifest` is one; the downloader needs nothing else of it.
    """

    async def host_profile(self, host: str) -> str | None:
        """Return the request profile that last worked for ``host``, or None."""
        ...

    async def record_host_profile(self, host: str, profile: str | None) -> None:
        """Remember which request profile worked for ``host``."""
        ...


class Downloader:
    """Downloads, verifies and stores sources for one run (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        fetcher: Fetcher,
        store: ObjectStore,
        manifest: HostProfiles,
        clock: Callable[[], float] = time.time,
        *,
        breaker: bool = True,
        guard: HostGuard | None = None,
        pin: Pin | None = None,
    ) -> None:
        self.config = config
        # Called with an object's sha256 before it is committed (see Pin).
        self.pin = pin
        # Per run; a long-lived serve has its negative cache instead.
        self.breaker = breaker
        # Queue workers: fetch.per_host and the breaker across all workers (mirror.queue).
        self.guard = guard
        self.fetcher = fetcher
        self.store = store
        self.manifest = manifest
        self.clock = clock
        self.fetched_bytes = 0
        self._streak: Counter[str] = Counter()
        self._down: set[str] = set()
        self._profiles: dict[str, str | None] = {}

    async def _profiles_for(self, host: str) -> list[ProfileConfig | None]:
        """None (the plain request) and the host's profiles, the one that last worked first."""
        if not self.config.fetch.profiles:
            return [None]  # the usual case, on every download: nothing to look up
        bare = hostname("http://" + host)
        mine = [p for p in self.config.fetch.profiles if host_allowed(bare, p.hosts)]
        order: list[ProfileConfig | None] = [None, *mine]
        if host not in self._profiles:
            self._profiles[host] = await self.manifest.host_profile(host)
        best = self._profiles[host]
        winner = next((p for p in mine if p.name == best), None)
        if winner is not None:
            order.remove(winner)
            order.insert(0, winner)
        return order

    async def download(
        self,
        source: str,
        refs: list[ImageRef],
        context: Context,
        headers: dict[str, str],
        names: tuple[str, ...] | None = None,
        allow: HostFilter | None = None,
    ) -> Outcome:
        """
        Try every candidate URL of ``source`` until one gives a verified image; commit it.

        ``headers`` are sent with the origin request (conditional validators on a refresh);
        ``names`` overrides ``fetch.sources``; ``allow``, when given, must accept the host of
        every hop (``serve``'s open-mode allowlist). A 304 answer is a mirrored outcome with no
        object.

        Raises:
            MirrorError: the store cannot be written (the run stops); never for a bad upstream.
        """
        async with contextlib.AsyncExitStack() as stack:
            return await self._download(stack, source, refs, context, headers, names, allow)

    async def _download(
        self,
        stack: contextlib.AsyncExitStack,
        source: str,
        refs: list[ImageRef],
        context: Context,
        headers: dict[str, str],
        names: tuple[str, ...] | None,
        allow: HostFilter | None,
    ) -> Outcome:
        host = origin_host(source)
        now = self.clock()
        sized = next((r for r in refs if r.declared and r.declared_kind != "display"), None)
        declared = sized.declared if sized else None
        kind = sized.declared_kind if sized else None
        attempts: list[Attempt] = []
        first: MirrorError | None = None
        # One staged file per source, made on the first request and truncated by every attempt.
        staged: Staged | None = None
        names = names or self.config.fetch.sources
        for name, url in candidates(names, source, refs, context, now):
            at_origin = name in ("origin", "https")
            if at_origin and (host in self._down or (self.guard and self.guard.is_down(host))):
                attempts.append(Attempt(name, url, "host-down", f"{host} is down in this run"))
                first = first or FetchError(f"{host} is down in this run", "host-down")
                continue
            for profile in await self._profiles_for(host) if at_origin else [None]:
                label = name if profile is None else f"{name}/{profile.name}"
                extra = dict(headers) if name == "origin" else {}
                if profile is not None:
                    home = source.split(host, 1)[0] + host + "/"
                    extra.update(profile.header_map(home))
                if staged is None:
                    staged = await stack.enter_async_context(self.store.staging())
                try:
                    gate = (lambda: self._gate(host)) if at_origin else None
                    slot = (
                        self.guard.slot(host)
                        if self.guard is not None and at_origin
                        else contextlib.nullcontext()
                    )
                    async with slot:
                        download = await self.fetcher.get(
                            url,
                            limit_key=host,
                            headers=extra,
                            gate=gate,
                            allow=allow,
                            into=staged.file,
                        )
                    if download.status == 304:
                        attempts.append(Attempt(label, url, "not-modified"))
                        self._healthy(host)
                        return Outcome("mirrored", "not-modified", attempts=tuple(attempts))
                    info = await self._verify(staged, declared, kind)
                    # The manifest row comes after this returns: never a row without an object.
                    if self.pin is not None:
                        await self.pin(download.sha256)
                    obj = await self.store.commit(staged, download.sha256, info.ext, info.mime)
                except (FetchError, VerifyError) as exc:
                    detail = short(exc.detail if isinstance(exc, FetchError) else str(exc))
                    attempts.append(Attempt(label, url, exc.reason, detail))
                    log.info(
                        "%s failed: host=%s reason=%s detail=%s url=%s",
                        label,
                        hostname(url),
                        exc.reason,
                        detail,
                        url,
                    )
                    first = first or exc
                    if at_origin:
                        self._failed(host, exc.reason)
                    if exc.reason not in PROFILE_REASONS:
                        break  # another profile would not change this answer
                    continue
                attempts.append(Attempt(label, url, "ok"))
                self._healthy(host)
                if profile is not None or self._profiles.get(host) is not None:
                    chosen = None if profile is None else profile.name
                    if self._profiles.get(host) != chosen:
                        self._profiles[host] = chosen
                        await self.manifest.record_host_profile(host, chosen)
                self.fetched_bytes += obj.size
                return Outcome(
                    "mirrored",
                    None,
                    obj,
                    info.format,
                    info.width,
                    info.height,
                    download.final_url,
                    tuple(attempts),
                    etag=download.etag if name == "origin" else None,
                    last_modified=download.last_modified if name == "origin" else None,
                    via=label,
                )
        status = "blocked" if isinstance(first, PolicyError) else "failed"
        reason, code = (first.reason, first.http_status) if first else ("no-source", 404)
        return Outcome(status, reason, attempts=tuple(attempts), http_status=code)

    async def _verify(
        self, staged: Staged, declared: tuple[int, int] | None, kind: str | None
    ) -> ImageInfo:
        """Verify the staged body from its file: it is on local disk, never whole in memory."""
        try:
            staged.file.flush()
            return await verify_async(staged.path, self.config.verify, declared, kind)
        except OSError as exc:
            raise StoreError(f"cannot read the staged download {staged.path}: {exc}") from exc

    def _failed(self, host: str, reason: str) -> None:
        if not self.breaker or _HOST_LEVEL.fullmatch(reason) is None:
            return
        self._streak[host] += 1
        if self._streak[host] >= self.config.fetch.host_failures and host not in self._down:
            self._down.add(host)
            log.warning(
                "%s failed %d times in a row (%s): its other images wait for the next run",
                host,
                self._streak[host],
                reason,
            )

    def _gate(self, host: str) -> None:
        if host in self._down:
            raise FetchError(f"{host} is down in this run", "host-down")

    def _healthy(self, host: str) -> None:
        self._streak.pop(host, None)
