"""
`mirror run` on wrapper URLs in Markdown text, front matter lists and Markdown links, end to end.

A local origin serves the images (by Host, through --connect-to-style config); the posts are in
tmp_path. A reference in text is rewritten only to an absolute URL (an absolute base_url, or
site_url in front of a relative one); otherwise it stays as written and the report says why.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import threaded_server
from PIL import Image

from mirror.cli import main
from mirror.errors import ExitStatus

WRAP = "http://proxy.example/?"


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (60, 40), (20, 130, 90)).save(out, "JPEG")
    return out.getvalue()


JPEG = _jpeg()


@pytest.fixture
def origin_port() -> Iterator[int]:
    """Serve the same JPEG for every path of origin.example on a local port."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=JPEG, content_type="image/jpeg")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    with threaded_server(app) as port:
        yield port


def post_text() -> str:
    """A post in the corpus's style with a text URL, a photos list and a linked image."""
    return (
        "\n---\ntitle: 't'\nphotos:\n"
        f"  - '{WRAP}http://origin.example/p.jpg'\n---\n\n"
        f"Full size: {WRAP}http://origin.example/t.jpg.  \n\n"
        f"[![a]({WRAP}http://origin.example/thumb.jpg)]({WRAP}http://origin.example/full.jpg)\n"
        "            "
    )


def run(tmp_path: Path, port: int, rewrite: str) -> tuple[Path, list[dict[str, object]], int]:
    """Write the post and a config, `mirror run` with a report; return (post, rows, status)."""
    posts = tmp_path / "posts"
    posts.mkdir(exist_ok=True)
    post = posts / "a.md"
    post.write_text(post_text(), encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(
        "[scan]\nwrappers = ['^http://proxy\\.example/\\?(?P<url>.+)$']\n"
        f"[rewrite]\n{rewrite}\n"
        "[fetch]\nbackoff_initial = 0.0\nattempts = 1\n"
        f"[network]\nconnect_to = ['origin.example:80:127.0.0.1:{port}']\n"
        f"[store]\npath = '{tmp_path / 'cache'}'\n",
        encoding="utf-8",
    )
    report = tmp_path / "report.jsonl"
    status = main(["run", "--config", str(config), "--report", str(report), str(posts)])
    rows = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    return post, rows, status


def by_where(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(row["where"]): row for row in rows}


def test_text_reference_without_an_absolute_url_stays_and_says_why(
    tmp_path: Path, origin_port: int
) -> None:
    """With a relative base_url and no site_url the text URL stays; its row has its own reason."""
    post, rows, status = run(tmp_path, origin_port, "")
    assert ExitStatus.OK == status
    rows_by_where = by_where(rows)
    assert {"front-matter:photos", "text", "markdown", "markdown-link"} == set(rows_by_where)
    text_row = rows_by_where["text"]
    assert ("mirrored", "text-needs-absolute-url", None) == (
        text_row["status"],
        text_row["reason"],
        text_row["local_url"],
    )
    after = post.read_text(encoding="utf-8")
    assert f"Full size: {WRAP}http://origin.example/t.jpg.  \n" in after
    sha = str(rows_by_where["front-matter:photos"]["sha256"])
    local = f"/mirror/{sha[:2]}/{sha}.jpg"
    assert after == post_text().replace(f"{WRAP}http://origin.example/p.jpg", local).replace(
        f"{WRAP}http://origin.example/thumb.jpg", local
    ).replace(f"{WRAP}http://origin.example/full.jpg", local)
    for where in ("front-matter:photos", "markdown", "markdown-link"):
        assert (local, None) == (rows_by_where[where]["local_url"], rows_by_where[where]["reason"])


def test_text_reference_rewritten_against_site_url_and_reverted(
    tmp_path: Path, origin_port: int
) -> None:
    """site_url makes the text URL absolute; `rewrite --revert` restores the post's bytes."""
    post, rows, status = run(tmp_path, origin_port, 'site_url = "https://blog.example.com/"')
    assert ExitStatus.OK == status
    text_row = by_where(rows)["text"]
    sha = str(text_row["sha256"])
    absolute = f"https://blog.example.com/mirror/{sha[:2]}/{sha}.jpg"
    assert (None, absolute) == (text_row["reason"], text_row["local_url"])
    assert f"Full size: {absolute}.  \n" in post.read_text(encoding="utf-8")
    config = tmp_path / "config.toml"
    revert = ["rewrite", "--revert", "--config", str(config), str(post.parent)]
    assert ExitStatus.OK == main(revert)
    assert post_text() == post.read_text(encoding="utf-8")


def test_text_reference_rewritten_to_an_absolute_base_url(tmp_path: Path, origin_port: int) -> None:
    """An absolute base_url needs no site_url: the text URL points at the copy."""
    base = "https://cdn.example.com/m/"
    post, rows, status = run(tmp_path, origin_port, f'base_url = "{base}"')
    assert ExitStatus.OK == status
    text_row = by_where(rows)["text"]
    sha = str(text_row["sha256"])
    assert f"{base}{sha[:2]}/{sha}.jpg" == text_row["local_url"]
    assert f"Full size: {base}{sha[:2]}/{sha}.jpg.  \n" in post.read_text(encoding="utf-8")


def test_site_url_must_be_absolute(tmp_path: Path) -> None:
    """A site_url that is not an absolute http(s) URL is a config error naming the key."""
    config = tmp_path / "config.toml"
    config.write_text('[rewrite]\nsite_url = "/blog/"\n', encoding="utf-8")
    posts = tmp_path / "posts"
    posts.mkdir()
    assert ExitStatus.USAGE == main(["scan", "--config", str(config), str(posts)])
