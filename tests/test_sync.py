"""``mirror sync``: local folder -> S3 bucket (moto) -> local folder, only what is missing."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from conftest import make_image, object_file, store_object
from s3_server import S3Bucket

from mirror.cli import main
from mirror.errors import ExitStatus
from mirror.marker import mark_store


def s3_config(tmp_path: Path, bucket: S3Bucket) -> Path:
    """A config file whose [store.s3] reaches the moto bucket."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[store]\nurl = "s3://{bucket.name}/m"\n'
        f'[store.s3]\nendpoint_url = "{bucket.endpoint}"\naddressing = "path"\n',
        encoding="utf-8",
    )
    return path


async def bucket_keys(bucket: S3Bucket) -> dict[str, bytes]:
    """Every object under the prefix m/, by key, with its bytes."""
    async with bucket.client() as client:
        listing = await client.list_objects_v2(Bucket=bucket.name, Prefix="m/")
        found: dict[str, bytes] = {}
        for item in listing.get("Contents", []):
            answer = await client.get_object(Bucket=bucket.name, Key=item["Key"])
            async with answer["Body"] as body:
                found[item["Key"]] = await body.read()
        return found


def test_sync_local_to_s3_and_back(
    s3_bucket: S3Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Objects go folder -> bucket -> new folder byte for byte; a rerun copies nothing."""
    asyncio.run(s3_bucket.create())
    config = s3_config(tmp_path, s3_bucket)
    src = tmp_path / "cache"
    mark_store(src)
    images = {make_image("PNG", (20 + n, 10)): "png" for n in range(3)}
    images[make_image("JPEG")] = "jpg"
    shas = {store_object(src, data, ext): (data, ext) for data, ext in images.items()}
    bucket = f"s3://{s3_bucket.name}/m"

    assert ExitStatus.OK == main(["sync", "-c", str(config), "--dry-run", str(src), bucket])
    out = capsys.readouterr().out
    assert sorted(
        f"would copy objects/{sha[:2]}/{sha}.{ext}" for sha, (_, ext) in shas.items()
    ) == sorted(out.splitlines())
    assert {} == asyncio.run(bucket_keys(s3_bucket))

    assert ExitStatus.OK == main(["sync", "-c", str(config), str(src), bucket])
    assert f"copied {len(shas)} objects" in capsys.readouterr().err
    expected = {f"m/{sha[:2]}/{sha}.{ext}": data for sha, (data, ext) in shas.items()}
    assert expected == asyncio.run(bucket_keys(s3_bucket))
    assert ExitStatus.OK == main(["sync", "-c", str(config), str(src), bucket])
    assert f"copied 0 objects (0 bytes); {len(shas)} already there" in capsys.readouterr().err

    back = tmp_path / "back"
    assert ExitStatus.OK == main(["sync", "-c", str(config), "--create", bucket, str(back)])
    for sha, (data, ext) in shas.items():
        assert data == object_file(back, sha, ext).read_bytes()
        assert sha == hashlib.sha256(object_file(back, sha, ext).read_bytes()).hexdigest()


def test_sync_refuses_an_object_whose_bytes_are_not_its_name(
    s3_bucket: S3Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corrupt source object is listed, never written, and makes the exit status 1."""
    asyncio.run(s3_bucket.create())
    config = s3_config(tmp_path, s3_bucket)
    src = tmp_path / "cache"
    mark_store(src)
    good = store_object(src, make_image("PNG"), "png")
    bad = store_object(src, make_image("JPEG"), "jpg")
    object_file(src, bad, "jpg").write_bytes(b"rotten bytes")
    bucket = f"s3://{s3_bucket.name}/m"
    assert ExitStatus.INCOMPLETE == main(["sync", "-c", str(config), str(src), bucket])
    out, err = capsys.readouterr()
    assert [f"refused  objects/{bad[:2]}/{bad}.jpg  (its bytes do not hash to its name)"] == (
        out.splitlines()
    )
    assert "1 refused" in err
    assert [f"m/{good[:2]}/{good}.png"] == list(asyncio.run(bucket_keys(s3_bucket)))
