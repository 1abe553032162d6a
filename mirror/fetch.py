"""
Download image bytes over HTTP(S) under the address policy, with retries and a byte cap.

One :class:`Fetcher` owns one aiohttp session for a whole run. The address policy is enforced where
the connection is made, not on the URL's name: :class:`PolicyResolver` filters every DNS answer
aiohttp will connect to (so a name cannot resolve to one address when checked and another when
used), IP literals (which aiohttp never resolves) are checked before the request, and the socket
factory checks the final socket address as a last line of defence.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import hashlib
import socket
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC
from types import TracebackType
from typing import Self
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential
from yarl import URL

from mirror.config import Config, NetworkConfig, parse_connect_to
from mirror.errors import (
    ConfigError,
    FetchError,
    PolicyError,
    TooLarge,
    Truncated,
    UpstreamStatusError,
    UpstreamTimeout,
)
from mirror.models import Download
from mirror.policy import IPAddress, check_ip, check_port, ip_literal, is_blocked, match_connect_to

ACCEPT = "image/avif,image/webp,image/*,*/*;q=0.8"
CHUNK = 64 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
OK_STATUSES = frozenset({200, 203})
RETRY_STATUSES = frozenset({408, 425, 429})
RETRY_REASONS = frozenset({"connection", "timeout", "truncated"})
CONDITIONAL = frozenset({"if-none-match", "if-modified-since"})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class BlockedAddress(PermissionError):
    """The socket factory refused an address; an OSError so aiohttp reports it, not swallows it."""

    MARK = "blocked by the address policy"


class _StatusError(UpstreamStatusError):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(status)
        self.retry_after = retry_after


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


def _env_proxies() -> tuple[dict[str, str], dict[str, URL]]:
    env = urllib.request.getproxies_environment()
    proxies: dict[str, URL] = {}
    for scheme in ("http", "https"):
        value = env.get(scheme)
        if value:
            proxy = URL(value if "://" in value else f"http://{value}")
            # aiohttp speaks only to HTTP(S) proxies; a SOCKS one is left unused, not misused.
            if proxy.scheme in ("http", "https") and proxy.host:
                proxies[scheme] = proxy
    return env, proxies


class PolicyResolver(AbstractResolver):
    """
    Resolve through ``inner``, apply ``connect_to``, and keep only addresses the policy allows.

    A name on a ``connect_to`` left side, or a proxy's own name, is trusted: its mapped addresses
    skip the address policy. Every address handed out for a trusted name is remembered, so the
    socket factory can tell it from an address that slipped past the checks.
    """

    def __init__(
        self,
        inner: AbstractResolver,
        network: NetworkConfig,
        *,
        trusted: Iterable[tuple[str, int]] = (),
        owns_inner: bool = False,
    ) -> None:
        self._inner = inner
        self._owns_inner = owns_inner
        self._network = network
        self._connect_to = tuple(parse_connect_to(entry) for entry in network.connect_to)
        self._trusted_names: set[tuple[str, int]] = set()
        self.trusted_addresses: set[tuple[IPAddress, int]] = set()
        for host, port in trusted:
            literal = ip_literal(host)
            if literal is None:
                self._trusted_names.add((host.lower(), port))
            else:
                self.trusted_addresses.add((literal, port))

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Answer for ``host:port`` with blocked addresses dropped; PolicyError if none is left."""
        entry = match_connect_to(self._connect_to, host, port)
        if entry is not None:
            return await self._trust(host, entry.to_host or host, entry.to_port or port, family)
        if (host.rstrip(".").lower(), port) in self._trusted_names:
            return await self._trust(host, host, port, family)
        answers = await self._inner.resolve(host, port, family)
        allowed = [a for a in answers if not self._blocked(a["host"])]
        if not allowed:
            raise PolicyError(f"{host} resolves only to blocked addresses", "private-address")
        return allowed

    async def vet(self, host: str, port: int) -> None:
        """Check a name a proxy will resolve: every answer must pass, as the proxy may pick any."""
        answers = await self._inner.resolve(host, port, socket.AF_UNSPEC)
        if not answers or any(self._blocked(a["host"]) for a in answers):
            raise PolicyError(f"{host} resolves to a blocked address", "private-address")

    async def close(self) -> None:
        """Close the inner resolver when this one created it."""
        if self._owns_inner:
            await self._inner.close()

    def open_socket(self, addr_info: AddrInfoType) -> socket.socket:
        """aiohttp's socket factory: the last check, on the exact address about to be connected."""
        family, type_, proto, _canonname, sockaddr = addr_info
        literal = ip_literal(str(sockaddr[0]))
        if literal is None or (
            (literal, int(sockaddr[1])) not in self.trusted_addresses
            and self._blocked(str(literal))
        ):
            raise BlockedAddress(errno.EACCES, f"{sockaddr[0]} is {BlockedAddress.MARK}")
        return socket.socket(family, type_, proto)

    def _blocked(self, address: str) -> bool:
        literal = ip_literal(address)
        return not self._network.allow_private and (literal is None or is_blocked(literal))

    async def _trust(
        self, name: str, host: str, port: int, family: socket.AddressFamily
    ) -> list[ResolveResult]:
        literal = ip_literal(host)
        if literal is None:
            answers = await self._inner.resolve(host, port, family)
        else:
            inet = socket.AF_INET if literal.version == 4 else socket.AF_INET6
            answer = ResolveResult(
                hostname=name, host=str(literal), port=port, family=inet, proto=0, flags=0
            )
            answers = [answer]
        for answer in answers:
            address = ip_literal(answer["host"])
            if address is not None:
                self.trusted_addresses.add((address, answer["port"]))
        return answers


class Fetcher:
    """One HTTP session for a run: ``async with Fetcher(config) as f: await f.get(url)``."""

    def __init__(self, config: Config, *, resolver: AbstractResolver | None = None) -> None:
        self._fetch = config.fetch
        self._network = config.network
        self._connect_to = tuple(parse_connect_to(entry) for entry in config.network.connect_to)
        for entry in self._connect_to:
            # aiohttp never asks the resolver about IP literals, so such a mapping would be ignored.
            if ip_literal(entry.host) is not None:
                raise ConfigError("network.connect_to", f"{entry.host} must be a host name")
        self._proxy_env, self._proxies = _env_proxies()
        self._inner = resolver
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
        proxies = [(p.host or "", p.port or 0) for p in self._proxies.values()]
        self._resolver = PolicyResolver(inner, self._network, trusted=proxies, owns_inner=owns)
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
    ) -> Download:
        """
        Download ``url``, retrying transient failures with backoff.

        ``limit_key`` (default: the URL's host) names the per-host concurrency limit; conditional
        ``headers`` (If-None-Match, If-Modified-Since) make a 304 come back as a Download.
        ``gate`` is called once a request holds its slot, right before it is sent, and may raise
        a FetchError to cancel it (the circuit breaker: requests queued behind a host that has
        just gone down are not sent).

        Raises:
            FetchError: or a subclass; ``reason`` says why.
        """
        # A plain loop: tenacity's AsyncRetrying, paid on every request, measured at about a
        # fifth of a fetch's CPU; its wait strategy still decides the backoff (_delay).
        attempt = 1
        while True:
            try:
                return await self.get_once(url, limit_key=limit_key, headers=headers, gate=gate)
            except FetchError as exc:
                if attempt >= self._fetch.attempts or not is_retryable(exc):
                    raise
                await asyncio.sleep(self._delay(exc, attempt))
                attempt += 1

    async def get_once(
        self,
        url: str,
        *,
        limit_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        gate: Callable[[], None] | None = None,
    ) -> Download:
        """One attempt of :meth:`get`, following redirects but never retrying."""
        try:
            start = URL(url)
        except (TypeError, ValueError) as exc:
            raise FetchError(f"{url!r} is not a URL: {exc}", "bad-url") from exc
        async with self._slot(limit_key or start.host or ""):
            if gate is not None:
                gate()
            try:
                return await self._follow(url, start, dict(headers or {}))
            except FetchError:
                raise
            except aiohttp.ClientConnectorCertificateError as exc:
                raise FetchError(f"{url}: certificate rejected: {exc}", "tls") from exc
            except TimeoutError as exc:
                raise UpstreamTimeout(f"{url}: timed out") from exc
            except aiohttp.ClientPayloadError as exc:
                raise Truncated(f"{url}: body cut short: {exc}") from exc
            except aiohttp.InvalidURL as exc:
                raise FetchError(f"{url}: bad URL: {exc}", "bad-url") from exc
            except aiohttp.ClientConnectorError as exc:
                # Happy Eyeballs folds the errors of several addresses into one message.
                if BlockedAddress.MARK in str(exc.os_error):
                    raise PolicyError(f"{url}: {exc}", "private-address") from exc
                raise FetchError(f"{url}: cannot connect: {exc}", "connection") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise FetchError(f"{url}: connection failed: {exc!r}", "connection") from exc

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

    async def _follow(self, url: str, current: URL, headers: dict[str, str]) -> Download:
        session, resolver = self._session, self._resolver
        if session is None or resolver is None:
            raise RuntimeError("Fetcher used outside 'async with'")
        conditional = any(name.lower() in CONDITIONAL for name in headers)
        for _hop in range(self._fetch.max_redirects + 1):
            proxy = await self._admit(current, resolver)
            async with session.get(
                current,
                headers=headers,
                allow_redirects=False,
                proxy=proxy.with_user(None) if proxy else None,
                proxy_auth=_proxy_auth(proxy),
            ) as resp:
                location = resp.headers.get("Location")
                if resp.status in REDIRECTS and location:
                    try:
                        current = current.join(URL(location)).with_fragment(None)
                    except ValueError as exc:
                        raise FetchError(f"{url}: bad redirect {location!r}", "bad-url") from exc
                    continue
                return await self._read(url, current, resp, conditional)
        raise FetchError(
            f"{url}: more than {self._fetch.max_redirects} redirects", "too-many-redirects"
        )

    async def _admit(self, url: URL, resolver: PolicyResolver) -> URL | None:
        """Check one hop before anything is sent; return the proxy to send it through, if any."""
        if url.scheme not in ("http", "https"):
            raise PolicyError(f"{url}: scheme {url.scheme!r} is not allowed", "not-allowed")
        host = url.raw_host
        if not host:
            raise FetchError(f"{url}: no host", "bad-url")
        literal = ip_literal(host)
        # Address before port: for an IP literal the address is the more telling refusal.
        if literal is not None:
            check_ip(literal, self._network)
        check_port(url.port, self._network)
        port = url.port or 0
        if match_connect_to(self._connect_to, host, port) is not None:
            return None
        proxy = self._proxies.get(url.scheme)
        if proxy is None or proxy_bypass_environment(host, self._proxy_env):
            return None
        if literal is None:
            await resolver.vet(host, port)
        return proxy

    async def _read(
        self, url: str, final: URL, resp: aiohttp.ClientResponse, conditional: bool
    ) -> Download:
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        if resp.status == 304 and conditional:
            return Download(url, str(final), b"", EMPTY_SHA256, 304, etag, modified)
        if resp.status not in OK_STATUSES:
            raise _StatusError(resp.status, parse_retry_after(resp.headers.get("Retry-After")))
        cap = self._fetch.max_bytes
        declared = resp.content_length
        try:
            if declared is not None and declared > cap:
                raise TooLarge(f"{url}: Content-Length {declared} is over the cap of {cap}")
            digest, parts, total = hashlib.sha256(), list[bytes](), 0
            async for chunk in resp.content.iter_chunked(CHUNK):
                total += len(chunk)
                if total > cap:
                    raise TooLarge(f"{url}: body passed the cap of {cap} bytes")
                digest.update(chunk)
                parts.append(chunk)
            # Compressed bodies are measured after decoding, so only an identity body can be short.
            if (
                declared is not None
                and total < declared
                and not resp.headers.get("Content-Encoding")
            ):
                raise Truncated(f"{url}: got {total} of {declared} bytes")
        except BaseException:
            resp.close()  # drop the connection rather than drain a body nobody wants
            raise
        return Download(
            url, str(final), b"".join(parts), digest.hexdigest(), resp.status, etag, modified
        )


def _proxy_auth(proxy: URL | None) -> aiohttp.BasicAuth | None:
    if proxy is None or proxy.user is None:
        return None
    return aiohttp.BasicAuth(proxy.user, proxy.password or "")
