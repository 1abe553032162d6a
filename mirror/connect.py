"""
Where a download's connections go: DNS answers under the address policy, proxies, the last check.

:class:`PolicyResolver` is the only resolver aiohttp's connector uses. It filters every answer by
the address policy (:mod:`mirror.policy`), so a name cannot resolve to one address when checked
and another when used; it answers ``network.connect_to`` names with their mapped (trusted)
addresses; and it answers a proxy's own name, resolved once, for the proxy connection alone.
Its :meth:`PolicyResolver.open_socket` is the connector's socket factory, a last check on the
exact address about to be connected.

Through a proxy the request is *pinned*: :class:`~mirror.fetch.Fetcher` resolves the target name
here with :meth:`PolicyResolver.public` and sends the request for the vetted address (absolute
form ``GET http://<ip>/path`` with the original ``Host``, or ``CONNECT <ip>:443`` with TLS SNI and
the certificate checked for the original name), so the proxy never resolves a name from a post.
A direct request to a proxy's own name is pinned the same way, so it meets the ordinary policy
and never the proxy's trusted answer.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import urllib.request

from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from mirror.config import NetworkConfig, parse_connect_to
from mirror.errors import FetchError, PolicyError
from mirror.policy import IPAddress, ip_literal, is_blocked, match_connect_to


class BlockedAddress(PermissionError):
    """The socket factory refused an address; an OSError so aiohttp reports it, not swallows it."""

    MARK = "blocked by the address policy"


def name_key(host: str) -> str:
    """The form two spellings of one host name share (case and a trailing dot do not count)."""
    return host.rstrip(".").lower()


def env_proxies() -> tuple[dict[str, str], dict[str, URL]]:
    """
    Read HTTP_PROXY/HTTPS_PROXY/NO_PROXY (either case) the way urllib does.

    Returns:
        The raw environment mapping (for NO_PROXY matching) and the usable proxy per scheme.
    """
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

    A name on a ``connect_to`` left side is trusted: its mapped addresses skip the address
    policy. ``trusted`` adds IP addresses (``(ip, port)``, e.g. a proxy given by address) that the
    socket factory lets through. Every address handed out for a trusted name is remembered, so the
    socket factory can tell it from an address that slipped past the checks.
    """

    def __init__(
        self,
        inner: AbstractResolver,
        network: NetworkConfig,
        *,
        trusted: tuple[tuple[str, int], ...] = (),
        owns_inner: bool = False,
    ) -> None:
        self._inner = inner
        self._owns_inner = owns_inner
        self._network = network
        self._connect_to = tuple(parse_connect_to(entry) for entry in network.connect_to)
        self._proxies: dict[tuple[str, int], list[ResolveResult]] = {}
        self._pinning = asyncio.Lock()
        self.trusted_addresses: set[tuple[IPAddress, int]] = set()
        for host, port in trusted:
            literal = ip_literal(host)
            if literal is None:
                raise ValueError(f"trusted addresses are IP literals, not {host!r}")
            self.trusted_addresses.add((literal, port))

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Answer for ``host:port`` with blocked addresses dropped; PolicyError if none is left."""
        entry = match_connect_to(self._connect_to, host, port)
        if entry is not None:
            return await self._trust(host, entry.to_host or host, entry.to_port or port, family)
        pinned = self._proxies.get((name_key(host), port))
        if pinned is not None:
            # Only the proxy connection asks for this name: the Fetcher pins every request to it.
            return pinned
        return await self.public(host, port, family)

    async def public(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        """
        Resolve ``host`` under the ordinary policy only (no mapping, no proxy trust).

        Raises:
            PolicyError: every answer is a blocked address (reason ``private-address``).
            OSError: the name cannot be resolved.
        """
        answers = await self._inner.resolve(host, port, family)
        allowed = [a for a in answers if not self._blocked(a["host"])]
        if not allowed:
            refused = ", ".join(sorted({a["host"] for a in answers})) or "nothing"
            raise PolicyError(
                f"{host} resolves only to blocked addresses",
                "private-address",
                f"{host} resolves to {refused}, not a public address",
            )
        return allowed

    async def pin_proxy(self, proxy: URL) -> None:
        """
        Resolve a proxy's own name once, for the proxy connection alone, and trust its addresses.

        Raises:
            FetchError: reason ``dns``, the name cannot be resolved (tried again next time).
        """
        host, port = proxy.raw_host or "", proxy.port or 0
        key = (name_key(host), port)
        if key in self._proxies or ip_literal(host) is not None:
            return
        async with self._pinning:
            if key in self._proxies:
                return
            try:
                answers = await self._inner.resolve(host, port, socket.AF_UNSPEC)
            except OSError as exc:
                raise FetchError(
                    f"proxy {host}: cannot resolve: {exc}",
                    "dns",
                    f"cannot resolve the proxy {host}",
                ) from exc
            for answer in answers:
                address = ip_literal(answer["host"])
                if address is not None:
                    self.trusted_addresses.add((address, answer["port"] or port))
            self._proxies[key] = answers

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
