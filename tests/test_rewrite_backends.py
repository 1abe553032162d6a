"""
``mirror rewrite`` and ``mirror rewrite --revert`` from the manifest, on SQLite and on PostgreSQL:
the step a cluster's job runs on the blog's machine once workers filled the shared manifest.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from mirror.cli import main
from mirror.config import Config, ManifestConfig, StoreConfig
from mirror.errors import ExitStatus
from mirror.lock import LockedError
from mirror.manifest import SourceResult, open_manifest

PROXY = "https://cors.zfour.workers.dev/?"
SOURCE = "http://static.1sapp.com/qupost/img/2022/01/31/0743.jpeg"
GONE = "http://static.1sapp.com/qupost/img/2022/01/31/gone.jpeg"
SHA = hashlib.sha256(b"the image").hexdigest()
POST = f"""---
title: a post
headimg: '{PROXY}{SOURCE}'
---
<p><img src="{PROXY}{SOURCE}" data-size="550,412"></p>
<p><img src="{PROXY}{GONE}" data-size="10,10"></p>
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def manifest_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The manifest each case runs over: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'manifest.sqlite3'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def write_config(tmp_path: Path, manifest_url: str) -> Path:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[rewrite]\nbase_url = "/mirror/"\n[store]\nurl = "{store}"\n'
        f'[manifest]\nurl = "{manifest_url}"\n',
        encoding="utf-8",
    )
    return path


def config_of(tmp_path: Path, manifest_url: str) -> Config:
    store = StoreConfig(url=str(tmp_path / "store"))
    return Config(store=store, manifest=ManifestConfig(url=manifest_url))  # base_url is unused


async def fill(config: Config) -> None:
    """What workers leave behind: one source mirrored, one failed."""
    async with open_manifest(config) as manifest:
        await manifest.record_results(
            [
                SourceResult(SOURCE, "mirrored", sha256=SHA, ext="jpeg", size=9),
                SourceResult(GONE, "failed", reason="http-404"),
            ]
        )


def test_rewrite_from_the_manifest_then_revert_byte_for_byte(
    tmp_path: Path, manifest_url: str
) -> None:
    """The mirrored source points at its object; --revert puts the post back as it was."""
    conf = write_config(tmp_path, manifest_url)
    asyncio.run(fill(config_of(tmp_path, manifest_url)))
    posts = tmp_path / "posts"
    posts.mkdir()
    post = posts / "a.md"
    post.write_text(POST, encoding="utf-8")
    assert ExitStatus.OK == main(["rewrite", "--config", str(conf), str(posts)])
    text = post.read_text(encoding="utf-8")
    assert f"/mirror/{SHA[:2]}/{SHA}.jpeg" in text
    assert PROXY + SOURCE not in text
    assert PROXY + GONE in text  # a failed source stays as it was
    assert ExitStatus.OK == main(["rewrite", "--revert", "--config", str(conf), str(posts)])
    assert POST == post.read_text(encoding="utf-8")


def test_rewrite_with_no_manifest_yet_names_it(
    tmp_path: Path, manifest_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty database (or no file) is a usage error naming the manifest, not a new schema."""
    conf = write_config(tmp_path, manifest_url)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(POST, encoding="utf-8")
    assert ExitStatus.USAGE == main(["rewrite", "--config", str(conf), str(posts)])
    err = capsys.readouterr().err
    assert "no manifest at" in err
    assert manifest_url.removeprefix("sqlite://").split("@")[-1] in err
    assert POST == (posts / "a.md").read_text(encoding="utf-8")


async def test_a_second_rewrite_is_refused_while_another_holds_the_lock(
    tmp_path: Path, manifest_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store lock is the manifest's: an flock beside SQLite, an advisory lock on PostgreSQL."""
    conf = write_config(tmp_path, manifest_url)
    config = config_of(tmp_path, manifest_url)
    await fill(config)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text(POST, encoding="utf-8")
    async with open_manifest(config) as manifest, manifest.lock("mirror run (the other one)"):
        argv = ["rewrite", "--config", str(conf), str(posts)]
        status = await asyncio.to_thread(main, argv)
    assert LockedError.exit_status == status
    assert "mirror run (the other one)" in capsys.readouterr().err
    assert POST == (posts / "a.md").read_text(encoding="utf-8")
