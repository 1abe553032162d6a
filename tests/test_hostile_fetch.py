"""
The fetcher under hostile networks (issue #13, rows 6, 7, 8 and 10), each attack replayed on
loopback against a real forwarding proxy, a canary that must stay untouched, or a trickling server.

The forwarding proxy is written here on asyncio streams (absolute-form requests and CONNECT
tunnels): it resolves names through its own table, the *rebinding* answer an attacker's DNS gives
the proxy after the fetcher checked a public one, and it reaches "the internet" (public addresses)
through a table of loopback ports standing in for them, so nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from conftest import FakeResolver, raw_server

from mirror.config import Config
from mirror.errors import FetchError, PolicyError, UpstreamTimeout
from mirror.fetch import Fetcher
from mirror.policy import ip_literal

if TYPE_CHECKING:
    from conftest import Canary, Upstream

MakeConfig = Callable[..., Config]
PUBLIC = "93.184.216.34"  # what the fetcher's resolver answers; the proxy maps it to loopback
PIPE = 64 * 1024


@pytest.fixture(autouse=True)
def no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy variables from the machine running the tests must not reroute them."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@dataclasses.dataclass
class ForwardProxy:
    """What the forwarding proxy knows and saw."""

    port: int = 0
    # The proxy's own DNS, the one an attacker rebinds: name -> (address, port) it connects to.
    dns: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    # Public address:port -> the loopback port that stands in for that host.
    internet: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    lookups: list[str] = dataclasses.field(default_factory=list)
    requests: list[str] = dataclasses.field(default_factory=list)
    hosts: list[str] = dataclasses.field(default_factory=list)

    def route(self, host: str, port: int) -> int | None:
        """The loopback port a connection to ``host:port`` reaches, as a real proxy would."""
        if ip_literal(host) is not None:
            return self.internet.get((host, port))
        self.lookups.append(host)
        answer = self.dns.get(host)
        return answer[1] if answer is not None else None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(PIPE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    """A forwarding HTTP proxy on 127.0.0.1: absolute-form requests and CONNECT tunnels."""
    state = ForwardProxy()
    tasks: set[asyncio.Task[Any]] = set()

    async def tunnel(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, first: bytes
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        up_writer.write(first)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head.decode("latin-1").split("\r\n")
            method, target, _version = line.split(" ")
            state.requests.append(line)
            state.hosts += [f.split(":", 1)[1].strip() for f in fields if f[:5].lower() == "host:"]
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                where = state.route(host.strip("[]"), int(port))
                if where is None:
                    writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await tunnel(reader, writer, where, b"")
                return
            url = urlsplit(target)
            where = state.route(url.hostname or "", url.port or 80)
            if where is None:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            kept = [f for f in fields if f and not f.lower().startswith(("proxy-", "connection"))]
            path = url.path + (f"?{url.query}" if url.query else "")
            forward = "\r\n".join([f"{method} {path} HTTP/1.1", *kept, "Connection: close"])
            await tunnel(reader, writer, where, (forward + "\r\n\r\n").encode("latin-1"))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.wait_closed()


# --- row 6: through a proxy, a rebinding answer must not reach loopback --------------------------


async def test_http_through_a_proxy_never_lets_it_resolve_the_name(
    forward_proxy: ForwardProxy,
    upstream: Upstream,
    canary: Canary,
    make_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The name checked public here rebinds to the canary for the proxy: the proxy never asks."""
    forward_proxy.dns["rebind.example"] = ("127.0.0.1", canary.port)
    forward_proxy.internet[(PUBLIC, 80)] = upstream.port
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{forward_proxy.port}")
    resolver = FakeResolver({"rebind.example": [[(PUBLIC, 0)]]})
    async with Fetcher(make_config(), resolver=resolver) as fetcher:
        download = await fetcher.get("http://rebind.example/img.png")
    assert upstream.png == download.data
    assert (0, []) == (canary.connections, forward_proxy.lookups)
    assert [f"GET http://{PUBLIC}/img.png HTTP/1.1"] == forward_proxy.requests
    assert "rebind.example" == upstream.headers[0]["Host"]


async def test_https_through_a_proxy_connects_to_the_vetted_address(
    forward_proxy: ForwardProxy,
    tls_upstream: Upstream,
    canary: Canary,
    make_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CONNECT goes to the checked IP; TLS still sends SNI and checks the original name."""
    forward_proxy.dns["origin.example"] = ("127.0.0.1", canary.port)
    forward_proxy.internet[(PUBLIC, 443)] = tls_upstream.port
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{forward_proxy.port}")
    resolver = FakeResolver({"origin.example": [[(PUBLIC, 0)]]})
    config = make_config(cacert=tls_upstream.cacert)
    async with Fetcher(config, resolver=resolver) as fetcher:
        download = await fetcher.get("https://origin.example/img.png")
    assert tls_upstream.png == download.data
    assert (0, []) == (canary.connections, forward_proxy.lookups)
    assert [f"CONNECT {PUBLIC}:443 HTTP/1.1"] == forward_proxy.requests
    assert ["origin.example"] == tls_upstream.sni
    assert "https://origin.example/img.png" == download.final_url


async def test_https_through_a_proxy_still_checks_the_certificate(
    forward_proxy: ForwardProxy,
    tls_upstream: Upstream,
    make_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pinning the address does not weaken TLS: a certificate for another name is refused."""
    forward_proxy.internet[(PUBLIC, 443)] = tls_upstream.port
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{forward_proxy.port}")
    resolver = FakeResolver({"other.example": [[(PUBLIC, 0)]]})
    config = make_config(cacert=tls_upstream.cacert)
    async with Fetcher(config, resolver=resolver) as fetcher:
        with pytest.raises(FetchError) as caught:
            await fetcher.get("https://other.example/img.png")
    assert ("tls", "TLS: certificate verify failed (hostname mismatch)") == (
        caught.value.reason,
        caught.value.detail,
    )
    assert 0 == sum(tls_upstream.hits.values())


async def test_a_redirect_through_the_proxy_is_pinned_too(
    forward_proxy: ForwardProxy,
    upstream: Upstream,
    canary: Canary,
    make_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every hop is resolved and checked here: a redirect to a rebinding name gets no lookup."""
    forward_proxy.dns["rebind.example"] = ("127.0.0.1", canary.port)
    forward_proxy.internet[(PUBLIC, 80)] = upstream.port
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{forward_proxy.port}")
    resolver = FakeResolver({"a.example": [[(PUBLIC, 0)]], "rebind.example": [[(PUBLIC, 0)]]})
    async with Fetcher(make_config(), resolver=resolver) as fetcher:
        download = await fetcher.get("http://a.example/redirect?to=http://rebind.example/img.png")
    assert upstream.png == download.data
    assert "http://rebind.example/img.png" == download.final_url
    assert (0, []) == (canary.connections, forward_proxy.lookups)


# --- row 7: the proxy's own name is trusted only for the proxy connection ------------------------


async def test_a_post_naming_the_proxy_host_meets_the_ordinary_policy(
    forward_proxy: ForwardProxy,
    canary: Canary,
    make_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With HTTPS_PROXY=http://proxybox.test, http://proxybox.test/ is refused, not connected."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxybox.test")
    canary_answer = [[("127.0.0.1", canary.port)]]
    resolver = FakeResolver({"proxybox.test": canary_answer, "proxybox.test.": canary_answer})
    async with Fetcher(make_config(attempts=1), resolver=resolver) as fetcher:
        for url in ("http://proxybox.test/a.png", "http://PROXYBOX.test./a.png"):
            with pytest.raises(PolicyError) as caught:
                await fetcher.get(url)
            assert "private-address" == caught.value.reason
    assert 0 == canary.connections


async def test_the_proxy_name_is_resolved_once_and_used_for_the_proxy_only(
    forward_proxy: ForwardProxy,
    upstream: Upstream,
    canary: Canary,
    make_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy given by name works, is resolved once, and its address serves no direct request."""
    forward_proxy.internet[(PUBLIC, 80)] = upstream.port
    monkeypatch.setenv("HTTP_PROXY", f"http://proxybox.test:{forward_proxy.port}")
    monkeypatch.setenv("NO_PROXY", "proxybox.test")
    resolver = FakeResolver(
        {
            "proxybox.test": [[("127.0.0.1", forward_proxy.port)], [("127.0.0.1", canary.port)]],
            "a.example": [[(PUBLIC, 0)]],
        }
    )
    config = make_config(attempts=1, allowed_ports=(80, 443, forward_proxy.port))
    async with Fetcher(config, resolver=resolver) as fetcher:
        for _ in range(3):
            await fetcher.get("http://a.example/img.png")
        with pytest.raises(PolicyError):
            await fetcher.get(f"http://proxybox.test:{forward_proxy.port}/img.png")
    assert 3 == upstream.hits["/img.png"]
    # Once for the proxy connection; once for the direct request, judged (and refused) afresh.
    assert 2 == resolver.calls.count("proxybox.test")
    assert 0 == canary.connections
    assert 3 == len(forward_proxy.requests)


# --- row 8: a caller's host allowlist holds on every hop -----------------------------------------


async def test_allowlist_is_checked_on_every_redirect_hop(
    upstream: Upstream, make_config: MakeConfig
) -> None:
    """A redirect from an allowed host to another host is refused as not-allowed, unsent."""
    config = make_config(
        connect_to=(upstream.connect_to, f"other.example:80:127.0.0.1:{upstream.port}"),
        attempts=1,
    )
    url = upstream.url("/redirect?to=http://other.example/img.png")
    async with Fetcher(config) as fetcher:
        with pytest.raises(PolicyError) as caught:
            await fetcher.get(url, allow=lambda host: host == "origin.example")
        allowed = await fetcher.get(url, allow=lambda host: host.endswith(".example"))
    assert ("not-allowed", "other.example is not allowed") == (
        caught.value.reason,
        caught.value.detail,
    )
    assert upstream.png == allowed.data
    assert (2, 1) == (
        upstream.hits["/redirect?to=http://other.example/img.png"],
        upstream.hits["/img.png"],
    )


# --- row 10: a trickle gives its slot back early -------------------------------------------------


async def test_trickling_hosts_do_not_starve_a_good_one(
    upstream: Upstream, make_config: MakeConfig
) -> None:
    """With every slot held by trickles, the floor ends them and a good fetch still completes."""
    sent = [0]

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(100_000):  # the client's hang-up ends it long before
            writer.write(b"\xff")
            await writer.drain()
            sent[0] += 1
            await asyncio.sleep(0.02)

    async with raw_server(trickle) as port:
        config = make_config(
            connect_to=(upstream.connect_to, f":80:127.0.0.1:{port}"),
            jobs=4,
            attempts=1,
            min_rate=1000,
            min_rate_window=0.1,
            total_timeout=60.0,
        )
        # A bound, not a measurement: the fix needs well under a second here, the bug a minute.
        async with Fetcher(config) as fetcher, asyncio.timeout(30):
            trickles = [
                asyncio.ensure_future(fetcher.get(f"http://t{i}.example/a.png")) for i in range(12)
            ]
            good = await fetcher.get(upstream.url("/img.png"))
            results = await asyncio.gather(*trickles, return_exceptions=True)
    assert upstream.png == good.data
    assert [True] * 12 == [isinstance(r, UpstreamTimeout) for r in results]
    # About five bytes per trickle per window: nowhere near the 100000 each would send.
    assert sent[0] < 12 * 50
