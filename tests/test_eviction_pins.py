"""
Issue #13 row 1: serve's open-mode eviction never takes an object a running job publishes.

``serve --open`` and ``mirror run`` share one store. serve has cached an image as an open-mode
object no post names; a run then fetches a source whose bytes are that object, and the post
will name it before the run commits the sources row (rows are committed in batches). Both
interleavings are forced with hooks on the run's pin and commit, never with timing: an eviction
just after the run committed the object (the attack: it used to delete it), and one just before
the run pinned it (the run must write it again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import object_file

from mirror.cli import main
from mirror.config import Config, ServeConfig, StoreConfig
from mirror.errors import ExitStatus
from mirror.manifest import Manifest, manifest_path
from mirror.pipeline import Job
from mirror.serve import create_app

if TYPE_CHECKING:
    from conftest import Upstream

Client = TestClient[web.Request, web.Application]
WRAPPER = "https://cors.zfour.workers.dev/?"


def shared_config(upstream: Upstream, root: Path, budget: int) -> Config:
    """One store for serve (open mode, ``budget`` bytes of open-mode objects) and the run."""
    base = upstream.config(sources=("origin",))
    return dataclasses.replace(
        base,
        fetch=dataclasses.replace(base.fetch, jobs=1),
        store=StoreConfig(path=str(root)),
        serve=ServeConfig(open=True, max_store_bytes=budget),
    )


async def serve_client(aiohttp_client: Any, config: Config) -> Client:
    """A serve app over ``config``'s store, as ``mirror serve --open`` runs it."""
    client: Client = await aiohttp_client(create_app(config))
    return client


def hook(job: Job, when: str, evict: Callable[[], Awaitable[None]], calls: list[str]) -> None:
    """Run ``evict`` once, right after the run's commit or right before its pin."""
    if when == "after-commit":
        commit = job.store.commit

        async def committed(*args: Any, **kwargs: Any) -> Any:
            obj = await commit(*args, **kwargs)
            if not calls:
                calls.append(when)
                await evict()
            return obj

        job.store.commit = committed  # type: ignore[method-assign]
    else:
        pin = job._pin

        async def pinned(sha256: str) -> None:
            if not calls:
                calls.append(when)
                await evict()
            await pin(sha256)

        job._pin = pinned  # type: ignore[method-assign]


@pytest.mark.parametrize("when", ["after-commit", "before-pin"])
async def test_serve_never_evicts_an_object_a_run_is_publishing(
    when: str, upstream: Upstream, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Whichever comes first, the object the rewritten post names exists and verify is clean."""
    root = tmp_path / "cache"
    # Room for the JPEG alone: serving it makes the older PNG the one to evict.
    config = shared_config(upstream, root, budget=len(upstream.jpeg) + 10)
    client = await serve_client(aiohttp_client, config)
    assert 200 == (await client.get(f"/?{upstream.url('/img.png')}")).status
    png = hashlib.sha256(upstream.png).hexdigest()
    assert object_file(root, png, "png").is_file()

    posts = tmp_path / "posts"
    posts.mkdir()
    # Another URL with the same bytes: the run's object is the one serve cached.
    source = upstream.url("/img.png?from-a-post")
    (posts / "a.md").write_text(f'<img src="{WRAPPER}{source}">\n', encoding="utf-8")

    async def evict() -> None:
        # An open-mode miss over the budget: serve evicts right after recording it.
        assert 200 == (await client.get(f"/?{upstream.url('/img.jpg')}")).status

    job = Job(config, rewrite=True)
    calls: list[str] = []
    hook(job, when, evict, calls)
    summary = await job.run([posts])

    assert [when] == calls
    assert 1 == summary.rewritten
    assert f"/mirror/{png[:2]}/{png}.png" in (posts / "a.md").read_text(encoding="utf-8")
    assert object_file(root, png, "png").read_bytes() == upstream.png
    with Manifest(manifest_path(root), readonly=True) as manifest:
        assert ("mirrored", png) == (lambda r: (r.status, r.sha256))(manifest.get(source))
        assert [] == manifest.conn.execute("SELECT * FROM pins").fetchall()
    status = await asyncio.to_thread(main, ["verify", "--store", str(root)])
    assert ExitStatus.OK == status


async def test_an_evicted_object_no_post_names_is_gone_from_the_store(
    upstream: Upstream, tmp_path: Path, aiohttp_client: Any
) -> None:
    """The control: with no run publishing it, the same eviction does take the PNG."""
    root = tmp_path / "cache"
    config = shared_config(upstream, root, budget=len(upstream.jpeg) + 10)
    client = await serve_client(aiohttp_client, config)
    assert 200 == (await client.get(f"/?{upstream.url('/img.png')}")).status
    assert 200 == (await client.get(f"/?{upstream.url('/img.jpg')}")).status
    png = hashlib.sha256(upstream.png).hexdigest()
    assert not object_file(root, png, "png").exists()
