"""The demo origin: example files by Host and path, the faults, the fake proxy, TLS, no escapes."""

from __future__ import annotations

import asyncio
import csv
import io
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from yarl import URL

from mirror.cli import main
from mirror.config import parse_connect_to
from mirror.demo import EXAMPLES as PACKAGED
from mirror.demo import DemoOrigin, demo_origin
from mirror.errors import ExitStatus

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "mirror" / "examples"
ORIGIN = EXAMPLES / "origin"
PROXY = "cors.zfour.workers.dev"
QTT = "static.1sapp.example"
JANDAN_PATH = "/news/2018/10/a531148d055b32dd4fd40e9dfb050a40.jpg!custom"
PLACEHOLDER_PATH = "/qupost/img/2022/01/09/9a1f0c2e7b3d4a5f8e6c1b2a3d4e5f60.jpeg"
JUEJIN_PATH = (
    "/tos-cn-i-k3u1fbpfcp/15df9372f0564604b7e1d57dd2534418"
    "~tplv-k3u1fbpfcp-zoom-in-crop-mark:4536:0:0:0.awebp"
)


@pytest.fixture
async def demo() -> AsyncIterator[DemoOrigin]:
    """The demo origin serving examples/origin."""
    async with demo_origin(ORIGIN) as origin:
        yield origin


async def get(
    origin: DemoOrigin, host: str, target: str, *, tls: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """GET the raw ``target`` from the demo as ``host``; status, headers and body."""
    port, scheme = (origin.https_port, "https") if tls else (origin.http_port, "http")
    url = URL(f"{scheme}://127.0.0.1:{port}{target}", encoded=True)
    context = ssl.create_default_context(cafile=str(origin.cacert))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url,
            headers={"Host": host},
            ssl=context if tls else False,
            server_hostname=host if tls else None,
        ) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def raw_get(origin: DemoOrigin, request: str) -> bytes:
    """The status line answering ``request``, sent byte for byte, unnormalised by any client."""
    reader, writer = await asyncio.open_connection("127.0.0.1", origin.http_port)
    writer.write(request.encode())
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data.split(b"\r\n", 1)[0]


def size_of(data: bytes) -> tuple[int, int]:
    """The pixel size of an encoded image."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def test_serves_the_file_for_host_and_path(demo: DemoOrigin) -> None:
    """An origin image comes back byte for byte, with a sniffed Content-Type."""
    status, headers, body = await get(
        demo, f"{QTT}:80", "/qupost/img/2022/01/09/5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b.png"
    )
    expected = (
        ORIGIN / QTT / "qupost/img/2022/01/09/5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b.png"
    ).read_bytes()
    assert (200, "image/png", expected) == (status, headers["Content-Type"], body)


async def test_odd_names_are_literal_files(demo: DemoOrigin) -> None:
    """``!custom``, ``~`` and ``:`` stay in the file name; extension-less and .awebp are sniffed."""
    _, jandan, _ = await get(demo, "img.jandan.example", JANDAN_PATH)
    _, juejin, body = await get(demo, "p9-juejin.byteimg.example", JUEJIN_PATH + "?")
    _, pmcaff, _ = await get(
        demo, "img.pmcaff.example", "/7d114f256632b5060aacd2ff1904084a-picture"
    )
    actual = (jandan["Content-Type"], juejin["Content-Type"], pmcaff["Content-Type"], size_of(body))
    assert ("image/jpeg", "image/webp", "image/gif", (1080, 720)) == actual


async def test_origin_serves_a_placeholder_of_another_size(demo: DemoOrigin) -> None:
    """The hotlinking fault: the origin answers 200 with a 200x200 image, not the 550x412 one."""
    status, _, body = await get(demo, QTT, PLACEHOLDER_PATH)
    assert (200, (200, 200)) == (status, size_of(body))


async def test_missing_image_is_404(demo: DemoOrigin) -> None:
    """The 404 fault: no file on the origin nor behind the proxy."""
    path = "/bmiddle/008kLiOyly1gsbx6bkchtg30a00a2tek.gif"
    origin_status, _, _ = await get(demo, "ww1.sinaimg.example", path)
    proxy_status, _, _ = await get(demo, PROXY, f"/?http://ww1.sinaimg.example{path}", tls=True)
    assert (404, 404) == (origin_status, proxy_status)


async def test_not_an_image_is_served_as_html(demo: DemoOrigin) -> None:
    """The not-an-image fault: a .png URL answers 200 with an HTML page."""
    path = "/uploads/article/20220314/f207eefd72cd572630cb8dbb6cfee9a1.png"
    status, headers, body = await get(demo, "dockone.example", path)
    assert (200, "text/html; charset=utf-8", b"<!DOCTYPE html>") == (
        status,
        headers["Content-Type"],
        body[:15],
    )


async def test_proxy_serves_the_real_image_for_a_raw_inner_url(demo: DemoOrigin) -> None:
    """``/?http://host/path`` over TLS: the proxy's correct copy, with CORS allowed."""
    status, headers, body = await get(demo, PROXY, f"/?http://{QTT}{PLACEHOLDER_PATH}", tls=True)
    expected = (ORIGIN / "_proxy" / QTT / PLACEHOLDER_PATH.lstrip("/")).read_bytes()
    actual = (status, headers["Access-Control-Allow-Origin"], size_of(body), body == expected)
    assert (200, "*", (550, 412), True) == actual


async def test_proxy_accepts_a_percent_encoded_inner_url(demo: DemoOrigin) -> None:
    """``/?http%3A%2F%2Fhost%2Fpath`` is decoded once and answers the same image."""
    encoded = f"http://{QTT}{PLACEHOLDER_PATH}".replace(":", "%3A").replace("/", "%2F")
    _, _, raw_body = await get(demo, PROXY, f"/?http://{QTT}{PLACEHOLDER_PATH}", tls=True)
    status, _, body = await get(demo, PROXY, f"/?{encoded}", tls=True)
    assert (200, raw_body) == (status, body)


async def test_proxy_falls_back_to_the_origin_file(demo: DemoOrigin) -> None:
    """Without a ``_proxy`` copy the proxy serves the origin's file, odd characters included."""
    _, _, origin_body = await get(demo, "img.jandan.example", JANDAN_PATH)
    status, _, body = await get(demo, PROXY, f"/?http://img.jandan.example{JANDAN_PATH}", tls=True)
    assert (200, origin_body) == (status, body)


@pytest.mark.parametrize(
    ("host", "target"),
    [
        (QTT, "/../tls/server-key.pem"),
        (QTT, "/qupost/../../tls/ca.pem"),
        (QTT, "/%2e%2e/tls/server-key.pem"),
        (QTT, "/qupost/..%2f..%2ftls/ca.pem"),
        ("tls", "/server-key.pem"),
        ("_proxy", f"/{QTT}{PLACEHOLDER_PATH}"),
        ("..", "/README.md"),
        (PROXY, f"/?http://{QTT}/../tls/server-key.pem"),
        (PROXY, f"/?http%3A%2F%2F{QTT}%2F..%2Ftls%2Fca.pem"),
        (PROXY, "/?http://tls/ca.pem"),
        (PROXY, "/?file:///etc/passwd"),
    ],
)
async def test_path_traversal_is_refused(demo: DemoOrigin, host: str, target: str) -> None:
    """Nothing outside a known host's folder is served, however the path is spelled."""
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    status_line = await raw_get(demo, request)
    assert status_line.split()[1] in (b"400", b"404")


async def test_connect_to_covers_every_example_host(demo: DemoOrigin) -> None:
    """Every IMAGES.tsv host and the proxy are mapped at :80 and :443 to the two local ports."""
    with (REPO / "examples" / "IMAGES.tsv").open(encoding="utf-8", newline="") as handle:
        hosts = {row["host"] for row in csv.DictReader(handle, delimiter="\t")} | {PROXY}
    expected = {(h, 80, demo.http_port) for h in hosts} | {(h, 443, demo.https_port) for h in hosts}
    entries = [parse_connect_to(entry) for entry in demo.connect_to]
    assert expected == {(e.host, e.port, e.to_port) for e in entries}
    assert {"127.0.0.1"} == {e.to_host for e in entries}


async def test_https_origin_host_verifies_against_the_demo_ca(demo: DemoOrigin) -> None:
    """A raw https:// example host (cnbeta) is served over TLS with a certificate for its name."""
    path = "/article/2022/0517/cc0e959020146b8.png"
    status, _, body = await get(demo, "static.cnbetacdn.example", path, tls=True)
    assert (200, (600, 400)) == (status, size_of(body))


async def test_request_without_host_is_404(demo: DemoOrigin) -> None:
    """An HTTP/1.0 request with no Host header names no example host (and resolves nothing)."""
    status_line = await raw_get(demo, "GET /README.md HTTP/1.0\r\n\r\n")
    assert b"HTTP/1.0 404 Not Found" == status_line


# --- the demo command: its folder, and its files as package data -------------------------------


def test_demo_refuses_a_folder_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mirror demo --dir X` on a non-empty folder with no demo marker exits 2; X is untouched."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.md").write_text("years of work", encoding="utf-8")
    assert ExitStatus.USAGE == main(["demo", "-q", "--dir", str(home)])
    assert f"--dir {home}: not empty" in capsys.readouterr().err
    assert ["thesis.md"] == [p.name for p in home.iterdir()]


def test_demo_twice_in_one_folder_keeps_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second demo in its folder replaces what the first made, and only that."""
    work = tmp_path / "demo"
    assert ExitStatus.OK == main(["demo", "-q", "--dir", str(work)])
    (work / "notes.txt").write_text("mine", encoding="utf-8")
    (work / "posts" / "extra.md").write_text("dropped: posts/ is the demo's", encoding="utf-8")
    assert ExitStatus.OK == main(["demo", "-q", "--dir", str(work)])
    assert "mine" == (work / "notes.txt").read_text(encoding="utf-8")
    assert not (work / "posts" / "extra.md").exists()
    assert (work / "cache" / "manifest.sqlite3").is_file()


def test_demo_dir_that_is_a_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dir afile exits 2 with a message, no traceback."""
    afile = tmp_path / "afile"
    afile.write_text("mine", encoding="utf-8")
    assert ExitStatus.USAGE == main(["demo", "-q", "--dir", str(afile)])
    err = capsys.readouterr().err
    assert (f"--dir {afile}: not a folder" in err, "Traceback" in err) == (True, False)
    assert "mine" == afile.read_text(encoding="utf-8")


def test_examples_are_package_data() -> None:
    """The demo reads its posts and origin from inside the package, and pyproject ships all."""
    import tomllib

    package = REPO / "mirror"
    assert (EXAMPLES, EXAMPLES) == (package / "examples", PACKAGED)
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]["package-data"]["mirror"]
    files = {p for p in EXAMPLES.rglob("*") if p.is_file()}
    assert 20 < len(files)
    # setuptools expands these as recursive globs from the package folder, as pathlib does.
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    assert set() == files - shipped
    assert {"posts", "origin"} == {p.name for p in EXAMPLES.iterdir()}
