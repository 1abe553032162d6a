"""
Download image bytes over HTTP(S) under the address policy, with retries, a byte cap, a rate floor.

One :class:`Fetcher` owns one aiohttp session for a whole run. The address policy is enforced where
the connection is made, not on the URL's name (:mod:`mirror.connect`): every DNS answer aiohttp
will connect to is filtered, IP literals (which aiohttp never resolves) are checked before the
request, and the socket factory checks the final socket address as a last line of defence.
Through an HTTP(S) proxy a request is pinned to the address vetted here, so the proxy never
resolves a post's name; each redirect hop is admitted afresh (scheme, address, port, and the
caller's host allowlist).

Slow upstreams are bounded three ways: the response head must arrive within ``connect_timeout +
read_timeout``; after it, the body must keep ``fetch.min_rate`` bytes per second over every
``fetch.min_rate_window`` (:class:`~mirror.rate.RateFloor`); and a host never holds more than
``fetch.per_host`` of the ``fetch.jobs`` slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import BinaryIO, Self
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
from aiohttp.abc import AbstractResolver
from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential
from yarl import URL

from mirror.body import read_body
from mirror.config import Config, parse_connect_to
from mirror.connect import PolicyResolver, env_proxies, name_key
from mirror.errors import (
    ConfigError,
    FetchError,
    PolicyError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from mirror.failure import classify, status_detail
from mirror.models import Download
from mirror.policy import check_ip, check_port, ip_literal, match_connect_to

log = logging.getLogger("mirror.fetch")

ACCEPT = "image/avif,image/webp,image/*,*/*;q=0.8"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
OK_STATUSES = frozenset({200, 203})
RETRY_STATUSES = frozenset({408, 425, 429})
RETRY_REASONS = frozenset({"connection", "dns", "timeout", "truncated"})
CONDITIONAL = frozenset({"if-none-match", "if-modified-since"})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

HostFilter = Callable[[str], bool]


class _StatusError(UpstreamStatusError):
    def __init__(self, status: int, retry_after: float | None, detail: str) -> None:
        super().__init__(status, detail=detail)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class _Route:
    """How a hop is sent: ``url`` is the hop itself, or its vetted address when ``name`` is set."""

    url: URL
    proxy: URL | None = None
    name: str | None = None  # the Host header
    tls_name: str | None = None  # the SNI and the name the certificate must carry


def is_retryable(exc: BaseException) -> bool:
    """The one retry policy: transient transport failures and 408/425/429/5xx."""
    if isinstance(exc, UpstreamStatusError):
        return exc.status in RETRY_STATUSES or exc.status >= 500
    return isinstance(exc, FetchError) and exc.reason in RETRY_REASONS


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Fetcher:
    """
    One HTTP session for a run: ``async with Fetcher(config) as f: await f.get(url)``.

    ``resolver`` replaces the system DNS (tests answer from a table; the address policy still
    judges every answer); ``sleep`` is what the retry loop waits with (tests record the delays).
    """

    def __init__(
        self,
        config: Config,
        *,
        resolver: AbstractResolver | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._fetch = config.fetch
        self._network = config.network
        self._connect_to = tuple(parse_connect_to(entry) for entry in config.network.connect_to)
        for entry in self._connect_to:
            # aiohttp never asks the resolver about IP literals, so such a mapping would be ignored.
            if ip_literal(entry.host) is not None:
                raise ConfigError("network.connect_to", f"{entry.host} must be a host name")
        self._proxy_env, self._proxies = env_proxies()
        # A request to a proxy's own name is pinned like a proxied one, so it never meets the
        # answer trusted for the proxy connection (spellings differing in case or a dot included).
        self._proxy_names = frozenset(
            name_key(p.raw_host or "")
            for p in self._proxies.values()
            if ip_literal(p.raw_host or "") is None
        )
        self._inner = resolver
        self._sleep = sleep
        self._resolver: PolicyResolver | None = None
        self._session: aiohttp.ClientSession | None = None
        self._jobs = asyncio.Semaphore(config.fetch.jobs)
        # key -> (semaphore, users); dropped when unused, so a long serve in open mode does not
        # keep one per host it ever saw.
        self._per_key: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._backoff = wait_random_exponential(
            multiplier=config.fetch.backoff_initial, max=config.fetch.backoff_max
        )
        # Only the owner a RetryCallState needs; the loop in get() does the retrying.
        self._retry_owner = AsyncRetrying()

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if not self._network.cacert:
            # aiohttp's own verifying default, built at its import: building another one (the
            # system's CA store loaded again) cost a tenth of a second per run.
            return True
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cafile=self._network.cacert)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("network.cacert", f"cannot load: {exc}") from exc
        return context

    async def __aenter__(self) -> Self:
        context = self._ssl_context()
        owns = self._inner is None
        inner = self._inner if self._inner is not None else aiohttp.DefaultResolver()
        # A proxy given by address is trusted as it is; one given by name, once resolved.
        literals = tuple(
            (p.raw_host or "", p.port or 0)
            for p in self._proxies.values()
            if ip_literal(p.raw_host or "") is not None
        )
        self._resolver = PolicyResolver(inner, self._network, trusted=literals, owns_inner=owns)
        connector = aiohttp.TCPConnector(
            limit=self._fetch.jobs,
            ttl_dns_cache=60,
            resolver=self._resolver,
            ssl=context,
            socket_factory=self._resolver.open_socket,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._fetch.total_timeout,
                sock_connect=self._fetch.connect_timeout,
                sock_read=self._fetch.read_timeout,
            ),
            headers={"User-Agent": self._fetch.user_agent, "Accept": ACCEPT},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # proxies are chosen here, so the policy sees them; no .netrc either
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
        if self._resolver is not None:
            await self._resolver.close()
        self._session = self._resolver = None

    async def get(
        self,
        url: str,
        *,
        limit_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        gate: Callable[[], None] | None = None,
        allow: HostFilter | None = None,
        into: BinaryIO | None = None,
    ) -> Download:
        """
        Download ``url``, retrying transient failures with backoff.

        Args:
            url: the absolute http(s) URL.
            limit_key: names the per-host concurrency limit (default: the URL's host).
            headers: extra request headers; conditional ones (If-None-Match,
                If-Modified-Since) make a 304 come back as a Download.
            gate: called once a request holds its slot, right before it is sent; may raise a
                FetchError to cancel it (the circuit breaker: requests queued behind a host that
                has just gone down are not sent).
            allow: a host predicate checked on every hop, redirects included (``serve``'s
                open-mode allowlist); a host it refuses is PolicyError ``not-allowed``.
            into: a file the body is written to as it streams (truncated at the start of every
                attempt, since a retry starts over); the Download's ``data`` is then ``b""``.

        Raises:
            FetchError: or a subclass; ``reason`` says why and ``detail`` what happened.
            StoreError: ``into`` cannot be written.
        """
        # A plain loop: tenacity's AsyncRetrying, paid on every request, measured at about a
        # fifth of a fetch's CPU; its wait strategy still decides the backoff (_delay).
        attempt = 1
        while True:
            try:
                return await self.get_once(
                    url, limit_key=limit_key, headers=headers, gate=gate, allow=allow, into=into
                )
            except FetchError as exc:
                if attempt >= self._fetch.attempts or not is_retryable(exc):
                    raise
                delay = self._delay(exc, attempt)
                log.info(
                    "retry %d of %d in %.2f s: url=%s reason=%s detail=%s",
                    attempt + 1,
                    self._fetch.attempts,
                    delay,
                    url,
                    exc.reason,
                    exc.detail,
                )
                await self._sleep(delay)
                attempt += 1

    async def get_once(
        self,
        url: str,
        *,
        limit_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        gate: Callable[[], None] | None = None,
        allow: HostFilter | None = None,
        into: BinaryIO | None = None,
    ) -> Download:
        """One attempt of :meth:`get`, following redirects but never retrying."""
        try:
            start = URL(url)
        except (TypeError, ValueError) as exc:
            raise FetchError(f"{url!r} is not a URL: {exc}", "bad-url", "not a URL") from exc
        if into is not None:
            into.seek(0)
            into.truncate()
        async with self._slot(limit_key or start.host or ""):
            if gate is not None:
                gate()
            try:
                return await self._follow(url, start, dict(headers or {}), allow, into)
            except FetchError:
                raise  # UpstreamTimeout is a TimeoutError too: never classified twice
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise classify(exc, url, self._fetch) from exc

    @contextlib.asynccontextmanager
    async def _slot(self, key: str) -> AsyncIterator[None]:
        slot = self._per_key.get(key)
        if slot is None:
            slot = self._per_key[key] = (asyncio.Semaphore(self._fetch.per_host), [0])
        per_key, users = slot
        users[0] += 1
        try:
            # The host slot first, so a request queued behind a busy host holds no global slot.
            async with per_key, self._jobs:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._per_key[key]

    def _delay(self, failure: FetchError, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``: Retry-After (capped), else full jitter."""
        if isinstance(failure, _StatusError) and failure.retry_after is not None:
            return min(failure.retry_after, self._fetch.retry_after_cap)
        state = RetryCallState(self._retry_owner, None, (), {})
        state.attempt_number = attempt
        return float(self._backoff(state))

    async def _follow(
        self,
        url: str,
        current: URL,
        headers: dict[str, str],
        allow: HostFilter | None,
        into: BinaryIO | None,
    ) -> Download:
        session, resolver = self._session, self._resolver
        if session is None or resolver is None:
            raise RuntimeError("Fetcher used outside 'async with'")
        conditional = any(name.lower() in CONDITIONAL for name in headers)
        for _hop in range(self._fetch.max_redirects + 1):
            route = await self._admit(current, resolver, allow)
            resp = await self._open(session, route, headers)
            try:
                location = resp.headers.get("Location")
                if resp.status in REDIRECTS and location:
                    try:
                        current = current.join(URL(location)).with_fragment(None)
                    except ValueError as exc:
                        raise FetchError(
                            f"{url}: bad redirect {location!r}", "bad-url", "bad redirect Location"
                        ) from exc
                    continue
                return await self._read(url, current, resp, conditional, into)
            finally:
                resp.release()
        raise FetchError(
            f"{url}: more than {self._fetch.max_redirects} redirects",
            "too-many-redirects",
            f"more than {self._fetch.max_redirects} redirects",
        )

    async def _open(
        self, session: aiohttp.ClientSession, route: _Route, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send one hop and wait for its response head, which must not trickle in either."""
        if route.name is not None:
            headers = {**headers, "Host": route.name}
        limit = self._fetch.connect_timeout + self._fetch.read_timeout
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                return await session.get(
                    route.url,
                    headers=headers,
                    allow_redirects=False,
                    proxy=route.proxy.with_user(None) if route.proxy else None,
                    proxy_auth=_proxy_auth(route.proxy),
                    server_hostname=route.tls_name,
                )
        except TimeoutError as exc:
            if timer.expired():
                raise UpstreamTimeout(
                    f"{route.url}: no response head in {limit:g} s",
                    detail=f"no response head after {limit:g} s",
                ) from exc
            raise

    async def _admit(self, url: URL, resolver: PolicyResolver, allow: HostFilter | None) -> _Route:
        """Check one hop before anything is sent; return how to send it."""
        if url.scheme not in ("http", "https"):
            raise PolicyError(
                f"{url}: scheme {url.scheme!r} is not allowed",
                "not-allowed",
                f"scheme {url.scheme!r} is not allowed",
            )
        host = url.raw_host
        if not host:
            raise FetchError(f"{url}: no host", "bad-url", "no host")
        literal = ip_literal(host)
        # Address before port: for an IP literal the address is the more telling refusal.
        if literal is not None:
            check_ip(literal, self._network)
        check_port(url.port, self._network)
        if allow is not None and not allow(name_key(host)):
            raise PolicyError(
                f"{url}: {host} is not an allowed host", "not-allowed", f"{host} is not allowed"
            )
        port = url.port or 0
        if match_connect_to(self._connect_to, host, port) is not None:
            return _Route(url)
        proxy = self._proxies.get(url.scheme)
        if proxy is not None and proxy_bypass_environment(host, self._proxy_env):
            proxy = None
        if proxy is not None:
            await resolver.pin_proxy(proxy)
        if literal is not None or (proxy is None and name_key(host) not in self._proxy_names):
            return _Route(url, proxy)
        try:
            answers = await resolver.public(host, port)
        except OSError as exc:
            raise FetchError(
                f"{url}: cannot resolve {host}: {exc}", "dns", f"cannot resolve {host}"
            ) from exc
        # One address must be chosen for the proxy: IPv4 first, which any proxy can reach.
        address = min(answers, key=lambda a: a["family"] != socket.AF_INET)["host"]
        tls_name = host.rstrip(".") if url.scheme == "https" else None
        return _Route(url.with_host(address), proxy, url.host_port_subcomponent, tls_name)

    async def _read(
        self,
        url: str,
        final: URL,
        resp: aiohttp.ClientResponse,
        conditional: bool,
        into: BinaryIO | None,
    ) -> Download:
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        if resp.status == 304 and conditional:
            return Download(url, str(final), b"", EMPTY_SHA256, 304, etag, modified)
        if resp.status not in OK_STATUSES:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            raise _StatusError(resp.status, retry_after, status_detail(resp.status, resp.reason))
        data, sha256 = await read_body(url, resp, self._fetch, into)
        return Download(url, str(final), data, sha256, resp.status, etag, modified)


def _proxy_auth(proxy: URL | None) -> aiohttp.BasicAuth | None:
    if proxy is None or proxy.user is None:
        return None
    return aiohttp.BasicAuth(proxy.user, proxy.password or "")
