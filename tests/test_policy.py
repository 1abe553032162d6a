"""Table tests for the address and port policy and connect_to matching."""

from __future__ import annotations

import ipaddress

import pytest

from mirror.config import NetworkConfig, parse_connect_to
from mirror.errors import PolicyError
from mirror.policy import check_ip, check_port, ip_literal, is_blocked, match_connect_to

STRICT = NetworkConfig()
LENIENT = NetworkConfig(allow_private=True)

BLOCKED = [
    # IPv4
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.251",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    # IPv6
    "::",
    "::1",
    "::127.0.0.1",  # IPv4-compatible, deprecated
    "100::1",  # discard-only
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%1",
    "fec0::1",
    "ff02::1",
    "5f00::1",
    "2001:db8::1",
    "3fff::1",
    "2001:2::1",  # benchmarking
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, blocked outright
    "2002:c000:0201::1",  # 6to4, blocked outright
    "2002:0808:0808::1",  # 6to4 even around a public IPv4
    "64:ff9b:1::808:808",  # local-use NAT64, blocked outright
    # IPv4 embedded in IPv6 and judged by the embedded address
    "::ffff:127.0.0.1",
    "::ffff:10.1.2.3",
    "::ffff:169.254.169.254",
    "::ffff:0.0.0.0",
    "64:ff9b::127.0.0.1",
    "64:ff9b::192.168.0.1",
    "64:ff9b::100.64.0.1",
]

ALLOWED = [
    "1.1.1.1",
    "8.8.8.8",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.1",
    "198.17.255.255",
    "223.255.255.255",
    "2606:4700::1111",
    "2a00:1450:4001:80b::200e",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",  # DNS64 answer for a public IPv4 host
]


@pytest.mark.parametrize("address", BLOCKED)
def test_blocked_addresses_are_refused(address: str) -> None:
    """Every private, special or tunnelled address is refused with private-address."""
    ip = ipaddress.ip_address(address)
    assert is_blocked(ip)
    with pytest.raises(PolicyError) as caught:
        check_ip(ip, STRICT)
    assert "private-address" == caught.value.reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    """Public unicast addresses, also IPv4-mapped and NAT64 forms of them, pass."""
    ip = ipaddress.ip_address(address)
    assert not is_blocked(ip)
    check_ip(ip, STRICT)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "::1", "fd00::1"])
def test_allow_private_lets_everything_through(address: str) -> None:
    """network.allow_private turns the address check off."""
    check_ip(ipaddress.ip_address(address), LENIENT)


@pytest.mark.parametrize(
    ("port", "network", "ok"),
    [
        (80, STRICT, True),
        (443, STRICT, True),
        (8080, STRICT, False),
        (22, STRICT, False),
        (None, STRICT, False),
        (8080, NetworkConfig(allowed_ports=(8080,)), True),
        (80, NetworkConfig(allowed_ports=(8080,)), False),
        (22, LENIENT, False),
    ],
)
def test_ports(port: int | None, network: NetworkConfig, ok: bool) -> None:
    """Only network.allowed_ports pass; allow_private does not widen them."""
    if ok:
        check_port(port, network)
        return
    with pytest.raises(PolicyError) as caught:
        check_port(port, network)
    assert "bad-port" == caught.value.reason


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("origin.example", None),
        ("cafe", None),
        ("1e100.net", None),
        ("", None),
    ],
)
def test_ip_literal_reads_legacy_forms(host: str, expected: str | None) -> None:
    """Numeric hosts the C resolver would accept are read as the address they denote."""
    literal = ip_literal(host)
    assert expected == (None if literal is None else str(literal))


@pytest.mark.parametrize(
    ("entries", "host", "port", "expected"),
    [
        (["origin.example:80:127.0.0.1:8080"], "origin.example", 80, "127.0.0.1:8080"),
        (["origin.example:80:127.0.0.1:8080"], "ORIGIN.example.", 80, "127.0.0.1:8080"),
        (["origin.example:80:127.0.0.1:8080"], "origin.example", 443, None),
        (["origin.example:80:127.0.0.1:8080"], "other.example", 80, None),
        (["origin.example::127.0.0.1:"], "origin.example", 443, "127.0.0.1:None"),
        (["::127.0.0.1:9"], "anything.example", 1234, "127.0.0.1:9"),
        (["a.example:80:x:1", "a.example:80:y:2"], "a.example", 80, "x:1"),
        (["b.example:80:x:1", ":80:y:2"], "a.example", 80, "y:2"),
        ([":443:[::1]:8443"], "a.example", 443, "::1:8443"),
    ],
)
def test_match_connect_to(entries: list[str], host: str, port: int, expected: str | None) -> None:
    """The first entry whose HOST and PORT match wins; an empty HOST or PORT matches any."""
    entry = match_connect_to([parse_connect_to(e) for e in entries], host, port)
    assert expected == (None if entry is None else f"{entry.to_host}:{entry.to_port}")
