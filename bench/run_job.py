"""
Measure `mirror run` on a generated archive: N wrapped references over H origin hosts.

Everything is local: one aiohttp origin in its own process on 127.0.0.1 answers for every
``hostNN.example`` (mapped with --connect-to), posts reference the images through the
cors.zfour.workers.dev wrapper in the corpus's shapes. Prints wall time and peak RSS of the run.

    python bench/run_job.py            # 2000 references, 20 hosts
    python bench/run_job.py -n 50      # a smoke run
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
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


def make_image(rng: random.Random) -> tuple[bytes, tuple[int, int]]:
    """Return a JPEG of a realistic web size (mostly 30-150 KB) and its dimensions."""
    size = (rng.randint(300, 640), rng.randint(200, 480))
    noise = Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).convert("RGB")
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=rng.randint(40, 80))
    return out.getvalue(), size


def generate(root: Path, n: int, hosts: int, seed: int) -> int:
    """Write images under root/origin and posts under root/posts; return the bytes served."""
    rng = random.Random(seed)
    total = 0
    refs: list[str] = []
    for i in range(n):
        data, (w, h) = make_image(rng)
        total += len(data)
        (root / "origin" / "img").mkdir(parents=True, exist_ok=True)
        (root / "origin" / "img" / f"{i}.jpg").write_bytes(data)
        host = f"host{i % hosts:02}.example"
        url = f"{WRAP}http://{host}/img/{i}.jpg"
        refs.append(f'<p><img src="{url}" data-size="{w},{h}" referrerpolicy="no-referrer"></p>')
    posts = root / "posts"
    posts.mkdir()
    for p in range(0, n, 10):
        body = "".join(refs[p : p + 10])
        head = refs[p].split('"')[1]
        text = f"\n---\ntitle: 'p{p}'\nheadimg: '{head}'\n---\n\n<div>   \n{body}\n</div>\n  "
        (posts / f"post{p:05}.md").write_text(text, encoding="utf-8")
    return total


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
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(root / "origin"), str(args.port)]
        )
        try:
            time.sleep(1.5)
            command = [sys.executable, "-m", "mirror", "run", "-q", "--store", str(root / "cache")]
            for h in range(args.hosts):
                command += ["--connect-to", f"host{h:02}.example:80:127.0.0.1:{args.port}"]
            started = time.perf_counter()
            done = subprocess.run([*command, str(root / "posts")], check=False)
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=10)
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
