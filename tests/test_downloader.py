"""
What a download says about itself: attempts with details, ``via`` and ``fetched_from``, and the
``-v`` / ``-q`` lines, through ``mirror fetch`` against a real local origin and proxy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import FakeResolver, make_image, threaded_server

from mirror.cli import main
from mirror.config import Config
from mirror.downloader import Context, Downloader
from mirror.errors import ExitStatus
from mirror.fetch import Fetcher
from mirror.manifest import Manifest, SQLiteManifest, manifest_path
from mirror.store.local import FolderStore

WRAP = "http://proxy.example/?"
PNG = make_image("PNG", (60, 40))


@pytest.fixture
def port() -> Iterator[int]:
    """origin.example answers 500 on /flaky, 403 on /deny, the image on /img; the proxy 403s."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.host.split(":")[0] == "proxy.example":
            if "moved" in request.query_string:
                raise web.HTTPFound("http://origin.example/img/final.png")
            return web.Response(status=403, text="hotlinking")
        if request.path.startswith("/flaky"):
            return web.Response(status=500)
        if request.path.startswith("/img"):
            return web.Response(body=PNG, content_type="image/png")
        return web.Response(status=403)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    with threaded_server(app) as found:
        yield found


def setup(tmp_path: Path, port: int, *paths: str) -> list[str]:
    posts = tmp_path / "posts"
    posts.mkdir()
    body = "".join(f'<img src="{WRAP}http://origin.example{p}">\n' for p in paths)
    (posts / "a.md").write_text(f"---\ntitle: a\n---\n{body}", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(
        "[scan]\nwrappers = ['^http://proxy\\.example/\\?(?P<url>.+)$']\n"
        "[fetch]\nbackoff_initial = 0.0\nattempts = 2\n"
        "[network]\n"
        f"connect_to = ['origin.example:80:127.0.0.1:{port}',"
        f" 'proxy.example:80:127.0.0.1:{port}']\n"
        f"[store]\npath = '{tmp_path / 'cache'}'\n",
        encoding="utf-8",
    )
    return ["--config", str(config), str(posts)]


def report_rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_attempts_carry_their_details_in_report_and_manifest(tmp_path: Path, port: int) -> None:
    """Each failed try keeps its reason and a short detail, in the JSON report and the manifest."""
    report = tmp_path / "r.jsonl"
    args = setup(tmp_path, port, "/flaky/a.png")
    assert ExitStatus.INCOMPLETE == main(["fetch", "-q", "--report", str(report), *args])
    (row,) = report_rows(report)
    expected = [
        {
            "source": "origin",
            "url": "http://origin.example/flaky/a.png",
            "outcome": "http-500",
            "detail": "HTTP 500 Internal Server Error",
        },
        {
            "source": "proxy",
            "url": f"{WRAP}http://origin.example/flaky/a.png",
            "outcome": "http-403",
            "detail": "HTTP 403 Forbidden",
        },
    ]
    assert expected == row["attempts"]
    assert (None, None) == (row["via"], row["fetched_from"])
    with Manifest(manifest_path(tmp_path / "cache"), readonly=True) as manifest:
        stored = manifest.get("http://origin.example/flaky/a.png")
    assert stored is not None
    assert ["HTTP 500 Internal Server Error", "HTTP 403 Forbidden"] == [
        a.detail for a in stored.attempts
    ]


def test_verbose_logs_one_line_per_failed_source_and_per_retry(
    tmp_path: Path, port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """-v: one line per failed try (host, reason, detail) and one per retry; -q: none of them."""
    args = setup(tmp_path, port, "/flaky/a.png")
    assert ExitStatus.INCOMPLETE == main(["fetch", "-v", *args])
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if " failed: host=" in line]
    assert [
        "mirror: INFO: origin failed: host=origin.example reason=http-500 "
        "detail=HTTP 500 Internal Server Error url=http://origin.example/flaky/a.png",
        "mirror: INFO: proxy failed: host=proxy.example reason=http-403 "
        f"detail=HTTP 403 Forbidden url={WRAP}http://origin.example/flaky/a.png",
    ] == failed
    retries = [line for line in err.splitlines() if "INFO: retry " in line]
    assert 1 == len(retries)
    assert "url=http://origin.example/flaky/a.png reason=http-500" in retries[0]
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    assert ExitStatus.INCOMPLETE == main(["fetch", "-q", *setup(quiet, port, "/flaky/b.png")])
    assert "INFO" not in capsys.readouterr().err


def test_via_and_fetched_from_after_a_redirect(tmp_path: Path, port: int) -> None:
    """via names the source that delivered; fetched_from is the URL after its redirect."""
    report = tmp_path / "r.jsonl"
    args = setup(tmp_path, port, "/deny/moved.png")
    assert ExitStatus.OK == main(["fetch", "-q", "--report", str(report), *args])
    (row,) = report_rows(report)
    assert ("proxy", "http://origin.example/img/final.png") == (row["via"], row["fetched_from"])


async def test_a_dns_failure_is_recorded_with_the_name(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    """An origin that does not resolve is attempt outcome dns, detail 'cannot resolve NAME'."""
    config = make_config(attempts=1)
    (tmp_path / "cache").mkdir()
    store = FolderStore(tmp_path / "cache")
    async with (
        SQLiteManifest(manifest_path(tmp_path / "cache")) as manifest,
        store,
        Fetcher(config, resolver=FakeResolver({})) as fetcher,
    ):
        downloader = Downloader(config, fetcher, store, manifest)
        outcome = await downloader.download(
            "http://img.gone.example/a.png", [], Context(), {}, names=("origin",)
        )
    assert ("failed", "dns") == (outcome.status, outcome.reason)
    assert [("dns", "cannot resolve img.gone.example")] == [
        (a.outcome, a.detail) for a in outcome.attempts
    ]
