"""Store care on an S3 store (moto on 127.0.0.1): verify, gc --apply and export."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Bucket
from test_care import WRAP, Origin, image_n, origin, out_err, sha, src

from mirror.audit import STRAY_AGE, collect
from mirror.cli import main
from mirror.config import Config, load_config, with_manifest_beside
from mirror.errors import ExitStatus
from mirror.manifest import Manifest, SourceResult

__all__ = ["origin"]  # the fixture shared with test_care

PREFIX = "m"


@dataclass
class Bucketed:
    """A posts folder whose store is a moto bucket, and what reaches behind it."""

    posts: Path
    config: Path
    opts: list[str]
    bucket: S3Bucket

    def write(self, name: str, *numbers: int) -> None:
        body = "".join(f'<p><img src="{WRAP}{src(n)}" data-size="60,40"></p>\n' for n in numbers)
        text = f"\n---\ntitle: '{name}'\n---\n\n{body}"
        (self.posts / name).write_text(text, encoding="utf-8")

    def key(self, n: int) -> str:
        digest = sha(image_n(n))
        return f"{PREFIX}/{digest[:2]}/{digest}.jpg"

    def loaded(self) -> Config:
        """The config ``main`` builds from the file, manifest beside it."""
        return with_manifest_beside(load_config(self.config), self.config)

    def manifest(self) -> Manifest:
        path = self.loaded().manifest_file
        assert path is not None
        return Manifest(path, readonly=True)

    async def keys(self) -> dict[str, bytes]:
        """Every object in the bucket, by key, with its bytes."""
        async with self.bucket.client() as client:
            listing = await client.list_objects_v2(Bucket=self.bucket.name)
            found: dict[str, bytes] = {}
            for item in listing.get("Contents", []):
                answer = await client.get_object(Bucket=self.bucket.name, Key=item["Key"])
                async with answer["Body"] as body:
                    found[item["Key"]] = await body.read()
            return found

    async def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` through the S3 API, behind mirror's back."""
        async with self.bucket.client() as client:
            await client.put_object(
                Bucket=self.bucket.name, Key=key, Body=data, ContentType="image/jpeg"
            )

    async def delete(self, key: str) -> None:
        async with self.bucket.client() as client:
            await client.delete_object(Bucket=self.bucket.name, Key=key)

    async def uploads(self) -> list[dict[str, Any]]:
        async with self.bucket.client() as client:
            answer = await client.list_multipart_uploads(Bucket=self.bucket.name)
            return list(answer.get("Uploads", []))


@pytest.fixture
def site(tmp_path: Path, origin: Origin, s3_bucket: S3Bucket) -> Bucketed:
    """Posts, and a config whose store is ``s3://<bucket>/m`` (the manifest beside it)."""
    asyncio.run(s3_bucket.create())
    posts = tmp_path / "posts"
    posts.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        "[scan]\nwrappers = ['^http://proxy\\.example/\\?(?P<url>.+)$']\n"
        "[fetch]\nsources = ['origin']\nbackoff_initial = 0.0\nattempts = 1\n"
        "failure_backoff = 0.001\n"
        f"[network]\nconnect_to = ['origin.example:80:127.0.0.1:{origin.port}']\n"
        f"[store]\nurl = 's3://{s3_bucket.name}/{PREFIX}'\nstaging = '{tmp_path / 'staging'}'\n"
        f"[store.s3]\nendpoint_url = '{s3_bucket.endpoint}'\naddressing = 'path'\n",
        encoding="utf-8",
    )
    return Bucketed(posts, config, ["--config", str(config)], s3_bucket)


def fetched(site: Bucketed, capsys: pytest.CaptureFixture[str], *numbers: int) -> None:
    """Write a.md naming ``numbers`` and fetch them into the bucket."""
    site.write("a.md", *numbers)
    assert ExitStatus.OK == main(["fetch", *site.opts, str(site.posts)])
    assert {site.key(n): image_n(n) for n in numbers} == asyncio.run(site.keys())
    capsys.readouterr()


# --- verify -------------------------------------------------------------------------------------


def test_verify_reports_corrupt_missing_and_stray_objects(
    site: Bucketed, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    """Overwritten bytes in the bucket are corrupt, a deleted key missing; --repair restores."""
    fetched(site, capsys, 1, 2, 3)
    assert ExitStatus.OK == main(["verify", *site.opts])
    out, err = out_err(capsys)
    assert "" == out
    assert "3 files" in err
    assert "3 manifest rows: 0 missing, 0 corrupt, 0 stray" in err
    corrupt = bytearray(image_n(1))
    corrupt[100] ^= 0xFF
    asyncio.run(site.put(site.key(1), bytes(corrupt)))
    asyncio.run(site.delete(site.key(2)))
    asyncio.run(site.put(site.key(9), image_n(9)))
    assert ExitStatus.INCOMPLETE == main(["verify", *site.opts])
    out, err = out_err(capsys)
    lines = sorted(out.splitlines())
    assert 3 == len(lines), out
    assert lines[0].startswith(f"corrupt  {site.key(1)}  (its bytes hash to ")
    assert src(1) in lines[0]
    assert lines[1].startswith(f"missing  {site.key(2)}  (named by {src(2)}")
    assert lines[2].startswith(f"stray    {site.key(9)}  (no manifest row names it")
    assert "1 missing, 1 corrupt, 1 stray" in err
    # Reporting changes nothing.
    keys = asyncio.run(site.keys())
    assert bytes(corrupt) == keys[site.key(1)]
    assert {site.key(1), site.key(3), site.key(9)} == set(keys)
    with site.manifest() as manifest:
        assert {"mirrored": 3} == {k: v for k, v in manifest.counts().items() if v}

    before = Counter(origin.hits)
    assert ExitStatus.INCOMPLETE == main(["verify", "--repair", *site.opts])
    assert "repaired: 1 corrupt files deleted, 2 objects fetched again" in out_err(capsys)[1]
    # Fetched again at once from their sources, into the bucket: no run needed.
    assert {"/img/1.jpg": 1, "/img/2.jpg": 1} == dict(origin.hits - before)
    keys = asyncio.run(site.keys())
    assert {site.key(n) for n in (1, 2, 3, 9)} == set(keys)
    assert (image_n(1), image_n(2)) == (keys[site.key(1)], keys[site.key(2)])
    capsys.readouterr()
    assert ExitStatus.OK == main(["verify", *site.opts])
    assert "0 missing, 0 corrupt, 1 stray" in out_err(capsys)[1]


# --- gc -----------------------------------------------------------------------------------------


def test_gc_apply_collects_by_the_local_rules_and_aborts_stale_uploads(
    site: Bucketed, capsys: pytest.CaptureFixture[str]
) -> None:
    """gc --apply deletes rows no post needs and aborts old uploads; young and foreign keys stay."""
    fetched(site, capsys, 1, 2, 3)
    site.write("a.md", 1)  # 2 and 3 are no longer named
    with Manifest(site.loaded().manifest_file or Path()) as manifest:
        served = SourceResult(
            "http://open.example/5.jpg", "mirrored", sha256=sha(image_n(5)), ext="jpg", size=1
        )
        manifest.record_served("http://open.example/5.jpg", served)
    foreign = f"{PREFIX}/{sha(b'x')[:2]}/{sha(b'x')}.jpg"
    for key, data in ((site.key(5), image_n(5)), (site.key(9), image_n(9)), (foreign, b"y")):
        asyncio.run(site.put(key, data))

    async def begin() -> None:
        async with site.bucket.client() as client:
            for key in (site.key(7), f"{PREFIX}/backup.tar"):
                await client.create_multipart_upload(Bucket=site.bucket.name, Key=key)

    asyncio.run(begin())
    uploads = asyncio.run(site.uploads())
    # moto dates every upload 2010: ours is stale by any threshold (the premise, checked).
    assert all(u["Initiated"].timestamp() < time.time() - STRAY_AGE for u in uploads)
    assert ExitStatus.OK == main(["gc", *site.opts, str(site.posts)])
    out, err = out_err(capsys)
    expected_lines = {f"would remove {site.key(n)}  {len(image_n(n))} bytes" for n in (2, 3)}
    assert expected_lines == {line.split("  (")[0] for line in out.splitlines()}
    assert 2 == len(asyncio.run(site.uploads()))

    assert ExitStatus.OK == main(["gc", "--apply", *site.opts, str(site.posts)])
    out, err = out_err(capsys)
    assert 2 == out.count("removed "), out
    assert "2 sources kept without object" in err
    # 9 (no row) and the foreign key are younger than STRAY_AGE; 5 is served: all stay.
    expected = {site.key(1), site.key(5), site.key(9), foreign}
    assert expected == set(asyncio.run(site.keys()))
    assert [f"{PREFIX}/backup.tar"] == [u["Key"] for u in asyncio.run(site.uploads())]
    with site.manifest() as manifest:
        assert {sha(image_n(1)), sha(image_n(5))} == {row.sha256 for row in manifest.objects()}
        row = manifest.get(src(3))
        assert row is not None
        assert ("failed", "collected", None) == (row.status, row.reason, row.sha256)

    # Past the stray age, an object no row names goes when its bytes prove mirror wrote it.
    found = asyncio.run(collect(site.loaded(), [site.posts], apply=True, stray_age=0.0))
    assert [(site.key(9), False)] == [(g.file, g.row) for g in found.garbage]
    assert [foreign] == found.foreign
    assert {site.key(1), site.key(5), foreign} == set(asyncio.run(site.keys()))


# --- export -------------------------------------------------------------------------------------


def test_export_from_a_bucket_writes_each_object_byte_for_byte(
    site: Bucketed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export DIR writes DIR/<ab>/<sha>.<ext> from the bucket; a corrupt object is not exported."""
    fetched(site, capsys, 1, 2, 3)
    dest = tmp_path / "public"
    assert ExitStatus.OK == main(["export", *site.opts, str(dest)])
    total = sum(len(image_n(n)) for n in (1, 2, 3))
    assert (
        f"export: 3 files ({total} bytes) written; 0 already there; 0 missing"
        in (out_err(capsys)[1])
    )
    written = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*.*")}
    expected = {site.key(n).removeprefix(f"{PREFIX}/"): image_n(n) for n in (1, 2, 3)}
    assert expected == written
    assert ExitStatus.OK == main(["export", *site.opts, str(dest)])
    assert "0 files (0 bytes) written; 3 already there" in out_err(capsys)[1]

    assert ExitStatus.USAGE == main(["export", "--link", *site.opts, str(tmp_path / "linked")])
    assert "keeps no local files to link" in out_err(capsys)[1]
    asyncio.run(site.put(site.key(2), b"not the image"))
    asyncio.run(site.delete(site.key(3)))
    again = tmp_path / "again"
    assert ExitStatus.INCOMPLETE == main(["export", *site.opts, str(again)])
    out, err = out_err(capsys)
    name = site.key(2).removeprefix(f"{PREFIX}/")
    assert f"corrupt  {name}  (its bytes do not hash to its name; not exported)" in out
    assert f"missing  {site.key(3).removeprefix(f'{PREFIX}/')}  (not in the store)" in out
    assert "1 files" in err
    assert {site.key(1).removeprefix(f"{PREFIX}/")} == {
        p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file()
    }


# --- report -------------------------------------------------------------------------------------


def test_report_draws_its_gallery_from_the_bucket(
    site: Bucketed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The HTML report's thumbnails are made from the bucket's objects; a deleted one says so."""
    fetched(site, capsys, 1, 2, 3)
    asyncio.run(site.delete(site.key(3)))
    page = tmp_path / "report.html"
    assert ExitStatus.OK == main(["report", *site.opts, "--html", str(page), str(site.posts)])
    html = page.read_text(encoding="utf-8")
    assert 2 == html.count('src="data:image/jpeg;base64,')
    assert 1 == html.count('<div class="noimg">')
