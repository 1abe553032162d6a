"""
Hostile images against verification: the time and peak memory of issue #13's rows 2 and 9.

    python bench/hostile.py run [COUNT]    # mirror run over COUNT hostile references (default 100)
    python bench/hostile.py gif [FRAMES [CANVAS]]  # serve's /healthz wait during a GIF decode
    python bench/hostile.py small [COUNT]  # verify COUNT small JPEGs (default 2000), inline

Run it with PYTHONPATH set to the tree to measure (``/work/main`` for before, a worktree for
after). ``run`` serves the images from a local origin on 127.0.0.1 (reached through
``--connect-to``) and runs ``python -m mirror run`` under a small wrapper process that reports
its children's peak RSS; the references are 7000x7000 and 7000x5000 PNGs (190 KB each, under the
pixel cap) declaring a scaled or rotated size, with and without an eXIf chunk (before or after
the image data, upright, rotated or corrupt), cut short, or a tiny pixel bomb. ``gif`` runs
``mirror serve``'s app in this process with ``verify.mode = "decode"``, asks it for a GIF of
FRAMES (default 20000) one-pixel frames on a CANVAS (default 1000) pixels square
screen, and times a ``/healthz`` sent while that request is
being verified.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

WRAP = "http://proxy.example/?"

# A small wrapper runs `python -m mirror` and reports its RUSAGE_CHILDREN peak (mirror's, and
# that of any process mirror waited for); mirror's own RUSAGE_SELF would include this process's
# peak, which Linux carries across fork and exec.
CHILD = """
import json, resource, subprocess, sys, time
start = time.monotonic()
done = subprocess.run([sys.executable, "-m", "mirror", *sys.argv[2:]], check=False)
seconds = time.monotonic() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w", encoding="utf-8") as out:
    json.dump({"status": done.returncode, "seconds": seconds, "peak_kb": peak}, out)
"""


def chunk(kind: bytes, body: bytes) -> bytes:
    """Frame one PNG chunk with its length and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def black_idat(width: int, height: int) -> bytes:
    """The zlib stream of a black RGB image, compressed row by row (never held whole)."""
    packer = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    parts = [packer.compress(row) for _ in range(height)]
    parts.append(packer.flush())
    return b"".join(parts)


def tiff(orientation: int, order: str = "<") -> bytes:
    """A TIFF header and an IFD0 holding only the orientation tag."""
    mark = b"II*\x00" if order == "<" else b"MM\x00*"
    return mark + struct.pack(f"{order}IHHHIHHI", 8, 1, 0x0112, 3, 1, orientation, 0, 0)


def png(
    width: int, height: int, idat: bytes, exif: bytes | None = None, after: bool = False
) -> bytes:
    """A PNG of ``width`` x ``height``, with an eXIf chunk before or after its image data."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    exif_chunk = b"" if exif is None else chunk(b"eXIf", exif)
    body = chunk(b"IDAT", idat)
    parts = [body, exif_chunk] if after else [exif_chunk, body]
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(parts) + chunk(b"IEND", b"")


def hostile_set() -> list[tuple[str, bytes, str, str]]:
    """(name, body, declared size, expected status/reason) for each kind of hostile reference."""
    square = black_idat(7000, 7000)
    wide = black_idat(7000, 5000)
    bad_exif = b"II*\x00" + struct.pack("<I", 1 << 30)  # IFD0 offset far outside the chunk
    bomb = png(40000, 40000, zlib.compress(bytes(64)))
    whole = png(7000, 7000, square)
    return [
        ("scaled", whole, "3500,3500", "mirrored"),
        ("other-size", whole, "700,400", "failed/size-mismatch"),
        ("rotated-exif", png(7000, 5000, wide, tiff(6)), "5000,7000", "mirrored"),
        (
            "rotated-late-exif",
            png(7000, 5000, wide, tiff(8, ">"), after=True),
            "5000,7000",
            "mirrored",
        ),
        ("upright-exif", png(7000, 5000, wide, tiff(1)), "5000,7000", "failed/size-mismatch"),
        ("corrupt-exif", png(7000, 5000, wide, bad_exif), "5000,7000", "failed/size-mismatch"),
        ("cut", whole[: len(whole) // 2], "3500,3500", "failed/truncated"),
        ("bomb", bomb, "100,100", "failed/pixel-bomb"),
    ]


def gif(frames: int, canvas: int = 1000) -> bytes:
    """An animated GIF of ``frames`` one-pixel frames on a ``canvas`` x ``canvas`` screen."""
    head = (
        b"GIF89a" + struct.pack("<HHBBB", canvas, canvas, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    )
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms, no disposal
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00"  # LZW min code size 2, one sub-block: the pixel 0
    )
    return head + loop + frame * frames + b"\x3b"


@contextmanager
def threaded(app: web.Application) -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1 from its own thread and loop; yield the port."""
    loop = asyncio.new_event_loop()
    server = TestServer(app, host="127.0.0.1")
    started = threading.Event()

    def serve() -> None:
        loop.run_until_complete(server.start_server())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(timeout=30)
    try:
        assert server.port is not None
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=600)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def origin(bodies: dict[str, bytes], served: threading.Event | None = None) -> Iterator[int]:
    """Serve ``bodies`` by path (and the proxy by its query) on 127.0.0.1; yield the port."""

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.host.startswith("proxy.example"):
            path = "/" + request.rel_url.raw_query_string.split("/", 3)[-1]
        body = bodies.get(path)
        if body is None:
            return web.Response(status=404)
        response = web.Response(body=body, content_type="application/octet-stream")
        await response.prepare(request)
        await response.write_eof()
        if served is not None:
            served.set()
        return response

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    with threaded(app) as port:
        yield port


def config_text(port: int, store: Path, mode: str = "structure") -> str:
    """A config that maps origin.example and proxy.example to the local origin."""
    return (
        "[scan]\nwrappers = ['^http://proxy\\.example/\\?(?P<url>.+)$']\n"
        "[fetch]\nbackoff_initial = 0.0\nattempts = 1\n"
        f"[verify]\nmode = '{mode}'\n"
        "[network]\n"
        f"connect_to = ['origin.example:80:127.0.0.1:{port}',"
        f" 'proxy.example:80:127.0.0.1:{port}']\n"
        f"[store]\npath = '{store}'\n"
    )


def run(count: int) -> dict[str, object]:
    """Mirror ``count`` hostile references; return time, peak RSS and the statuses found."""
    kinds = hostile_set()
    bodies: dict[str, bytes] = {}
    expected: Counter[str] = Counter()
    lines = []
    for i in range(count):
        name, body, declared, outcome = kinds[i % len(kinds)]
        path = f"/h/{name}/{i}.png"
        bodies[path] = body
        expected[outcome] += 1
        lines.append(f'<img src="{WRAP}http://origin.example{path}" data-size="{declared}">')
    with tempfile.TemporaryDirectory() as tmp, origin(bodies) as port:
        work = Path(tmp)
        posts = work / "posts"
        posts.mkdir()
        for n in range(0, count, 10):
            text = "\n".join(lines[n : n + 10])
            (posts / f"{n:04}.md").write_text(
                f"---\ntitle: t{n}\n---\n\n{text}\n", encoding="utf-8"
            )
        config = work / "config.toml"
        config.write_text(config_text(port, work / "cache"), encoding="utf-8")
        result, report = work / "result.json", work / "report.jsonl"
        argv = ["run", "-q", "--config", str(config), "--report", str(report), str(posts)]
        subprocess.run([sys.executable, "-c", CHILD, str(result), *argv], check=False, cwd=tmp)
        figures = json.loads(result.read_text(encoding="utf-8"))
        found: Counter[str] = Counter()
        for row in map(json.loads, report.read_text(encoding="utf-8").splitlines()):
            status = row["status"]
            found[status if status == "mirrored" else f"{status}/{row['reason']}"] += 1
    return {**figures, "peak_mb": figures["peak_kb"] / 1024, "found": found, "expected": expected}


def healthz_wait(frames: int, canvas: int) -> dict[str, object]:
    """Ask serve (decode mode) for a many-frame GIF; time a /healthz sent while it verifies."""
    import dataclasses
    import urllib.request

    from mirror.config import Config, NetworkConfig, ServeConfig, StoreConfig, VerifyConfig
    from mirror.serve import create_app

    body = gif(frames, canvas)
    served = threading.Event()
    outcome: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, origin({"/g.gif": body}, served) as port:
        config = dataclasses.replace(
            Config(),
            network=NetworkConfig(connect_to=(f"origin.example:80:127.0.0.1:{port}",)),
            store=StoreConfig(path=str(Path(tmp) / "cache")),
            verify=VerifyConfig(mode="decode"),
            serve=ServeConfig(open=True, request_timeout=600.0),
        )
        with threaded(create_app(config)) as serve_port:
            base = f"http://127.0.0.1:{serve_port}"

            def get_image() -> None:
                start = time.monotonic()
                try:
                    with urllib.request.urlopen(
                        f"{base}/?http://origin.example/g.gif", timeout=600
                    ):
                        outcome["image_status"] = 200
                except urllib.error.HTTPError as exc:
                    outcome["image_status"] = exc.code
                outcome["image_seconds"] = round(time.monotonic() - start, 3)

            image = threading.Thread(target=get_image)
            image.start()
            served.wait(timeout=60)
            time.sleep(0.2)  # the body is read and verification under way
            sent = time.monotonic()
            with urllib.request.urlopen(f"{base}/healthz", timeout=600) as health:
                outcome["healthz"] = health.status
            outcome["healthz_wait_s"] = round(time.monotonic() - sent, 3)
            image.join(timeout=600)
    return {"frames": frames, "canvas": canvas, "gif_bytes": len(body), **outcome}


def small(count: int) -> dict[str, object]:
    """Verify ``count`` distinct small JPEGs inline; return the seconds it took."""
    from PIL import Image

    from mirror.config import VerifyConfig
    from mirror.verify import verify

    images = []
    for n in range(count):
        out = io.BytesIO()
        Image.new("RGB", (60, 40), (n % 256, n // 256, 7)).save(out, "JPEG")
        images.append(out.getvalue())
    config = VerifyConfig()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for data in images:
            verify(data, config, (60, 40), "attr")
        best = min(best, time.perf_counter() - start)
    return {
        "count": count,
        "best_of_5_s": round(best, 4),
        "per_image_us": round(best / count * 1e6, 1),
    }


def main(argv: list[str]) -> int:
    """Dispatch ``run``, ``gif`` or ``small``; print the figures as JSON."""
    if not argv or argv[0] not in ("run", "gif", "small"):
        print(__doc__, file=sys.stderr)
        return 2
    n = int(argv[1]) if len(argv) > 1 else None
    if argv[0] == "run":
        figures = run(n or 100)
    elif argv[0] == "gif":
        figures = healthz_wait(n or 20000, int(argv[2]) if len(argv) > 2 else 1000)
    else:
        figures = small(n or 2000)
    figures["tree"] = os.environ.get("PYTHONPATH", "")
    figures["maxrss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
