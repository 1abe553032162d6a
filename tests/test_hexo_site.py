"""The Hexo site and browser harness itself: real npm install, real hexo builds, real Chromium."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import json
import os
import socket
import socketserver
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import ImageState, open_browser, page_images, require_chromium
from conftest import make_image
from hexo_site import (
    OFFLINE_GUARD,
    SKELETON,
    HexoError,
    HexoInstall,
    SiteBuilder,
    article_html,
    generate,
    page_file,
    post_pages,
    static_site,
)

# The first test to use hexo_install pays for `npm ci` (about 20 s from a cold npm cache).
pytestmark = pytest.mark.timeout(600)

PROXIED = "https://cors.zfour.workers.dev/?http://static.1sapp.com/qupost/a.jpeg"
IN_CODE = "https://cors.zfour.workers.dev/?http://www.a.com:8002/content/delete/87343"
PUBLIC_IP = "http://93.184.215.14/b.png"  # a public IP literal: nothing to resolve
HTML_POST = "hello-html.md"
MARKDOWN_POST = "markdown.md"


def write_blog(root: Path, proxied: str = PROXIED) -> tuple[Path, Path]:
    """Two posts (raw HTML, Markdown) and the local images they name; return (posts, images)."""
    posts, images = root / "posts", root / "images"
    (posts / "sub").mkdir(parents=True)
    images.mkdir()
    for i, name in enumerate(("html.png", "code.png", "pre.png", "md.png", "lazy.png")):
        (images / name).write_bytes(make_image("PNG", (40 + i, 30 + i)))
    (posts / HTML_POST).write_text(
        "\n---\ntitle: Hello HTML\ndate: 2021-12-20 18:31:00\ncategories:\n - 新媒体\n - 趣头条\n"
        "tags: [mirror]\n---\n\n"
        '<p><img src="/images/html.png" data-size="40,30" referrerpolicy="no-referrer"></p>\n'
        f'<p><img src="{proxied}" data-size="550,412" referrerpolicy="no-referrer"></p>\n'
        '<p>An example: <code><img src="/images/code.png"></code></p>\n'
        f'<pre><code><img src="{IN_CODE}"></code></pre>\n'
        '<pre><img src="/images/pre.png"></pre>\n'
        '<div style="height: 4000px"></div>\n'
        '<p><img src="/images/lazy.png" loading="lazy"></p>\n',
        encoding="utf-8",
    )
    (posts / "sub" / MARKDOWN_POST).write_text(
        "---\ntitle: Markdown\ndate: 2022-01-31 08:00:00\n---\n\n"
        "![a local one](/images/md.png)\n\n"
        f"![a public address]({PUBLIC_IP})\n\n"
        '```html\n<img src="/images/fenced.png">\n```\n',
        encoding="utf-8",
    )
    return posts, images


def by_src(states: list[ImageState]) -> dict[str | None, ImageState]:
    return {state.src: state for state in states}


@pytest.mark.slow
def test_local_images_load_and_remote_ones_do_not(
    build_site: SiteBuilder, browser: Any, tmp_path: Path
) -> None:
    """In a built blog every local image loads, every remote one does not, code is flagged."""
    posts, images = write_blog(tmp_path)
    public = build_site(posts, {"images": images})
    pages = post_pages(public)
    assert ["/2021/12/20/hello-html/", "/2022/01/31/sub/markdown/"] == pages
    with static_site(public) as site:
        first = by_src(page_images(browser, site.base_url + pages[0].lstrip("/")))
        second = page_images(browser, site.base_url + pages[1].lstrip("/"))
    assert {
        "/images/html.png": (True, False),
        PROXIED: (False, False),
        "/images/code.png": (True, True),
        IN_CODE: (False, True),
        "/images/pre.png": (True, False),  # a bare <pre> is not code
        "/images/lazy.png": (True, False),  # below the fold, loading=lazy
    } == {src: (state.loaded, state.in_code) for src, state in first.items()}
    assert 40 == first["/images/html.png"].natural_width
    # The fenced block's <img> is text, not an element.
    assert [("/images/md.png", True), (PUBLIC_IP, False)] == [(s.src, s.loaded) for s in second]
    served = {path for path in site.requests if path.startswith("/images/")}
    assert {"/images/html.png", "/images/code.png", "/images/pre.png", "/images/lazy.png",
            "/images/md.png"} == served  # fmt: skip


@pytest.mark.slow
def test_article_html_differs_only_in_the_changed_url(
    build_site: SiteBuilder, tmp_path: Path
) -> None:
    """Two builds differing in one image URL have equal article bodies but for that URL."""
    local = "/mirror/objects/4c/4c73.jpeg"
    original = build_site(write_blog(tmp_path / "a")[0])
    again = build_site(write_blog(tmp_path / "b")[0])
    rewritten = build_site(write_blog(tmp_path / "c", proxied=local)[0])
    page = "/2021/12/20/hello-html/"
    before, after = article_html(original, page), article_html(rewritten, page)
    assert article_html(again, page) == before
    assert before.startswith('<p><img src="/images/html.png"')
    assert before.endswith('<p><img src="/images/lazy.png" loading="lazy"></p>')
    assert 1 == before.count(PROXIED)
    assert before != after
    assert before.replace(PROXIED, local) == after
    other = "/2022/01/31/sub/markdown/"
    assert article_html(original, other) == article_html(rewritten, other)


@dataclasses.dataclass
class Canary:
    """An image server that must never be reached; it records the paths asked of it."""

    port: int
    requests: list[str]


@contextlib.contextmanager
def canary_on(host: str, root: Path) -> Iterator[Canary]:
    """Serve ``root`` on ``host`` (port 0), recording each request, until the block ends."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    try:
        server = http.server.ThreadingHTTPServer(
            (host, 0), functools.partial(Handler, directory=str(root))
        )
    except OSError as exc:
        pytest.skip(f"cannot bind a canary on {host}: {exc}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Canary(server.server_address[1], requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def blocked_page(root: Path, canary: Canary, site_port: int) -> dict[str, str]:
    """Write root/index.html naming an image on 127.0.0.1 and on four other places."""
    (root / "ok.png").write_bytes(make_image("PNG", (20, 10)))
    others = {
        "loopback": f"http://127.0.0.2:{canary.port}/ok.png",
        "localhost": f"http://localhost:{site_port}/ok.png?via=localhost",
        "name": PROXIED,
        "public": PUBLIC_IP,
    }
    imgs = "".join(f'<img src="{url}">\n' for url in ["/ok.png", *others.values()])
    (root / "index.html").write_text(f"<!doctype html>\n<p>\n{imgs}", encoding="utf-8")
    return others


@pytest.mark.slow
def test_browser_reaches_127_0_0_1_and_nothing_else(browser: Any, tmp_path: Path) -> None:
    """Images on 127.0.0.2, localhost, a name and a public IP never load; the canary sees none."""
    root = tmp_path / "site"
    root.mkdir()
    with canary_on("127.0.0.2", root) as canary, static_site(root) as site:
        others = blocked_page(root, canary, int(site.base_url.rsplit(":", 1)[1].strip("/")))
        states = page_images(browser, site.base_url + "index.html")
    assert [("/ok.png", True)] + [(url, False) for url in others.values()] == [
        (state.src, state.loaded) for state in states
    ]
    assert [] == canary.requests
    assert "/ok.png?via=localhost" not in site.requests


@dataclasses.dataclass
class Sink:
    """A proxy that answers nothing: it records each request line it is sent and hangs up."""

    port: int
    lines: list[str]


@contextlib.contextmanager
def sink_proxy() -> Iterator[Sink]:
    """Listen on 127.0.0.1 (port 0) as a proxy that drops every request, until the block ends."""
    lines: list[str] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(5)
            with contextlib.suppress(OSError):
                lines.append(self.request.recv(8192).split(b"\r\n", 1)[0].decode("latin-1"))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Sink(server.server_address[1], lines)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.slow
def test_every_request_not_to_127_0_0_1_goes_to_the_proxy(tmp_path: Path) -> None:
    """With a live proxy in place of the dead one, each blocked image is asked of the proxy."""
    require_chromium()
    root = tmp_path / "site"
    root.mkdir()
    with (
        sink_proxy() as sink,
        canary_on("127.0.0.2", root) as canary,
        static_site(root) as site,
        open_browser(tmp_path / "chromium", proxy_port=sink.port) as driver,
    ):
        port = int(site.base_url.rsplit(":", 1)[1].strip("/"))
        others = blocked_page(root, canary, port)
        states = page_images(driver, site.base_url + "index.html")
    assert [True, False, False, False, False] == [state.loaded for state in states]
    expected = {
        f"GET {others['loopback']} HTTP/1.1",
        f"GET {others['localhost']} HTTP/1.1",
        # workers.dev is under .dev, which Chromium's HSTS preload list upgrades to https.
        "CONNECT cors.zfour.workers.dev:443 HTTP/1.1",
        f"GET {PUBLIC_IP} HTTP/1.1",
    }
    assert expected <= set(sink.lines)
    assert [] == canary.requests
    assert ["/index.html", "/ok.png"] == [p for p in site.requests if p != "/favicon.ico"]


def test_offline_guard_refuses_every_connect_and_lookup(tmp_path: Path) -> None:
    """Node with the guard preloaded logs and refuses a loopback connect and a name lookup."""
    log = tmp_path / "offline.log"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        script = (
            "const net = require('node:net');"
            f"try {{ net.connect({{host: '127.0.0.1', port: {port}}}); }} catch (e) {{}}"
            "require('node:dns').promises.lookup('localhost').catch(() => {});"
            f"fetch('http://127.0.0.1:{port}/').catch(() => {{}});"
        )
        node = ["node", f"--require={OFFLINE_GUARD}", "-e", script]
        env = {**os.environ, "MIRROR_HEXO_OFFLINE_LOG": str(log), "NODE_OPTIONS": ""}
        done = subprocess.run(node, env=env, capture_output=True, timeout=60, check=False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert 0 == done.returncode, done.stderr
    assert [
        f'connect {{"host":"127.0.0.1","port":{port}}}',
        'dns lookup ["localhost"]',
        f'connect {{"host":"127.0.0.1","port":"{port}"}}',
    ] == log.read_text(encoding="utf-8").splitlines()


@pytest.mark.slow
def test_hexo_builds_with_no_network_at_all(hexo_install: HexoInstall, tmp_path: Path) -> None:
    """hexo generate succeeds inside a network namespace that has no interface up."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"unshare --net is not allowed here: {probe.stderr.decode().strip()}")
    posts, images = write_blog(tmp_path)
    builder = SiteBuilder(hexo_install, tmp_path / "hexo", command_prefix=("unshare", "--net"))
    public = builder(posts, {"images": images})
    assert (public / "images" / "html.png").read_bytes() == (images / "html.png").read_bytes()
    assert 2 == len(post_pages(public))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("---\ntitle: [unclosed\n---\n\nx\n", "YAMLException"),  # hexo drops the post, exits 0
        ("---\ntitle: t\n---\n\n{% nosuchtag %}\n", "unknown block tag: nosuchtag"),
    ],
)
def test_build_site_surfaces_hexo_errors(
    build_site: SiteBuilder, tmp_path: Path, body: str, message: str
) -> None:
    """A post hexo cannot render fails the build with hexo's own error text."""
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "bad.md").write_text(body, encoding="utf-8")
    with pytest.raises(HexoError, match=message):
        build_site(posts)


@pytest.mark.slow
def test_build_site_merges_config_and_copies_extra_sources(
    build_site: SiteBuilder, tmp_path: Path
) -> None:
    """Config overrides reach hexo (nested keys merged) and extra folders land under source/."""
    posts, images = write_blog(tmp_path)
    objects = tmp_path / "objects"
    (objects / "4c").mkdir(parents=True)
    (objects / "4c" / "4c73.png").write_bytes(b"not parsed by hexo")
    config = {"permalink": "p/:title/", "theme_config": {"sidebar": False}}
    public = build_site(posts, {"mirror/objects": objects, "images": images}, config)
    assert b"not parsed by hexo" == (public / "mirror" / "objects" / "4c" / "4c73.png").read_bytes()
    assert ["/p/hello-html/", "/p/sub/markdown/"] == post_pages(public)
    page = page_file(public, "/p/hello-html/").read_text(encoding="utf-8")
    assert '<aside id="sidebar">' not in page
    assert 'datetime="2021-12-20T18:31:00.000Z"' in page
    written = yaml.safe_load((public.parent / "_config.yml").read_text(encoding="utf-8"))
    assert ("UTC", "p/:title/") == (written["timezone"], written["permalink"])


@pytest.mark.parametrize("key", ["../escape", "/abs", "_drafts", "a/.hidden", ""])
def test_extra_source_keys_hexo_would_not_publish_are_refused(tmp_path: Path, key: str) -> None:
    """An extra_source folder outside source/ or hidden from Hexo is refused before any work."""
    posts, _ = write_blog(tmp_path)
    site = tmp_path / "site"
    with pytest.raises(ValueError, match="extra_source key"):
        generate(HexoInstall(tmp_path / "nowhere"), site, posts, {key: posts})
    assert not site.exists()


def test_installed_packages_are_the_lockfile_s(hexo_install: HexoInstall) -> None:
    """npm ci installs exactly the pinned versions, lockfile v3, and hexo's engines accept node."""
    manifest = json.loads((SKELETON / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((SKELETON / "package-lock.json").read_text(encoding="utf-8"))
    assert 3 == lock["lockfileVersion"]
    assert manifest["dependencies"] == lock["packages"][""]["dependencies"]
    for name, version in manifest["dependencies"].items():
        installed = hexo_install.node_modules / name / "package.json"
        assert version == json.loads(installed.read_text(encoding="utf-8"))["version"]
        assert version == lock["packages"][f"node_modules/{name}"]["version"]
    hexo = json.loads((hexo_install.node_modules / "hexo" / "package.json").read_text())
    assert ">=20.19.0" == hexo["engines"]["node"] == manifest["engines"]["node"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    assert (20, 19, 0) <= tuple(int(part) for part in node.stdout.strip().lstrip("v").split("."))


def test_static_site_serves_until_its_block_ends(tmp_path: Path) -> None:
    """The static server answers on 127.0.0.1 while open and refuses connections after."""
    (tmp_path / "a b.txt").write_text("hello", encoding="utf-8")
    with static_site(tmp_path) as site:
        with urllib.request.urlopen(site.base_url + "a%20b.txt", timeout=10) as response:
            assert b"hello" == response.read()
        assert ["/a%20b.txt"] == site.requests
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(site.base_url + "a%20b.txt", timeout=10)


def test_page_file_maps_urls_into_the_build(tmp_path: Path) -> None:
    """URLs, paths and percent-escapes map to files under public; '..' is refused."""
    assert tmp_path / "2021" / "x" / "index.html" == page_file(
        tmp_path, "http://127.0.0.1:1/2021/x/"
    )
    assert tmp_path / "新 媒体" / "index.html" == page_file(tmp_path, "/%E6%96%B0%20媒体/")
    assert tmp_path / "index.html" == page_file(tmp_path, "/")
    assert tmp_path / "css" / "style.css" == page_file(tmp_path, "css/style.css")
    with pytest.raises(ValueError, match="leaves the site"):
        page_file(tmp_path, "/a/../../etc/")


def test_article_html_refuses_a_page_that_is_not_one_post(tmp_path: Path) -> None:
    """An index page with two article bodies, or none, is not mistaken for a post."""
    start = '<div class="e-content article-entry" itemprop="articleBody">'
    end = '</div><footer class="article-footer">'
    (tmp_path / "index.html").write_text(f"{start}a{end}{start}b{end}", encoding="utf-8")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "index.html").write_text("<p>no article</p>", encoding="utf-8")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "index.html").write_text(f"{start}<div>unclosed{end}", encoding="utf-8")
    with pytest.raises(ValueError, match="2 article bodies"):
        article_html(tmp_path, "/")
    with pytest.raises(ValueError, match="0 article bodies"):
        article_html(tmp_path, "/x/")
    assert "<div>unclosed" == article_html(tmp_path, "/y/")
