"""
A local stand-in for the example origins and the CORS proxy, so ``mirror demo`` needs no internet.

The example posts and their origin are package data in ``mirror/examples/`` (:data:`EXAMPLES`), so
a plain ``pip install .`` runs the demo too. :func:`demo_origin` serves ``origin/<host>/<path>`` on
127.0.0.1, over plain HTTP and over TLS (with the demo CA in ``origin/tls/``), and hands back
curl-style ``connect_to`` entries that send every example host and ``cors.zfour.workers.dev``
there. The proxy host acts as the worker: ``GET /?<inner url>`` answers with the inner URL's file,
preferring the proxy's own copy in ``_proxy/<host>/<path>`` (where the origin serves a hotlinking
placeholder), with ``Access-Control-Allow-Origin: *``. Nothing is ever fetched over the network,
and only hosts listed in ``hosts.txt`` are served, so nothing outside their folders (``tls/``
included) is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from aiohttp import web

EXAMPLES = Path(__file__).resolve().parent / "examples"
PROXY_HOST = "cors.zfour.workers.dev"
PROXY_DIR = "_proxy"
INDEX_NAME = "_index"  # the file behind a path that ends with "/"
HOSTS_FILE = "hosts.txt"

_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True, slots=True)
class DemoOrigin:
    """The running demo servers and how to reach them."""

    http_port: int
    https_port: int
    connect_to: tuple[str, ...]
    cacert: Path


def relative_file(host: str, path: str) -> PurePosixPath | None:
    """
    The file, relative to the origin folder, behind ``host`` and a percent-decoded URL ``path``.

    The path is kept literally (``!custom``, ``~``, ``:`` included); a path ending in ``/`` names
    ``_index`` in that folder. Returns None for anything that could step outside the host's folder.
    """
    parts = path.split("/")
    if not path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    names = [*parts[1:-1], parts[-1] or INDEX_NAME]
    if any(name in ("", ".", "..") for name in [host, *names]) or "/" in host:
        return None
    return PurePosixPath(host, *names)


def content_type(data: bytes, name: str) -> str:
    """The Content-Type a server would send: sniffed images, HTML pages, else by extension."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.lstrip()[:1] == b"<":
        return "text/html; charset=utf-8"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def read_hosts(root: Path) -> tuple[str, ...]:
    """The example hosts listed in ``root/hosts.txt``, one a line."""
    lines = (root / HOSTS_FILE).read_text(encoding="utf-8").splitlines()
    return tuple(sorted({line.strip().lower() for line in lines if line.strip()}))


class _Handler:
    """Answers every request from the files under ``root``; :meth:`handle` is the route."""

    def __init__(self, root: Path, hosts: tuple[str, ...]) -> None:
        self.root = root.resolve()
        self.hosts = frozenset(hosts)

    def _find(self, *candidates: PurePosixPath) -> Path | None:
        for relative in candidates:
            path = (self.root / relative).resolve()
            if path.is_relative_to(self.root) and path.is_file():
                return path
        return None

    async def _serve(self, path: Path | None, headers: dict[str, str]) -> web.Response:
        if path is None:
            return web.Response(status=404, text="not found\n", headers=headers)
        data = await asyncio.to_thread(path.read_bytes)
        headers["Content-Type"] = content_type(data, path.name)
        return web.Response(body=data, headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve by Host (port stripped) and path (percent-decoded once); the proxy by query."""
        # The header itself: request.host falls back to getfqdn(), a DNS lookup.
        host = request.headers.get("Host", "").rsplit(":", 1)[0].lower()
        raw_path, _, raw_query = request.raw_path.partition("?")
        if host == PROXY_HOST:
            return await self._proxy(unquote(raw_path), raw_query)
        if host not in self.hosts:
            return web.Response(status=404, text=f"unknown host {host!r}\n")
        relative = relative_file(host, unquote(raw_path))
        if relative is None:
            return web.Response(status=400, text="bad path\n")
        return await self._serve(self._find(relative), {})

    async def _proxy(self, path: str, inner: str) -> web.Response:
        """The worker: ``/?http://host/path``, the inner URL raw or percent-encoded."""
        headers = {"Access-Control-Allow-Origin": "*"}
        if inner.lower().startswith(("http%3a", "https%3a")):
            inner = unquote(inner)
        parts = urlsplit(inner)
        host = (parts.hostname or "").lower()
        if path != "/" or parts.scheme not in ("http", "https") or host not in self.hosts:
            return web.Response(status=400, text=f"cannot proxy {inner!r}\n", headers=headers)
        relative = relative_file(host, unquote(parts.path or "/"))
        if relative is None:
            return web.Response(status=400, text="bad path\n", headers=headers)
        return await self._serve(self._find(PROXY_DIR / relative, relative), headers)


def _listen(sockets: list[socket.socket]) -> int:
    """Bind a new socket to 127.0.0.1 on a free port, add it to ``sockets``, return the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def demo_origin(root: Path) -> AsyncIterator[DemoOrigin]:
    """
    Serve ``root`` (``mirror/examples/origin``) on 127.0.0.1, HTTP and HTTPS, until the block exits.

    Raises:
        OSError: ``root`` lacks ``hosts.txt`` or the ``tls/`` PEM files.
    """
    hosts = read_hosts(root)
    tls = root / "tls"
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls / "server.pem", tls / "server-key.pem")
    app = web.Application()
    app.router.add_get("/{tail:.*}", _Handler(root, hosts).handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sockets: list[socket.socket] = []
    try:
        http_port, https_port = _listen(sockets), _listen(sockets)
        await web.SockSite(runner, sockets[0]).start()
        await web.SockSite(runner, sockets[1], ssl_context=context).start()
        names = (*hosts, PROXY_HOST)
        entries = [f"{host}:80:127.0.0.1:{http_port}" for host in names]
        entries += [f"{host}:443:127.0.0.1:{https_port}" for host in names]
        yield DemoOrigin(http_port, https_port, tuple(entries), (tls / "ca.pem").resolve())
    finally:
        await runner.cleanup()
        for sock in sockets:  # aiohttp leaves sockets it was handed open
            sock.close()
