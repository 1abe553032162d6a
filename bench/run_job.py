"""
Measure `mirror run` on a generated archive: N wrapped references over H origin hosts.

Everything is local: one aiohttp origin in its own process on 127.0.0.1 answers for every
``hostNN.example`` (mapped with --connect-to), posts reference the images through the
cors.zfour.workers.dev wrapper in the corpus's shapes. Prints wall time and peak RSS of the run.

    python bench/run_job.py            # 2000 references, 20 hosts
    python bench/run_job.py -n 50      # a smoke run

Other benchmarks import :func:`generate`, :func:`origin` and :func:`connect_to_args`.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

WRAP = "https://cors.zfour.workers.dev/?"
SERVER = """
import sys
from pathlib import Path
from aiohttp import web
root = Path(sys.argv[1])
async def handle(request):
    path = root / request.path.lstrip("/")
    if not path.is_file():
        return web.Response(status=404)
    return web.Response(body=path.read_bytes(), content_type="image/jpeg")
app = web.Application()
app.router.add_get("/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
"""


def _noise(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    return Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_image(rng: random.Random) -> tuple[bytes, tuple[int, int]]:
    """Return a JPEG of a realistic web size (mostly 30-150 KB) and its dimensions."""
    size = (rng.randint(300, 640), rng.randint(200, 480))
    return _jpeg(_noise(rng, size), rng.randint(40, 80)), size


def make_image_near(rng: random.Random, target: int) -> tuple[bytes, tuple[int, int]]:
    """Return a 560x420 JPEG whose quality is bisected to come closest to ``target`` bytes."""
    size = (560, 420)  # 5-95 quality spans about 40-190 KB at this size
    noise = _noise(rng, size)
    best = b""
    low, high = 5, 95
    while low <= high:  # at most 7 rounds over 91 qualities
        quality = (low + high) // 2
        data = _jpeg(noise, quality)
        if not best or abs(len(data) - target) < abs(len(best) - target):
            best = data
        low, high = (quality + 1, high) if len(data) < target else (low, quality - 1)
    return best, size


def source_url(i: int, hosts: int) -> str:
    """Return the inner (origin) URL of image ``i``, the manifest's source key."""
    return f"http://host{i % hosts:02}.example/img/{i}.jpg"


def generate(root: Path, n: int, hosts: int, seed: int, *, main_bytes: int = 0) -> int:
    """
    Write images under root/origin and posts under root/posts; return the bytes served.

    With ``main_bytes``, image 0 is made close to that many bytes (a benchmark's hit target).
    """
    rng = random.Random(seed)
    total = 0
    refs: list[str] = []
    (root / "origin" / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i == 0 and main_bytes:
            data, (w, h) = make_image_near(rng, main_bytes)
        else:
            data, (w, h) = make_image(rng)
        total += len(data)
        (root / "origin" / "img" / f"{i}.jpg").write_bytes(data)
        url = f"{WRAP}{source_url(i, hosts)}"
        refs.append(f'<p><img src="{url}" data-size="{w},{h}" referrerpolicy="no-referrer"></p>')
    posts = root / "posts"
    posts.mkdir()
    for p in range(0, n, 10):
        body = "".join(refs[p : p + 10])
        head = refs[p].split('"')[1]
        text = f"\n---\ntitle: 'p{p}'\nheadimg: '{head}'\n---\n\n<div>   \n{body}\n</div>\n  "
        (posts / f"post{p:05}.md").write_text(text, encoding="utf-8")
    return total


def connect_to_args(hosts: int, port: int) -> list[str]:
    """Return ``--connect-to`` options mapping every hostNN.example:80 to the local origin."""
    args: list[str] = []
    for h in range(hosts):
        args += ["--connect-to", f"host{h:02}.example:80:127.0.0.1:{port}"]
    return args


@contextmanager
def origin(folder: Path, port: int, *, timeout: float = 15.0) -> Iterator[subprocess.Popen[bytes]]:
    """Serve ``folder`` on 127.0.0.1:``port`` in a child process while the block runs."""
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(folder), str(port)])
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the origin exited with status {server.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the origin did not listen within {timeout} s") from None
                time.sleep(0.05)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="images (one reference each)")
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--port", type=int, default=18931)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mirror-bench-"))
    try:
        served = generate(root, args.n, args.hosts, args.seed)
        with origin(root / "origin", args.port):
            command = [sys.executable, "-m", "mirror", "run", "-q", "--store", str(root / "cache")]
            command += connect_to_args(args.hosts, args.port)
            started = time.perf_counter()
            done = subprocess.run([*command, str(root / "posts")], check=False)
            wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"mirror run: {args.n} references over {args.hosts} hosts, {served / 1e6:.1f} MB: "
            f"{wall:.2f} s wall, peak RSS {peak:.0f} MB (max over child processes), "
            f"exit {done.returncode}"
        )
        return done.returncode
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
