"""
Where a download may connect: the address and port policy, and curl-style ``connect_to`` matching.

Pure functions only; :mod:`mirror.fetch` applies them to every address it is about to connect to.

IPv4 embedded in IPv6 is handled per mechanism:

* IPv4-mapped ``::ffff:0:0/96`` and NAT64 ``64:ff9b::/96`` are judged by the embedded address:
  a dual-stack resolver may hand back the first, and an IPv6-only network with DNS64 hands back
  the second for every ordinary public site, so blocking them outright would break real hosts,
  while letting them through unchecked would reach 127.0.0.1 as ``::ffff:127.0.0.1``.
* The local-use NAT64 prefix ``64:ff9b:1::/48``, 6to4 ``2002::/16`` and Teredo ``2001::/32`` are
  blocked outright: the first is private by definition, the other two are deprecated tunnels whose
  relays decide where the packets go, and no image host is reachable only through them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from mirror.config import ConnectTo, NetworkConfig
from mirror.errors import PolicyError

IPAddress = IPv4Address | IPv6Address

_V4_BLOCKED = tuple(
    IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", and the unspecified address
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata endpoints live here
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the limited broadcast address
    )
)

# IPv6 is judged by an allow list: only global unicast 2000::/3 can be an image host, which also
# shuts out ::/8 (unspecified, loopback, IPv4-compatible), 100::/64, 5f00::/16, ULA fc00::/7,
# link-local fe80::/10, site-local fec0::/10 and multicast ff00::/8 without listing them.
_V6_GLOBAL = IPv6Network("2000::/3")
_V6_BLOCKED = tuple(
    IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments: Teredo, benchmarking, ORCHID
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_LEGACY_V4_CHARS = frozenset("0123456789abcdefx.")
_V4_MAPPED = IPv6Network("::ffff:0:0/96")
_NAT64 = IPv6Network("64:ff9b::/96")


def _embedded_v4(ip: IPv6Address) -> IPv4Address | None:
    if ip in _V4_MAPPED or ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def is_blocked(ip: IPAddress) -> bool:
    """True when ``ip`` is not a public unicast address an image could live at."""
    if isinstance(ip, IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is None:
            return ip not in _V6_GLOBAL or any(ip in net for net in _V6_BLOCKED)
        ip = embedded
    # The stdlib predicates back up the table in case a future range is added there first.
    return any(ip in net for net in _V4_BLOCKED) or not ip.is_global or ip.is_multicast


def check_ip(ip: IPAddress, network: NetworkConfig) -> None:
    """
    Refuse a connection to ``ip`` unless it is public or ``network.allow_private`` is set.

    Raises:
        PolicyError: reason ``private-address``.
    """
    if not network.allow_private and is_blocked(ip):
        raise PolicyError(f"{ip} is not a public address", reason="private-address")


def check_port(url_port: int | None, network: NetworkConfig) -> None:
    """
    Refuse a port outside ``network.allowed_ports``.

    Raises:
        PolicyError: reason ``bad-port``.
    """
    if url_port is None or url_port not in network.allowed_ports:
        raise PolicyError(f"port {url_port} is not allowed", reason="bad-port")


def ip_literal(host: str) -> IPAddress | None:
    """
    The address ``host`` spells, or None for a host name.

    Brackets and an IPv6 zone are allowed, and so are the legacy IPv4 forms (``127.1``,
    ``2130706433``, ``0x7f.0.0.1``) that the C resolver would quietly turn into an address.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host or not all(c in _LEGACY_V4_CHARS for c in host.lower()):
        return None
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def match_connect_to(entries: Iterable[ConnectTo], host: str, port: int) -> ConnectTo | None:
    """The first entry matching ``host:port``, as curl picks; an empty HOST or PORT matches any."""
    host = host.rstrip(".").lower()
    for entry in entries:
        if entry.host not in ("", host):
            continue
        if entry.port is not None and entry.port != port:
            continue
        return entry
    return None
