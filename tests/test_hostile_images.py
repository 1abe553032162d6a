"""
Issue #13, rows 2 and 9: hostile images cost neither memory nor the event loop.

A whole ``mirror run`` (``mirror.cli.main`` in a child process, images from a local origin on
127.0.0.1 reached through ``--connect-to``) over 100 references to 49-megapixel PNGs of 190 KB
stays under 150 MB of peak RSS with the right result; a GIF of 20,000 frames is refused by the
frame cap in decode mode; and ``mirror serve`` answers ``/healthz`` while a decode is pending.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import struct
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import build_config, threaded_server

from mirror.config import ServeConfig, StoreConfig, VerifyConfig
from mirror.errors import VerifyError
from mirror.serve import create_app
from mirror.verify import POOL, verify

REPO = Path(__file__).resolve().parent.parent
WRAP = "http://proxy.example/?"
PEAK_RSS_LIMIT_KB = 150 * 1024

# A small wrapper runs `python -m mirror` (mirror.cli.main) and reports its RUSAGE_CHILDREN
# peak: mirror's and that of any process mirror waited for. Not mirror's own RUSAGE_SELF, since
# Linux carries the parent's peak RSS across fork and exec (pytest's, hundreds of MB late in a run).
CHILD = """
import json, resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "mirror", *sys.argv[2:]], check=False)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w", encoding="utf-8") as out:
    json.dump({"status": done.returncode, "peak_kb": peak}, out)
"""


def chunk(kind: bytes, body: bytes) -> bytes:
    """
    Frame one PNG chunk with its length and CRC.
    """
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def black_idat(width: int, height: int) -> bytes:
    """
    Compress a black RGB image row by row, never holding it whole.
    """
    packer = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    return b"".join(packer.compress(row) for _ in range(height)) + packer.flush()


def tiff(orientation: int, order: str = "<") -> bytes:
    """
    Build a TIFF header and an IFD0 holding only the orientation tag.
    """
    mark = b"II*\x00" if order == "<" else b"MM\x00*"
    return mark + struct.pack(f"{order}IHHHIHHI", 8, 1, 0x0112, 3, 1, orientation, 0, 0)


def png(
    width: int, height: int, idat: bytes, exif: bytes | None = None, *, after: bool = False
) -> bytes:
    """
    Build an RGB PNG with an eXIf chunk before or after its image data.
    """
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    extra = b"" if exif is None else chunk(b"eXIf", exif)
    data = chunk(b"IDAT", idat)
    body = data + extra if after else extra + data
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + chunk(b"IEND", b"")


@dataclasses.dataclass(frozen=True)
class Hostile:
    """One kind of hostile reference: its body, what the post declares, how it must end."""

    name: str
    body: bytes
    declared: str
    outcome: str


@pytest.fixture(scope="module")
def hostile() -> list[Hostile]:
    """
    The kinds of reference that made verification decode (or would make it read) everything.
    """
    square, wide = black_idat(7000, 7000), black_idat(7000, 5000)
    whole = png(7000, 7000, square)
    far_ifd = b"II*\x00" + struct.pack("<I", 1 << 30)
    return [
        Hostile("scaled", whole, "3500,3500", "mirrored"),
        Hostile("other-size", whole, "700,400", "failed/size-mismatch"),
        Hostile("rotated", png(7000, 5000, wide, tiff(6)), "5000,7000", "mirrored"),
        Hostile("late", png(7000, 5000, wide, tiff(8, ">"), after=True), "5000,7000", "mirrored"),
        Hostile("upright", png(7000, 5000, wide, tiff(1)), "5000,7000", "failed/size-mismatch"),
        Hostile("bad-exif", png(7000, 5000, wide, far_ifd), "5000,7000", "failed/size-mismatch"),
        Hostile("cut", whole[: len(whole) // 2], "3500,3500", "failed/truncated"),
        Hostile("bomb", png(40000, 40000, zlib.compress(bytes(64))), "9,9", "failed/pixel-bomb"),
    ]


def serve_bodies(bodies: dict[str, bytes]) -> web.Application:
    """
    Serve ``bodies`` by path, for origin.example and (by its query) for proxy.example.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.host.startswith("proxy.example"):
            path = "/" + request.rel_url.raw_query_string.split("/", 3)[-1]
        body = bodies.get(path)
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_over_100_hostile_images_stays_under_150_mb(
    tmp_path: Path, hostile: list[Hostile]
) -> None:
    """
    mirror run over 100 hostile references peaks under 150 MB and ends each one as it must.
    """
    bodies: dict[str, bytes] = {}
    expected: dict[str, str] = {}
    posts = tmp_path / "posts"
    posts.mkdir()
    for n in range(10):
        lines = []
        for i in range(n * 10, n * 10 + 10):
            kind = hostile[i % len(hostile)]
            url = f"http://origin.example/h/{kind.name}/{i}.png"
            bodies[url.removeprefix("http://origin.example")] = kind.body
            expected[url] = kind.outcome
            lines.append(f'<p><img src="{WRAP}{url}" data-size="{kind.declared}"></p>')
        text = "\n".join(lines)
        (posts / f"{n}.md").write_text(f"---\ntitle: t{n}\n---\n\n{text}\n", encoding="utf-8")
    result, report, config = tmp_path / "result.json", tmp_path / "r.jsonl", tmp_path / "c.toml"
    with threaded_server(serve_bodies(bodies)) as port:
        config.write_text(
            "[scan]\nwrappers = ['^http://proxy\\.example/\\?(?P<url>.+)$']\n"
            "[fetch]\nbackoff_initial = 0.0\nattempts = 1\n"
            f"[store]\npath = '{tmp_path / 'cache'}'\n",
            encoding="utf-8",
        )
        connect = [
            arg
            for host in ("origin.example", "proxy.example")
            for arg in ("--connect-to", f"{host}:80:127.0.0.1:{port}")
        ]
        argv = ["run", "-q", "--config", str(config), *connect, "--report", str(report)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(result), *argv, str(posts)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    assert 0 == done.returncode, done.stderr
    figures = json.loads(result.read_text(encoding="utf-8"))
    assert 1 == figures["status"]  # some references are not mirrored, on purpose
    rows = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    found = {
        r["source"]: r["status"] if r["status"] == "mirrored" else f"{r['status']}/{r['reason']}"
        for r in rows
    }
    assert expected == found
    assert 39 == Counter(found.values())["mirrored"]
    objects = {p.stem for p in (tmp_path / "cache" / "objects").rglob("*.png")}
    assert 3 == len(objects)  # the scaled square and the two rotated PNGs, each stored once
    for url, outcome in expected.items():
        post = (posts / f"{int(url.rsplit('/', 1)[1].split('.')[0]) // 10}.md").read_text("utf-8")
        assert (outcome != "mirrored") == (f'{WRAP}{url}"' in post)
    assert figures["peak_kb"] < PEAK_RSS_LIMIT_KB, f"peak RSS {figures['peak_kb']} KB"


def many_frames(frames: int, canvas: tuple[int, int] = (1, 1)) -> bytes:
    """
    Build an animated GIF of ``frames`` one-pixel frames on a ``canvas`` screen by hand.
    """
    screen = struct.pack("<HHBBB", *canvas, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms, no disposal
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00"  # LZW minimum code size 2, one sub-block: the pixel 0
    )
    return b"GIF89a" + screen + loop + frame * frames + b"\x3b"


@pytest.fixture
def pool() -> Iterator[None]:
    """
    Stop the decode workers the test started.
    """
    yield
    POOL.shutdown()


@pytest.mark.usefixtures("pool")
def test_a_20000_frame_gif_is_refused_by_the_frame_cap() -> None:
    """
    In decode mode a GIF of 20,000 one-pixel frames is a pixel bomb, stopped at max_frames.
    """
    data = many_frames(20_000)
    assert "GIF" == verify(data, VerifyConfig()).format  # structure mode decodes no frame
    with pytest.raises(VerifyError) as info:
        verify(data, VerifyConfig(mode="decode"))
    assert "pixel-bomb" == info.value.reason
    assert "verify.max_frames" in str(info.value)
    assert "GIF" == verify(many_frames(20), VerifyConfig(mode="decode")).format


@pytest.mark.usefixtures("pool")
async def test_serve_answers_healthz_while_a_decode_is_pending(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    """
    While serve's decode of a 20,000-frame GIF waits on its worker, /healthz is answered.
    """
    upstream = await aiohttp_server(serve_bodies({"/g.gif": many_frames(20_000)}))
    base = build_config((f"origin.example:80:127.0.0.1:{upstream.port}",))
    config = dataclasses.replace(
        base,
        store=StoreConfig(path=str(tmp_path / "cache")),
        serve=ServeConfig(open=True),
        verify=VerifyConfig(mode="decode", decode_workers=1),
    )
    # The one worker is held by a read of a FIFO until the test writes to it, so the GIF's
    # decode is certainly still pending when /healthz is asked.
    hold = tmp_path / "hold"
    os.mkfifo(hold)
    held = POOL.executor(config.verify).submit(Path.read_bytes, hold)
    client = await aiohttp_client(create_app(config))
    image = asyncio.ensure_future(client.get("/?http://origin.example/g.gif"))
    for _ in range(10_000):  # bounded: the request reaches the pool after its download
        if POOL.pending or image.done():
            break
        await asyncio.sleep(0.001)
    assert 1 == POOL.pending
    health = await client.get("/healthz")
    assert (200, "ok\n") == (health.status, await health.text())
    assert not image.done()
    await asyncio.to_thread(hold.write_bytes, b"go")
    answer = await image
    assert b"go" == held.result()
    assert (502, "pixel-bomb") == (answer.status, answer.headers["X-Mirror-Reason"])
    assert 0 == POOL.pending
