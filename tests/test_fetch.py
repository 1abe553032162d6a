"""The fetcher against real local servers: retries, caps, redirects, the address policy, TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.abc import ResolveResult
from conftest import FakeResolver, RawHandler, raw_server

from mirror.body import CHUNK
from mirror.config import Config, NetworkConfig
from mirror.connect import BlockedAddress, PolicyResolver
from mirror.errors import (
    ConfigError,
    FetchError,
    PolicyError,
    TooLarge,
    Truncated,
    UpstreamStatusError,
    UpstreamTimeout,
)
from mirror.fetch import (
    ACCEPT,
    EMPTY_SHA256,
    Fetcher,
    is_retryable,
    parse_retry_after,
)

if TYPE_CHECKING:
    from conftest import Canary, NetworkGuard, Upstream

MakeConfig = Callable[..., Config]

MiB = 1024 * 1024
PUBLIC = "93.184.216.34"  # answered by fake resolvers only; the guard fails any test reaching it


@pytest.fixture(autouse=True)
def no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy variables from the machine running the tests must not reroute them."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


async def fetch(config: Config, url: str, **kwargs: Any) -> Any:
    async with Fetcher(config) as fetcher:
        return await fetcher.get(url, **kwargs)


async def test_get_returns_bytes_hash_and_validators(upstream: Upstream) -> None:
    """A plain 200 comes back whole, hashed, with its ETag and Last-Modified."""
    download = await fetch(upstream.config(), upstream.url("/img.png"))
    assert upstream.png == download.data
    assert hashlib.sha256(upstream.png).hexdigest() == download.sha256
    assert 200 == download.status
    assert upstream.url("/img.png") == download.url == download.final_url
    assert '"png-v1"' == download.etag
    assert "Wed, 21 Oct 2015 07:28:00 GMT" == download.last_modified


async def test_request_headers(upstream: Upstream) -> None:
    """The User-Agent and Accept come from the config; no Referer is ever sent."""
    config = upstream.config(user_agent="test-agent/1")
    await fetch(config, upstream.url("/img.png"))
    (seen,) = upstream.headers
    assert "test-agent/1" == seen["User-Agent"]
    assert ACCEPT == seen["Accept"]
    assert "Referer" not in seen
    assert "origin.example" == seen["Host"]


async def test_conditional_request_returns_304(upstream: Upstream) -> None:
    """A matching If-None-Match comes back as an empty Download with status 304."""
    download = await fetch(
        upstream.config(), upstream.url("/img.png"), headers={"If-None-Match": '"png-v1"'}
    )
    assert (304, b"", EMPTY_SHA256) == (download.status, download.data, download.sha256)
    assert '"png-v1"' == download.etag


async def test_content_type_is_not_judged_here(upstream: Upstream) -> None:
    """HTML with 200 and an image labelled text/plain both come back; verify judges them."""
    async with Fetcher(upstream.config()) as fetcher:
        html = await fetcher.get(upstream.url("/html"))
        text = await fetcher.get(upstream.url("/text-plain"))
    assert html.data.startswith(b"<html>")
    assert upstream.png == text.data


async def test_500_then_ok_is_retried(upstream: Upstream) -> None:
    """A 500 is transient: the second attempt gets the image."""
    download = await fetch(upstream.config(), upstream.url("/flaky?fails=2"))
    assert upstream.png == download.data
    assert 3 == upstream.hits["/flaky?fails=2"]


async def test_retries_stop_after_attempts(upstream: Upstream) -> None:
    """A server that keeps failing is tried fetch.attempts times, then its status is reported."""
    with pytest.raises(UpstreamStatusError) as caught:
        await fetch(upstream.config(attempts=4), upstream.url("/status/503"))
    assert ("http-503", 503) == (caught.value.reason, caught.value.status)
    assert 4 == upstream.hits["/status/503"]


class Sleeps:
    """Stands in for asyncio.sleep in the retry loop: records each delay, waits for none."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_retry_after_is_honoured_up_to_the_cap(upstream: Upstream) -> None:
    """Retry-After: 1 with a 0.3 s cap makes the loop wait 0.3 s, not the backoff, not 1 s."""
    sleeps = Sleeps()
    async with Fetcher(upstream.config(retry_after_cap=0.3), sleep=sleeps) as fetcher:
        download = await fetcher.get(upstream.url("/retry-after"))
    assert upstream.png == download.data
    assert [0.3] == sleeps.delays


async def test_backoff_delays_stay_within_the_configured_bounds(upstream: Upstream) -> None:
    """Without Retry-After each retry waits a full-jitter delay no longer than backoff_max."""
    sleeps = Sleeps()
    config = upstream.config(attempts=5, backoff_initial=0.5, backoff_max=2.0)
    async with Fetcher(config, sleep=sleeps) as fetcher:
        with pytest.raises(UpstreamStatusError):
            await fetcher.get(upstream.url("/status/503"))
    assert 4 == len(sleeps.delays)
    assert all(0 <= delay <= 2.0 for delay in sleeps.delays)
    assert 5 == upstream.hits["/status/503"]


async def test_each_retry_logs_one_line(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """-v shows one mirror.fetch line per retry, with the reason and the detail."""
    caplog.set_level(logging.INFO, logger="mirror.fetch")
    async with Fetcher(upstream.config(), sleep=Sleeps()) as fetcher:
        await fetcher.get(upstream.url("/flaky?fails=2"))
    lines = [r.getMessage() for r in caplog.records if r.name == "mirror.fetch"]
    assert 2 == len(lines)
    assert all("reason=http-500 detail=HTTP 500 Internal Server Error" in line for line in lines)
    assert lines[0].startswith("retry 2 of 3 in ")


async def test_429_retry_after_is_honoured(upstream: Upstream) -> None:
    """A 429 is retried too, after its Retry-After."""
    url = upstream.url("/retry-after?status=429&after=0")
    download = await fetch(upstream.config(), url)
    assert 2 == upstream.hits["/retry-after?status=429&after=0"]
    assert 200 == download.status


@pytest.mark.parametrize("code", [400, 403, 404, 410, 451])
async def test_client_errors_are_final(upstream: Upstream, code: int) -> None:
    """Other 4xx are final: one request, reason http-NNN."""
    with pytest.raises(UpstreamStatusError) as caught:
        await fetch(upstream.config(), upstream.url(f"/status/{code}"))
    assert f"http-{code}" == caught.value.reason
    assert 1 == upstream.hits[f"/status/{code}"]


async def test_reset_mid_body_is_retried(upstream: Upstream) -> None:
    """A connection reset halfway through the body is retried and the second body is whole."""
    download = await fetch(upstream.config(), upstream.url("/reset"))
    assert upstream.png == download.data
    assert 2 == upstream.hits["/reset"]


async def test_reset_every_time_reports_a_transient_failure(upstream: Upstream) -> None:
    """A body that never arrives whole fails with a retryable reason after every attempt."""
    with pytest.raises(FetchError) as caught:
        await fetch(upstream.config(), upstream.url("/reset?times=9"))
    assert "truncated" == caught.value.reason
    assert 3 == upstream.hits["/reset?times=9"]


@pytest.mark.parametrize("where", ["headers", "body"])
async def test_stall_times_out(upstream: Upstream, where: str) -> None:
    """A server that stops sending fails after read_timeout with reason timeout."""
    config = upstream.config(read_timeout=0.3)
    async with Fetcher(config) as fetcher:
        with pytest.raises(UpstreamTimeout) as caught:
            await fetcher.get_once(upstream.url(f"/stall?where={where}"))
    assert "timeout" == caught.value.reason
    assert isinstance(caught.value, TimeoutError)
    # The read timeout ended it, not the 10 s total: the detail names which one.
    assert "read timeout after 0.3 s" == caught.value.detail


async def test_truncated_body_is_retried_then_reported(upstream: Upstream) -> None:
    """A body shorter than its Content-Length is Truncated, and retried each attempt."""
    with pytest.raises(Truncated) as caught:
        await fetch(upstream.config(), upstream.url("/truncated"))
    assert "truncated" == caught.value.reason
    assert 3 == upstream.hits["/truncated"]


async def test_too_large_by_content_length_fails_at_once(upstream: Upstream) -> None:
    """A Content-Length over the cap fails before the body is read, and is not retried."""
    with pytest.raises(TooLarge) as caught:
        await fetch(upstream.config(max_bytes=MiB), upstream.url("/big?declared=1"))
    assert "too-large" == caught.value.reason
    assert 1 == upstream.hits["/big?declared=1"]


async def test_too_large_while_streaming_stops_the_server(upstream: Upstream) -> None:
    """A 60 MB body without Content-Length is cut at the cap and the sender stops early."""
    with pytest.raises(TooLarge):
        await fetch(upstream.config(max_bytes=MiB), upstream.url("/big"))
    await asyncio.wait_for(upstream.big_done.wait(), 5)
    assert 1 == upstream.hits["/big"]
    assert upstream.big_sent < 16 * MiB


async def test_redirect_chain_within_the_limit(upstream: Upstream) -> None:
    """Three redirects are followed by hand and final_url is where the bytes came from."""
    download = await fetch(upstream.config(), upstream.url("/chain/3"))
    assert upstream.png == download.data
    assert upstream.url("/chain/0") == download.final_url
    assert upstream.url("/chain/3") == download.url


async def test_redirect_chain_limit(upstream: Upstream) -> None:
    """Five redirects are allowed, the sixth is too many, and that is final."""
    await fetch(upstream.config(), upstream.url("/chain/5"))
    with pytest.raises(FetchError) as caught:
        await fetch(upstream.config(), upstream.url("/chain/6"))
    assert "too-many-redirects" == caught.value.reason
    assert 1 == upstream.hits["/chain/6"]


async def test_redirect_to_loopback_is_blocked(upstream: Upstream, canary: Canary) -> None:
    """A redirect to 127.0.0.1 is refused with private-address; the canary sees nothing."""
    with pytest.raises(PolicyError) as caught:
        await fetch(upstream.config(), upstream.url("/to-canary"))
    assert "private-address" == caught.value.reason
    assert 0 == canary.connections
    assert 1 == upstream.hits["/to-canary"]


async def test_redirect_to_the_connect_to_target_is_not_trusted(upstream: Upstream) -> None:
    """Only the connect_to name is trusted, not a redirect straight to the address it maps to."""
    target = f"http://127.0.0.1:{upstream.port}/img.png"
    with pytest.raises(PolicyError) as caught:
        await fetch(upstream.config(), upstream.url(f"/redirect?to={target}"))
    assert "private-address" == caught.value.reason
    assert 0 == upstream.hits["/img.png"]


async def test_redirect_to_another_scheme_is_refused(upstream: Upstream) -> None:
    """Every hop is checked: a redirect to file: is not followed."""
    with pytest.raises(PolicyError) as caught:
        await fetch(upstream.config(), upstream.url("/redirect?to=file:///etc/passwd"))
    assert "not-allowed" == caught.value.reason


async def test_redirect_to_a_malformed_location_is_final(upstream: Upstream) -> None:
    """A Location that is not a URL ends the fetch with bad-url, not a crash."""
    with pytest.raises(FetchError) as caught:
        await fetch(upstream.config(), upstream.url("/redirect?to=http://[oops/x"))
    assert "bad-url" == caught.value.reason
    assert 1 == sum(upstream.hits.values())


async def test_redirect_to_a_bad_port_is_refused(upstream: Upstream) -> None:
    """Every hop is checked: a redirect to a port outside allowed_ports is refused."""
    url = upstream.url("/redirect?to=http://origin.example:25/x")
    with pytest.raises(PolicyError) as caught:
        await fetch(upstream.config(), url)
    assert "bad-port" == caught.value.reason


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:{canary}/a.png",
        "http://127.1:{canary}/a.png",
        "http://2130706433:{canary}/a.png",
        "http://0x7f000001:{canary}/a.png",
        "http://[::1]:{canary}/a.png",
        "http://[::ffff:127.0.0.1]:{canary}/a.png",
        "http://[64:ff9b::7f00:1]/a.png",
        "http://0.0.0.0:{canary}/a.png",
        "https://[fd00::1]/a.png",
    ],
)
async def test_ip_literals_are_blocked_before_connecting(
    canary: Canary, make_config: MakeConfig, url: str
) -> None:
    """Blocked IP literals never reach connect(): the guard and the canary both see nothing."""
    config = make_config(allowed_ports=(80, 443, canary.port))
    with pytest.raises(PolicyError) as caught:
        await fetch(config, url.format(canary=canary.port))
    assert "private-address" == caught.value.reason
    assert 0 == canary.connections


async def test_bad_port_and_scheme(upstream: Upstream) -> None:
    """A port outside allowed_ports and a non-HTTP scheme are refused before connecting."""
    async with Fetcher(upstream.config()) as fetcher:
        with pytest.raises(PolicyError) as port:
            await fetcher.get(f"http://origin.example:{upstream.port}/img.png")
        with pytest.raises(PolicyError) as scheme:
            await fetcher.get("ftp://origin.example/img.png")
    assert ("bad-port", "not-allowed") == (port.value.reason, scheme.value.reason)
    assert 0 == sum(upstream.hits.values())


async def test_dns_answer_for_a_blocked_address_is_refused(
    canary: Canary, make_config: MakeConfig
) -> None:
    """A name resolving to loopback (DNS rebinding) is refused at resolve time, never retried."""
    resolver = FakeResolver({"rebind.example": [[("127.0.0.1", canary.port)]]})
    async with Fetcher(make_config(), resolver=resolver) as fetcher:
        with pytest.raises(PolicyError) as caught:
            await fetcher.get("http://rebind.example/a.png")
    assert "private-address" == caught.value.reason
    assert 0 == canary.connections
    assert ["rebind.example"] == resolver.calls


async def test_policy_resolver_checks_every_answer() -> None:
    """Each resolution is judged afresh, so a name that rebinds to loopback is caught then."""
    inner = FakeResolver({"rebind.example": [[(PUBLIC, 0)], [("127.0.0.1", 0)]]})
    resolver = PolicyResolver(inner, NetworkConfig())
    first = await resolver.resolve("rebind.example", 80)
    with pytest.raises(PolicyError) as caught:
        await resolver.resolve("rebind.example", 80)
    assert [PUBLIC] == [answer["host"] for answer in first]
    assert "private-address" == caught.value.reason


async def test_policy_resolver_drops_blocked_answers() -> None:
    """Of a mixed answer only the public addresses are handed to the connector."""
    inner = FakeResolver({"mixed.example": [[("10.0.0.1", 0), (PUBLIC, 0), ("::1", 0)]]})
    answers = await PolicyResolver(inner, NetworkConfig()).resolve("mixed.example", 80)
    assert [PUBLIC] == [answer["host"] for answer in answers]


def test_socket_factory_refuses_blocked_addresses() -> None:
    """The last line: the socket factory refuses a blocked address unless it was mapped."""
    resolver = PolicyResolver(FakeResolver({}), NetworkConfig(), trusted=[("127.0.0.1", 3128)])
    stream = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
    with pytest.raises(BlockedAddress):
        resolver.open_socket((*stream, ("10.0.0.1", 80)))
    with pytest.raises(BlockedAddress):
        resolver.open_socket((*stream, ("127.0.0.1", 80)))
    resolver.open_socket((*stream, ("127.0.0.1", 3128))).close()


@pytest.mark.parametrize("addresses", [["127.0.0.1"], ["127.0.0.1", "127.0.0.2", "::1"]])
async def test_socket_factory_blocks_when_the_resolver_is_bypassed(
    canary: Canary, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    """Were the resolver check skipped, the socket factory still refuses, as private-address."""
    answers = [[(address, canary.port) for address in addresses]]

    async def unchecked(
        self: PolicyResolver, host: str, port: int = 0, family: int = 0
    ) -> list[ResolveResult]:
        return await FakeResolver({host: answers}).resolve(host, port)

    monkeypatch.setattr(PolicyResolver, "resolve", unchecked)
    with pytest.raises(PolicyError) as caught:
        await fetch(make_config(), "http://bypass.example/a.png")
    assert "private-address" == caught.value.reason
    assert 0 == canary.connections


def test_connect_to_with_an_ip_literal_left_side_is_a_config_error(
    make_config: MakeConfig,
) -> None:
    """aiohttp never resolves IP literals, so such a mapping could not work: refuse it."""
    with pytest.raises(ConfigError):
        Fetcher(make_config(connect_to=("10.0.0.1:80:127.0.0.1:8080",)))


async def test_https_with_cacert_and_connect_to_keeps_sni(tls_upstream: Upstream) -> None:
    """HTTPS through connect_to checks the certificate and sends SNI for the original name."""
    download = await fetch(tls_upstream.config(), tls_upstream.url("/img.png"))
    assert tls_upstream.png == download.data
    assert "https://origin.example/img.png" == download.final_url
    assert ["origin.example"] == tls_upstream.sni


async def test_https_without_the_ca_is_refused(
    tls_upstream: Upstream, make_config: MakeConfig
) -> None:
    """Without network.cacert the private CA is not trusted: reason tls, not retried."""
    config = make_config(connect_to=(tls_upstream.connect_to,))
    with pytest.raises(FetchError) as caught:
        await fetch(config, tls_upstream.url("/img.png"))
    assert "tls" == caught.value.reason
    assert 0 == sum(tls_upstream.hits.values())


def test_missing_cacert_is_a_config_error(tmp_path: Path, make_config: MakeConfig) -> None:
    """A cacert that cannot be loaded names the key."""
    fetcher = Fetcher(make_config(cacert=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError) as caught:
        asyncio.run(fetcher.__aenter__())
    assert "network.cacert" == caught.value.key


async def test_per_host_limit(upstream: Upstream) -> None:
    """No more than fetch.per_host requests run at once for one limit key."""
    config = upstream.config(per_host=2, jobs=16)
    async with Fetcher(config) as fetcher:
        await asyncio.gather(*(fetcher.get(upstream.url(f"/slow?i={i}")) for i in range(10)))
    assert 2 == upstream.max_in_flight


async def test_global_limit(upstream: Upstream) -> None:
    """No more than fetch.jobs requests run at once over all limit keys."""
    config = upstream.config(per_host=8, jobs=3)
    async with Fetcher(config) as fetcher:
        await asyncio.gather(
            *(fetcher.get(upstream.url(f"/slow?i={i}"), limit_key=f"h{i}") for i in range(10))
        )
    assert 3 == upstream.max_in_flight


@dataclasses.dataclass
class Proxy:
    """A forward proxy on loopback that answers every request itself with ``body``."""

    port: int = 0
    body: bytes = b""
    requests: list[str] = dataclasses.field(default_factory=list)
    hosts: list[str] = dataclasses.field(default_factory=list)


@pytest.fixture
async def proxy(png_bytes: bytes) -> AsyncIterator[Proxy]:
    """A forward proxy on 127.0.0.1 recording each request line."""
    state = Proxy(body=png_bytes)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *fields = head.decode().split("\r\n")
        state.requests.append(line)
        state.hosts += [f.split(":", 1)[1].strip() for f in fields if f.lower().startswith("host:")]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n"
            + f"Content-Length: {len(state.body)}\r\n\r\n".encode()
            + state.body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


async def test_http_proxy_gets_the_vetted_address_and_the_host_header(
    proxy: Proxy, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through HTTP_PROXY the request names the address checked here, the name only as Host."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    resolver = FakeResolver({"public.example": [[(PUBLIC, 0)]]})
    async with Fetcher(make_config(), resolver=resolver) as fetcher:
        download = await fetcher.get("http://public.example/a.png?x=1")
    assert proxy.body == download.data
    assert [f"GET http://{PUBLIC}/a.png?x=1 HTTP/1.1"] == proxy.requests
    assert ["public.example"] == proxy.hosts
    assert "http://public.example/a.png?x=1" == download.final_url
    assert ["public.example"] == resolver.calls


async def test_proxy_target_with_a_private_answer_is_pinned_to_the_public_one(
    proxy: Proxy, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of a mixed answer only a public address is handed to the proxy, as on a direct request."""
    monkeypatch.setenv("http_proxy", f"127.0.0.1:{proxy.port}")
    resolver = FakeResolver({"mixed.example": [[("192.168.0.10", 0), (PUBLIC, 0)]]})
    async with Fetcher(make_config(), resolver=resolver) as fetcher:
        await fetcher.get("http://mixed.example/a.png")
    assert [f"GET http://{PUBLIC}/a.png HTTP/1.1"] == proxy.requests


@pytest.mark.parametrize(
    ("answers", "target"),
    [
        ([("2606:2800:220:1::1", 0), (PUBLIC, 0)], PUBLIC),
        ([("2606:2800:220:1::1", 0)], "[2606:2800:220:1::1]"),
    ],
)
async def test_proxy_target_prefers_ipv4_and_brackets_ipv6(
    proxy: Proxy,
    make_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
    answers: list[tuple[str, int]],
    target: str,
) -> None:
    """One address goes to the proxy: IPv4 when there is one, else IPv6 in brackets."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    resolver = FakeResolver({"dual.example": [answers]})
    async with Fetcher(make_config(), resolver=resolver) as fetcher:
        await fetcher.get("http://dual.example/a.png")
    assert [f"GET http://{target}/a.png HTTP/1.1"] == proxy.requests
    assert ["dual.example"] == proxy.hosts


async def test_proxy_target_resolving_only_to_private_is_refused(
    proxy: Proxy, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a proxy a name resolving only to private addresses is refused before sending."""
    monkeypatch.setenv("http_proxy", f"127.0.0.1:{proxy.port}")
    resolver = FakeResolver({"inside.example": [[("192.168.0.10", 0), ("::1", 0)]]})
    async with Fetcher(make_config(), resolver=resolver) as fetcher:
        with pytest.raises(PolicyError) as caught:
            await fetcher.get("http://inside.example/a.png")
    assert "private-address" == caught.value.reason
    assert "inside.example resolves to 192.168.0.10, ::1, not a public address" == (
        caught.value.detail
    )
    assert [] == proxy.requests


async def test_proxy_target_that_cannot_be_resolved_is_dns(
    proxy: Proxy, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target name the resolver does not know fails with reason dns, and nothing is sent."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    async with Fetcher(make_config(attempts=1), resolver=FakeResolver({})) as fetcher:
        with pytest.raises(FetchError) as caught:
            await fetcher.get("http://gone.example/a.png")
    assert ("dns", "cannot resolve gone.example") == (caught.value.reason, caught.value.detail)
    assert [] == proxy.requests


async def test_connect_to_wins_over_the_proxy(
    upstream: Upstream, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect_to host goes straight to its mapped address even with HTTP_PROXY set."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    download = await fetch(upstream.config(), upstream.url("/img.png"))
    assert upstream.png == download.data
    assert [] == proxy.requests


async def test_no_proxy_bypasses_the_proxy(
    upstream: Upstream, proxy: Proxy, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host in NO_PROXY is fetched directly."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    resolver = FakeResolver({"direct.example": [[("127.0.0.1", upstream.port)]]})
    config = make_config(allow_private=True, allowed_ports=(upstream.port,))
    async with Fetcher(config, resolver=resolver) as fetcher:
        download = await fetcher.get(f"http://direct.example:{upstream.port}/img.png")
    assert upstream.png == download.data
    assert [] == proxy.requests


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (UpstreamStatusError(500), True),
        (UpstreamStatusError(503), True),
        (UpstreamStatusError(408), True),
        (UpstreamStatusError(425), True),
        (UpstreamStatusError(429), True),
        (UpstreamStatusError(404), False),
        (UpstreamStatusError(403), False),
        (FetchError("x"), True),
        (UpstreamTimeout("x"), True),
        (Truncated("x"), True),
        (TooLarge("x"), False),
        (PolicyError("x"), False),
        (PolicyError("x", "bad-port"), False),
        (FetchError("x", "too-many-redirects"), False),
        (FetchError("x", "tls"), False),
        (ValueError("x"), False),
    ],
)
def test_retry_policy(error: BaseException, retry: bool) -> None:
    """Only transient failures are retried."""
    assert retry == is_retryable(error)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),
        ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After is delta-seconds or an HTTP date; a past date means now."""
    assert expected == parse_retry_after(value, now=40.0)


def test_network_guard_blocks_non_loopback(network_guard: NetworkGuard) -> None:
    """The conftest guard itself refuses a connect beyond loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(RuntimeError, match="network guard"):
            sock.connect(("192.0.2.1", 80))
    finally:
        sock.close()
        network_guard.violations.clear()


# --- what each failure says ---------------------------------------------------------------------


async def test_unknown_name_is_dns_with_the_name_and_retried(make_config: MakeConfig) -> None:
    """A name that does not resolve is reason dns, says which name, and is retried like a reset."""
    resolver = FakeResolver({})
    async with Fetcher(make_config(), resolver=resolver, sleep=Sleeps()) as fetcher:
        with pytest.raises(FetchError) as caught:
            await fetcher.get("http://img.pmcaff.example/a.png")
    assert ("dns", "cannot resolve img.pmcaff.example") == (
        caught.value.reason,
        caught.value.detail,
    )
    assert 3 == resolver.calls.count("img.pmcaff.example")


async def test_refused_connection_names_the_address(make_config: MakeConfig) -> None:
    """A closed port is reason connection with 'connection refused by ADDRESS:PORT'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the fetch: nothing listens there
    config = make_config(connect_to=(f"closed.example:80:127.0.0.1:{port}",), attempts=1)
    with pytest.raises(FetchError) as caught:
        await fetch(config, "http://closed.example/a.png")
    assert ("connection", f"connection refused by 127.0.0.1:{port}") == (
        caught.value.reason,
        caught.value.detail,
    )


async def test_http_status_detail_is_the_status_line(upstream: Upstream) -> None:
    """A final 403 says 'HTTP 403 Forbidden' beside its reason http-403."""
    with pytest.raises(UpstreamStatusError) as caught:
        await fetch(upstream.config(), upstream.url("/status/403"))
    assert ("http-403", "HTTP 403 Forbidden") == (caught.value.reason, caught.value.detail)


async def test_certificate_for_another_name_is_a_hostname_mismatch(
    tls_upstream: Upstream, make_config: MakeConfig
) -> None:
    """A certificate that does not name the host is reason tls, detail 'hostname mismatch'."""
    mapping = f"other.example:443:127.0.0.1:{tls_upstream.port}"
    config = make_config(connect_to=(mapping,), cacert=tls_upstream.cacert)
    with pytest.raises(FetchError) as caught:
        await fetch(config, "https://other.example/img.png")
    assert ("tls", "TLS: certificate verify failed (hostname mismatch)") == (
        caught.value.reason,
        caught.value.detail,
    )


async def test_unknown_ca_detail_says_why(tls_upstream: Upstream, make_config: MakeConfig) -> None:
    """A certificate from a CA nobody trusts says so in the detail."""
    config = make_config(connect_to=(tls_upstream.connect_to,))
    with pytest.raises(FetchError) as caught:
        await fetch(config, tls_upstream.url("/img.png"))
    assert "TLS: certificate verify failed (unable to get local issuer certificate)" == (
        caught.value.detail
    )


async def test_trickled_response_head_is_a_timeout(make_config: MakeConfig) -> None:
    """A head sent a byte at a time, each within read_timeout, ends at connect + read timeout."""
    sent = [0]

    async def trickle_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(10_000):  # far past the limit; the client's hang-up ends it
            writer.write(b"X")
            await writer.drain()
            sent[0] += 1
            await asyncio.sleep(0.01)

    async with raw_server(trickle_head) as port:
        config = make_config(
            connect_to=(f"slow.example:80:127.0.0.1:{port}",),
            connect_timeout=0.1,
            read_timeout=0.2,
            attempts=1,
        )
        with pytest.raises(UpstreamTimeout) as caught:
            await fetch(config, "http://slow.example/a.png")
    assert "no response head after 0.3 s" == caught.value.detail
    assert sent[0] < 10_000


def body_server(body: bytes, piece: int, pause: float, *, length: int | None = None) -> RawHandler:
    """A handler sending a 200 with ``body`` in ``piece``-byte writes ``pause`` s apart."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = len(body) if length is None else length
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        for start in range(0, len(body), piece):
            writer.write(body[start : start + piece])
            await writer.drain()
            await asyncio.sleep(pause)

    return handle


async def test_trickled_body_ends_under_the_rate_floor(make_config: MakeConfig) -> None:
    """A body trickling below fetch.min_rate is ended as a timeout that names the floor."""
    async with raw_server(body_server(b"\xff" * 5000, 1, 0.02)) as port:
        config = make_config(
            connect_to=(f"trickle.example:80:127.0.0.1:{port}",),
            min_rate=1000,
            min_rate_window=0.1,
            attempts=1,
        )
        with pytest.raises(UpstreamTimeout) as caught:
            await fetch(config, "http://trickle.example/a.png")
    assert ("timeout", "under 1000 bytes/s over 0.1 s") == (
        caught.value.reason,
        caught.value.detail,
    )


async def test_slow_but_steady_body_passes_the_rate_floor(
    make_config: MakeConfig, png_bytes: bytes
) -> None:
    """A body arriving over several windows, well above the floor, is read whole."""
    async with raw_server(body_server(png_bytes, 256, 0.005)) as port:
        config = make_config(
            connect_to=(f"steady.example:80:127.0.0.1:{port}",),
            min_rate=1000,
            min_rate_window=0.02,
            attempts=1,
        )
        download = await fetch(config, "http://steady.example/a.png")
    assert png_bytes == download.data


# --- streaming into a file ----------------------------------------------------------------------


async def test_into_streams_the_body_to_the_file(upstream: Upstream, tmp_path: Path) -> None:
    """With into, the body lands in the file (old content gone), data is empty, the hash holds."""
    target = tmp_path / "body.part"
    target.write_bytes(b"old content that is longer than nothing")
    with target.open("r+b") as into:
        download = await fetch(upstream.config(), upstream.url("/img.png"), into=into)
    assert upstream.png == target.read_bytes()
    assert (b"", hashlib.sha256(upstream.png).hexdigest()) == (download.data, download.sha256)


async def test_into_starts_over_on_every_attempt(upstream: Upstream, tmp_path: Path) -> None:
    """A body cut short and retried leaves only the whole second body in the file."""
    target = tmp_path / "body.part"
    with target.open("w+b") as into:
        download = await fetch(upstream.config(), upstream.url("/reset"), into=into)
    assert 2 == upstream.hits["/reset"]
    assert upstream.png == target.read_bytes()
    assert hashlib.sha256(upstream.png).hexdigest() == download.sha256


async def test_into_is_empty_after_a_304(upstream: Upstream, tmp_path: Path) -> None:
    """A 304 writes nothing: the file is truncated and the Download says 304."""
    target = tmp_path / "body.part"
    target.write_bytes(b"stale")
    headers = {"If-None-Match": '"png-v1"'}
    with target.open("r+b") as into:
        download = await fetch(
            upstream.config(), upstream.url("/img.png"), headers=headers, into=into
        )
    assert (304, b"") == (download.status, target.read_bytes())


async def test_into_keeps_the_byte_cap(upstream: Upstream, tmp_path: Path) -> None:
    """Streaming into a file still stops at fetch.max_bytes."""
    target = tmp_path / "body.part"
    with target.open("w+b") as into, pytest.raises(TooLarge):
        await fetch(upstream.config(max_bytes=MiB), upstream.url("/big"), into=into)
    assert MiB + CHUNK >= target.stat().st_size
