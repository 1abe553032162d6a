"""
The users' own acceptance test: a Hexo blog built from mirror's rewritten posts shows every
mirrored image in a real browser while the proxy and every origin are unreachable.

`mirror demo` runs the whole job on the bundled example posts against its local origin; the posts
it rewrote are built by real Hexo 8 (tests/hexo_site.py) next to a build of the original posts,
and every post page is opened in Debian's Chromium, which reaches nothing but 127.0.0.1
(tests/browser.py). The objects reach the site the two ways the README gives: exported into
`source/mirror` (published with the site), or uploaded to an S3 bucket that serves them itself.
The last test is the several-machines path: `mirror run --workers 2` over PostgreSQL, its
workers writing straight into the bucket, and the blog built from what it rewrote.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import ImageState, page_images
from hexo_site import SiteBuilder, article_html, post_pages, static_site
from s3_server import S3Bucket

from mirror.cli import main
from mirror.config import load_config
from mirror.demo import EXAMPLES, demo_origin
from mirror.errors import ExitStatus

CHECKOUT = Path(__file__).resolve().parent.parent
# The first test to build a site pays for `npm ci`.
pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]
# Where a reference is the image the page shows (a data-original twin or a link is not).
_SHOWN = frozenset({"img@src", "markdown"})


@dataclass(frozen=True)
class Job:
    """What `mirror demo` left: the rewritten posts, the store and the per-reference report."""

    posts: Path
    store: Path
    rows: list[dict[str, Any]]

    @property
    def local_urls(self) -> set[str]:
        """The URLs the rewritten posts now name, one per mirrored reference."""
        return {row["local_url"] for row in self.rows if row["local_url"]}

    @property
    def not_mirrored(self) -> set[str]:
        """The URLs, as written, of references mirror reports as not mirrored."""
        return {row["url"] for row in self.rows if row["status"] != "mirrored"}

    def replacements(self) -> dict[str, str]:
        """URL as the original post writes it (and HTML-escaped) -> what the rewrite wrote."""
        found: dict[str, str] = {}
        for row in self.rows:
            if row["local_url"]:
                found[row["url"]] = row["local_url"]
                found[html.escape(row["url"], quote=False)] = row["local_url"]
        return found


def run_demo(tmp_path: Path, *extra: str) -> Job:
    """Run `mirror demo` into tmp_path (against its bundled local origin) and read its report."""
    work = tmp_path / "demo"
    assert ExitStatus.OK == main(["demo", "--dir", str(work), "-q", *extra])
    lines = (work / "report.jsonl").read_text(encoding="utf-8").splitlines()
    return Job(work / "posts", work / "cache", [json.loads(line) for line in lines])


class PageCount(Counter[str]):
    """A page's images by how they ended, and the sources of those that loaded."""

    loaded_srcs: set[str | None]


def check_page(job: Job, states: list[ImageState]) -> PageCount:
    """Assert the page's images are what the report says; count them, noting what loaded."""
    seen = PageCount()
    seen.loaded_srcs = {state.src for state in states if state.loaded}
    for state in states:
        mirrored = state.src in job.local_urls
        if mirrored:
            seen["mirrored"] += 1
            assert state.loaded, f"a mirrored image does not load: {state}"
            seen["loaded"] += 1
        elif state.loaded:
            seen["loaded"] += 1
        elif state.in_code:
            seen["in code"] += 1
        elif state.src in job.not_mirrored:
            seen["reported not mirrored"] += 1
        else:
            # Never wrapped: a raw origin URL mirror was not asked to act on (it stays as written).
            assert state.src is not None
            assert not state.src.startswith("/mirror/"), f"a local URL that does not load: {state}"
            assert "workers.dev" not in state.src, f"a wrapped URL mirror did not report: {state}"
            seen["never wrapped"] += 1
    return seen


def check_blog(
    job: Job, original: Path, rewritten: Path, browser: Any, base_url: str
) -> dict[str, PageCount]:
    """Open every post page; compare each article with the original build's but for URLs."""
    pages = post_pages(rewritten)
    assert post_pages(original) == pages
    assert len(pages) >= 7
    counts: dict[str, PageCount] = {}
    for page in pages:
        expected = article_html(original, page)
        # Longest first, so a URL that is a prefix of another never splits it.
        for old, new in sorted(job.replacements().items(), key=lambda kv: -len(kv[0])):
            expected = expected.replace(old, new)
        assert expected == article_html(rewritten, page), page
        counts[page] = check_page(job, page_images(browser, base_url + page.lstrip("/")))
    return counts


def assert_every_shown(job: Job, counts: dict[str, PageCount]) -> None:
    """Every mirrored <img src> and Markdown image the report lists loaded on some page."""
    shown = set().union(*(c.loaded_srcs for c in counts.values()))
    images = {r["local_url"] for r in job.rows if r["local_url"] and r["where"] in _SHOWN}
    assert images <= shown, images - shown
    lines = [f"  {page}: {dict(c)}" for page, c in counts.items()]
    print(f"\n{len(images)} mirrored images, all shown; per page:", *lines, sep="\n")


def keep_counts(tmp_path: Path, counts: dict[str, PageCount]) -> Path:
    """Write the per-page counts to a file that outlives the run, whatever -s says."""
    lines = [
        f"{page}: loaded {c['loaded']} / mirrored {c['mirrored']}" for page, c in counts.items()
    ]
    path = tmp_path / "page-counts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_hexo_blog_shows_every_mirrored_image_from_its_own_site(
    build_site: SiteBuilder, browser: Any, tmp_path: Path
) -> None:
    """Objects exported into source/mirror are published by hexo; every mirrored image loads."""
    job = run_demo(tmp_path)
    objects = tmp_path / "site-mirror"
    export = ["export", "--store", str(job.store), str(objects), str(job.posts)]
    assert ExitStatus.OK == main(export)
    original = build_site(EXAMPLES / "posts")
    rewritten = build_site(job.posts, {"mirror": objects})
    # `hexo generate` publishes source/mirror/<ab>/<sha256>.<ext> at /mirror/<ab>/...
    for url in job.local_urls:
        assert (rewritten / url.lstrip("/")).is_file(), url
    with static_site(rewritten) as site:
        counts = check_blog(job, original, rewritten, browser, site.base_url)
    assert_every_shown(job, counts)
    keep_counts(tmp_path, counts)


def test_a_hexo_blog_shows_every_mirrored_image_from_an_s3_bucket(
    build_site: SiteBuilder, browser: Any, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """Objects synced to a public-read bucket, posts rewritten at its URL: every image loads."""
    asyncio.run(s3_bucket.create())
    public = f"{s3_bucket.endpoint}/{s3_bucket.name}/"
    config = tmp_path / "s3.toml"
    config.write_text(
        f'[store]\nurl = "s3://{s3_bucket.name}/blog"\n'
        f'[store.s3]\nendpoint_url = "{s3_bucket.endpoint}"\naddressing = "path"\n'
        f'public_url = "{public}"\nacl = "public-read"\n',
        encoding="utf-8",
    )
    # rewrite.base_url defaults to the bucket's public base; the demo (a local store) is told it.
    base_url = load_config(config).base_url
    assert f"{public}blog/" == base_url
    demo_config = tmp_path / "demo.toml"
    demo_config.write_text(f'[rewrite]\nbase_url = "{base_url}"\n', encoding="utf-8")
    job = run_demo(tmp_path, "--config", str(demo_config))
    assert job.local_urls
    assert all(url.startswith(base_url) for url in job.local_urls)
    assert ExitStatus.OK == main(
        ["sync", "-c", str(config), str(job.store), f"s3://{s3_bucket.name}/blog"]
    )
    asyncio.run(_assert_public_read(s3_bucket, len({url for url in job.local_urls})))
    original = build_site(EXAMPLES / "posts")
    rewritten = build_site(job.posts)
    assert not (rewritten / "mirror").exists()
    with static_site(rewritten) as site:
        counts = check_blog(job, original, rewritten, browser, site.base_url)
    assert_every_shown(job, counts)
    keep_counts(tmp_path, counts)


async def _assert_public_read(bucket: S3Bucket, objects: int) -> None:
    """Every object under blog/ is there and readable by anyone (a public-read grant)."""
    async with bucket.client() as client:
        listing = await client.list_objects_v2(Bucket=bucket.name, Prefix="blog/")
        keys = [item["Key"] for item in listing.get("Contents", [])]
        assert objects == len(keys), keys
        for key in keys:
            acl = await client.get_object_acl(Bucket=bucket.name, Key=key)
            grants = {(g["Grantee"].get("URI", ""), g["Permission"]) for g in acl["Grants"]}
            assert ("http://acs.amazonaws.com/groups/global/AllUsers", "READ") in grants, key


def test_a_hexo_blog_shows_every_image_two_queue_workers_put_in_a_bucket(
    build_site: SiteBuilder, browser: Any, s3_bucket: S3Bucket, pg_url: str, tmp_path: Path
) -> None:
    """
    `mirror run --workers 2` over PostgreSQL, objects uploaded by its workers to a public-read
    bucket: the same references end the same way as in the demo's plain run, and the blog
    built from the posts it rewrote shows every mirrored image.
    """
    plain = run_demo(tmp_path)
    asyncio.run(s3_bucket.create())
    public = f"{s3_bucket.endpoint}/{s3_bucket.name}/"
    posts = tmp_path / "cluster" / "posts"
    shutil.copytree(EXAMPLES / "posts", posts)
    report = tmp_path / "cluster" / "report.jsonl"
    config = tmp_path / "cluster.toml"

    async def cluster_run() -> tuple[int, bytes]:
        async with demo_origin(EXAMPLES / "origin") as origin:
            config.write_text(
                f'[manifest]\nurl = "{pg_url}"\n'
                f'[store]\nurl = "s3://{s3_bucket.name}/blog"\n'
                f'staging = "{tmp_path / "staging"}"\n'
                f'[store.s3]\nendpoint_url = "{s3_bucket.endpoint}"\naddressing = "path"\n'
                f'public_url = "{public}"\nacl = "public-read"\n'
                f"[network]\nconnect_to = {json.dumps(list(origin.connect_to))}\n"
                f'cacert = "{origin.cacert}"\n',
                encoding="utf-8",
            )
            run = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "mirror", "run", "--workers", "2", "-q", "-c"),
                *(str(config), "--report", str(report), str(posts)),
                env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                # The origin answers on this loop while the run goes on.
                _, err = await asyncio.wait_for(run.communicate(), 300)
            finally:
                if run.returncode is None:
                    run.kill()
                    await run.communicate()
            assert run.returncode is not None
            return run.returncode, err

    status, err = asyncio.run(cluster_run())
    assert ExitStatus.INCOMPLETE == status, err  # the faulty images, as in the demo
    rows = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    job = Job(posts, tmp_path / "staging", rows)
    assert {(r["url"], r["where"], r["status"], r["reason"]) for r in plain.rows} == {
        (r["url"], r["where"], r["status"], r["reason"]) for r in rows
    }
    assert job.local_urls
    assert all(url.startswith(f"{public}blog/") for url in job.local_urls)
    asyncio.run(_assert_public_read(s3_bucket, len({r["sha256"] for r in rows if r["local_url"]})))
    original = build_site(EXAMPLES / "posts")
    rewritten = build_site(posts)
    with static_site(rewritten) as site:
        counts = check_blog(job, original, rewritten, browser, site.base_url)
    assert_every_shown(job, counts)
    keep_counts(tmp_path, counts)
