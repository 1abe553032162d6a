"""The visual report: built from a real store, manifest and posts, then opened in a browser."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import html
import html.parser
import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import make_image, object_file, store_object
from PIL import Image

from mirror.cli import main
from mirror.config import Config, ManifestConfig, StoreConfig
from mirror.errors import ExitStatus
from mirror.manifest import Attempt, Manifest, SourceResult, manifest_path, open_manifest
from mirror.report import thumbnail

W = "https://cors.zfour.workers.dev/?"
HOSTILE = 'http://x.example/"><script>alert(1)</script>.jpg'
HOSTILE_REASON = "<b onmouseover=alert(2)>http-599</b>"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@dataclass
class Blog:
    """A store, its manifest and a Hexo tree whose posts name the store's sources."""

    store: Path
    posts: Path
    html: Path
    mirrored: dict[str, str]  # source -> sha256


def _src(host: str, name: str) -> str:
    return f"http://{host}/img/{name}"


def _object(store: Path, data: bytes, ext: str, source: str) -> SourceResult:
    sha = store_object(store, data, ext)
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return SourceResult(
        source, "mirrored", sha256=sha, ext=ext, size=len(data), format=ext.upper(),
        width=width, height=height, fetched_from="origin",
    )  # fmt: skip


def _failed(source: str, reason: str, status: str = "failed") -> SourceResult:
    attempts = (Attempt("origin", source, reason), Attempt("proxy", W + source, reason))
    return SourceResult(source, status, reason=reason, attempts=attempts)


async def _record(config: Config, rows: list[SourceResult]) -> None:
    async with open_manifest(config) as manifest:
        await manifest.record_results(rows)


def make_blog(tmp_path: Path, images: int = 3, manifest_url: str = "") -> Blog:
    """Mirrored images on two hosts, failures on three, posts naming them at known lines."""
    root = tmp_path / "cache"
    mirrored = [
        _object(
            root,
            make_image("JPEG" if i % 2 else "PNG", (400 + 37 * i, 300 - 11 * i)),
            "jpg" if i % 2 else "png",
            _src("good.example" if i % 3 else "mixed.example", f"{i}.jpg"),
        )
        for i in range(images)
    ]
    failures = [
        _failed(_src("dead.example", "a.jpg"), "http-404"),
        _failed(_src("dead.example", "b.jpg"), "http-404"),
        _failed(_src("dead.example", "c.jpg"), "timeout"),
        _failed(_src("mixed.example", "d.jpg"), "size-mismatch"),
        _failed("http://10.0.0.1/e.jpg", "private-address", "blocked"),
        _failed(HOSTILE, HOSTILE_REASON),
        SourceResult(_src("later.example", "f.jpg"), "skipped", reason="http-503"),
    ]
    config = Config(store=StoreConfig(url=str(root)), manifest=ManifestConfig(url=manifest_url))
    asyncio.run(_record(config, [*mirrored, *failures]))
    posts = tmp_path / "blog" / "source" / "_posts"
    (posts / "sub dir").mkdir(parents=True)
    first = [f"![m]({W}{r.source})" for r in mirrored]
    (posts / "one.md").write_text(
        "---\ntitle: one\n---\n\n"  # lines 1-4
        + "\n".join(first)  # lines 5 .. 4 + images
        + f'\n<img src="{W}{_src("dead.example", "a.jpg")}">\n',
        encoding="utf-8",
    )
    (posts / "sub dir" / "two #2.md").write_text(
        f'# two\n\n<p><img src="{W}{_src("dead.example", "a.jpg")}"></p>\n'
        f"![x]({W}{_src('mixed.example', 'd.jpg')})\n"
        f'<img src="{W}{html.escape(HOSTILE)}">\n',
        encoding="utf-8",
    )
    (posts / '<i>"q".md').write_text(f"![b]({W}{_src('dead.example', 'b.jpg')})\n")
    return Blog(
        root,
        posts,
        tmp_path / "blog" / "public" / "report.html",
        {r.source: r.sha256 for r in mirrored if r.sha256 is not None},
    )


def run_report(blog: Blog, *extra: str, paths: bool = True) -> str:
    argv = ["report", "--html", str(blog.html), "--store", str(blog.store), *extra]
    assert ExitStatus.OK == main([*argv, *([str(blog.posts)] if paths else [])])
    return blog.html.read_text(encoding="utf-8")


def total(page: str, name: str) -> int:
    match = re.search(f'id="total-{name}"[^>]*>([0-9,]+)<', page)
    assert match is not None, name
    return int(match.group(1).replace(",", ""))


class Tags(html.parser.HTMLParser):
    """Every start tag with its attributes, as the browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def test_report_totals_hosts_gallery_and_links(tmp_path: Path) -> None:
    """Totals, hosts by most failures, one thumbnail per object, failures linked to post:line."""
    blog = make_blog(tmp_path)
    page = run_report(blog)
    assert (3, 5, 1, 1, 3) == tuple(
        total(page, n) for n in ("mirrored", "failed", "blocked", "skipped", "objects")
    )
    sizes = sum(p.stat().st_size for p in (blog.store / "objects").rglob("*.*"))
    assert f'data-bytes="{sizes}"' in page
    hosts = re.findall(r'<tr data-host="([^"]+)">', page)
    assert ["dead.example", "10.0.0.1", "mixed.example", "x.example"] == hosts[:4]
    assert {"good.example", "later.example"} == set(hosts[4:])
    dead = page.split('data-host="dead.example">', 1)[1].split("</tr>", 1)[0]
    assert '<td class="num failed">3</td>' in dead
    assert ">http-404 2<" in dead
    assert ">timeout 1<" in dead
    assert 3 == page.count('<img loading="lazy"')
    assert "3 of 3 mirrored objects" in page
    # report.html is in blog/public; posts in blog/source/_posts: links go up one folder.
    a_jpg = page.split(f"<code>{_src('dead.example', 'a.jpg')}</code>", 1)[1].split("</tr>")[0]
    assert '<a href="../source/_posts/one.md#L8">one.md:8</a>' in a_jpg
    assert '<a href="../source/_posts/sub%20dir/two%20%232.md#L3">sub dir/two #2.md:3</a>' in a_jpg
    assert "origin: http-404" in a_jpg
    first = page.split(f'data-sha256="{blog.mirrored[_src("mixed.example", "0.jpg")]}"')[1]
    assert first.startswith('><a href="../source/_posts/one.md#L5"><img loading="lazy"')


def test_report_links_rewritten_posts_by_digest(tmp_path: Path) -> None:
    """After `mirror rewrite` a post names an object by local URL; the gallery still links it."""
    blog = make_blog(tmp_path)
    assert ExitStatus.OK == main(["rewrite", "--store", str(blog.store), str(blog.posts)])
    sha = blog.mirrored[_src("mixed.example", "0.jpg")]
    assert (
        f"![m](/mirror/{sha[:2]}/{sha}.png)" == (blog.posts / "one.md").read_text().split("\n")[4]
    )
    page = run_report(blog)
    figure = page.split(f'data-sha256="{sha}"')[1].split("</figure>")[0]
    assert '<a href="../source/_posts/one.md#L5">one.md:5</a>' in figure


def test_report_escapes_hostile_urls_and_reasons(tmp_path: Path) -> None:
    """A URL or reason holding markup shows as text; the page gains no element or attribute."""
    page = run_report(make_blog(tmp_path))
    assert "<script" not in page
    assert "<b " not in page
    assert (
        "<code>http://x.example/&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;.jpg</code>" in page
    )
    assert "&lt;b onmouseover=alert(2)&gt;http-599&lt;/b&gt;" in page
    assert {"script", "b"}.isdisjoint(tag for tag, _ in tags(page))
    assert not [a for _, attrs in tags(page) for a in attrs if a.startswith("on")]
    odd_name = '<a href="../source/_posts/%3Ci%3E%22q%22.md#L1">&lt;i&gt;&quot;q&quot;.md:1</a>'
    assert odd_name in page
    hostile = page.split("&lt;/script&gt;.jpg</code>", 1)[1].split("</tr>")[0]
    assert '<a href="../source/_posts/sub%20dir/two%20%232.md#L5">' in hostile


def test_report_refers_to_nothing_remote(tmp_path: Path) -> None:
    """Every src is a data: URI and every href relative; a CSP forbids anything else."""
    page = run_report(make_blog(tmp_path))
    for tag, attrs in tags(page):
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is None:
                continue
            assert not re.match(r"[a-z][a-z0-9+.-]*:", value) or value.startswith("data:"), tag
            assert not value.startswith("//"), tag
    assert "default-src &#x27;none&#x27;; img-src data:" in page


def test_report_without_paths_still_renders(tmp_path: Path) -> None:
    """Without PATH the page shows everything from the manifest, just no post links."""
    page = run_report(make_blog(tmp_path), paths=False)
    assert 5 == total(page, "failed")
    assert 3 == page.count('<img loading="lazy"')
    assert '<a href="../' not in page
    assert "No posts were scanned" in page


def test_report_gallery_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--gallery N shows N thumbnails and says how many were left out; a negative N is usage."""
    blog = make_blog(tmp_path, images=5)
    page = run_report(blog, "--gallery", "2")
    assert 2 == page.count('<img loading="lazy"')
    assert "2 of 5 mirrored objects, oldest first; 3 left out" in page
    assert ExitStatus.USAGE == main(["report", "--html", str(blog.html), "--gallery", "-1"])
    assert "--gallery" in capsys.readouterr().err


def test_report_missing_manifest_is_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store without a manifest exits 2 with a message naming it, and writes nothing."""
    out = tmp_path / "r.html"
    argv = ["report", "--html", str(out), "--store", str(tmp_path / "none")]
    assert ExitStatus.USAGE == main(argv)
    assert "no manifest at" in capsys.readouterr().err
    assert not out.exists()
    assert ExitStatus.USAGE == main(["report", str(tmp_path)])  # --html is required


def test_report_missing_object_is_shown(tmp_path: Path) -> None:
    """An object whose file is gone shows as such instead of a broken image."""
    blog = make_blog(tmp_path)
    sha = blog.mirrored[_src("good.example", "1.jpg")]
    object_file(blog.store, sha, "jpg").unlink()
    page = run_report(blog)
    assert 2 == page.count('<img loading="lazy"')
    assert "missing from the store" in page


@pytest.mark.parametrize(
    ("mode", "size"), [("RGB", (1600, 900)), ("RGBA", (90, 400)), ("P", (30, 20)), ("L", (5, 5))]
)
def test_thumbnail_is_a_small_jpeg(mode: str, size: tuple[int, int]) -> None:
    """Any readable image becomes a JPEG at most 160 px on its longer side, aspect kept."""
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG", **({"transparency": 0} if mode == "P" else {}))
    thumb = thumbnail(out.getvalue())
    assert thumb is not None
    with Image.open(io.BytesIO(thumb.jpeg)) as image:
        assert ("JPEG", (thumb.width, thumb.height)) == (image.format, image.size)
    assert max(size) <= 160 or 160 == max(thumb.width, thumb.height)
    assert abs(size[0] / size[1] - thumb.width / thumb.height) < 0.15
    assert thumbnail(b"<html>not an image</html>") is None


# The real browser: Debian's chromium driven by chromedriver, the page served from 127.0.0.1.

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
    # Any name the page might try resolves nowhere, so a remote reference fails loudly.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium, or a skip naming the Debian packages it needs."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given means Selenium Manager (which would download drivers) never runs.
    service = webdriver.ChromeService(
        executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def decoded(driver: Any, image: Any) -> bool:
    """Tell whether the browser has loaded ``image`` and decoded it to real pixels."""
    script = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    return bool(driver.execute_script(script, image))


@pytest.mark.slow
def test_report_in_headless_chromium(
    tmp_path: Path, browser: Any, http_root: tuple[Path, str]
) -> None:
    """The page loads without console errors, every thumbnail decodes, and it renders pixels."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    blog = make_blog(tmp_path, images=24)
    root, base = http_root
    blog.html = root / "report.html"
    run_report(blog)
    browser.get(base + "report.html")
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    images = browser.find_elements(By.CSS_SELECTOR, "#gallery img")
    assert 24 == len(images)
    for image in images:
        # loading=lazy: an image decodes only once it nears the viewport.
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
        WebDriverWait(browser, 10).until(functools.partial(decoded, image=image))
    assert 0 == browser.execute_script("return document.scripts.length")
    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert
    hostile = browser.find_element(By.XPATH, "//code[contains(., '<script>alert(1)</script>')]")
    assert HOSTILE == hostile.text
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert [] == severe
    with Image.open(io.BytesIO(browser.get_screenshot_as_png())) as shot:
        # More than one colour: not a blank page (getcolors returns None past maxcolors).
        assert shot.convert("RGB").getcolors(maxcolors=1) is None


def test_report_reads_the_same_page_from_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The same rows in either backend make the same page (report_rows, no SQL of its own)."""
    pages = []
    for name, url in (("sqlite", ""), ("postgresql", pg_url)):
        blog = make_blog(tmp_path / name, manifest_url=url)
        config = tmp_path / name / "config.toml"
        manifest = f"[manifest]\nurl = '{url}'\n" if url else ""
        config.write_text(f"[store]\nurl = '{blog.store}'\n{manifest}", encoding="utf-8")
        argv = ["report", "--html", str(blog.html), "--config", str(config), str(blog.posts)]
        assert ExitStatus.OK == main(argv)
        page = blog.html.read_text(encoding="utf-8").replace(str(tmp_path / name), "ROOT")
        pages.append(re.sub(r"generated [0-9: -]+UTC", "generated NOW", page))
    assert (3, 5, 3) == tuple(total(pages[1], n) for n in ("mirrored", "failed", "objects"))
    assert pages[0] == pages[1]


def test_report_shows_via_fetched_from_and_details(tmp_path: Path) -> None:
    """An image shows how it was found and the URL that delivered it; each attempt its detail."""
    blog = make_blog(tmp_path)
    capture = "https://web.archive.org/web/20220129101500id_/http://lost.example/img/w.jpg"
    rescued = dataclasses.replace(
        _object(blog.store, make_image("PNG", (90, 70)), "png", "http://lost.example/img/w.jpg"),
        via="wayback",
        fetched_from=capture,
    )
    attempts = (
        Attempt("origin", _src("gone.example", "g.jpg"), "dns", "cannot resolve gone.example"),
        Attempt("proxy", W + _src("gone.example", "g.jpg"), "http-403", "HTTP 403 <Forbidden>"),
    )
    failed = SourceResult(_src("gone.example", "g.jpg"), "failed", reason="dns", attempts=attempts)
    with Manifest(manifest_path(blog.store)) as manifest:
        manifest.record_results([rescued, failed])
    page = run_report(blog)
    figure = page.split(f'data-sha256="{rescued.sha256}"')[1].split("</figure>")[0]
    assert (
        f'via <span class="via">wayback</span> from <code class="from">{capture}</code>' in figure
    )
    row = page.split(f"<code>{_src('gone.example', 'g.jpg')}</code>", 1)[1].split("</tr>")[0]
    assert 'origin: dns <span class="detail">(cannot resolve gone.example)</span>' in row
    assert 'proxy: http-403 <span class="detail">(HTTP 403 &lt;Forbidden&gt;)</span>' in row
