"""
Measure ``mirror serve``'s memory under many slow clients: connections that ask for an image and
never read the answer, and connections that send half a request and stall.

    python bench/slow_clients.py              # 1000 of each, a 900 KB object
    python bench/slow_clients.py -n 100       # a smoke run

Prints the server's RSS before, with all slow clients connected, and after they leave, and the
latency of a normal request while they hang on. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from mirror.config import Config, StoreConfig
from mirror.manifest import Manifest, SourceResult, manifest_path
from mirror.store import open_store

SOURCE = "http://static.1sapp.example/qupost/img/big.jpeg"


def make_store(root: Path, rng: random.Random) -> int:
    """Store one noisy JPEG of about 900 KB under SOURCE; return its size."""
    size = (1200, 900)
    noise = Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).convert("RGB")
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=85)
    data = out.getvalue()
    sha = hashlib.sha256(data).hexdigest()

    async def put() -> None:
        async with open_store(Config(store=StoreConfig(url=str(root)))) as store:
            await store.put(data, sha, "jpg", "image/jpeg")

    asyncio.run(put())
    result = SourceResult(SOURCE, "mirrored", sha256=sha, ext="jpg", size=len(data), format="JPEG")
    with Manifest(manifest_path(root)) as manifest:
        manifest.record_results([result])
    return len(data)


def rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+)", text)
    return int(match[1]) if match else 0


async def timed_get(port: int) -> float:
    """Seconds for one complete request of SOURCE on a fresh connection."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /?{SOURCE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    while await reader.read(65536):
        pass
    writer.close()
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="slow clients of each kind")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.n + 256)), hard))
    with tempfile.TemporaryDirectory(prefix="mirror-slow-") as folder:
        root = Path(folder) / "store"
        size = make_store(root, random.Random(7))
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mirror",
            "serve",
            "--store",
            str(root),
            "--port",
            "0",
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert server.stderr is not None
            line = await asyncio.wait_for(server.stderr.readline(), 30)
            port = int(re.search(rb":(\d+)/", line)[1])  # type: ignore[index]
            await timed_get(port)
            before = rss_kib(server.pid)
            idle = await timed_get(port)
            clients = []
            for _ in range(args.n):
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"GET /?{SOURCE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                clients.append(writer)
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /?http://static.1sapp.example/x.jpg HTTP/1.1\r\nHo")
                clients.append(writer)
            await asyncio.sleep(2)
            during = rss_kib(server.pid)
            busy = await timed_get(port)
            for writer in clients:
                writer.transport.abort()
            await asyncio.sleep(2)
            after = rss_kib(server.pid)
        finally:
            server.terminate()
            await server.wait()
    print(f"object {size} bytes, {args.n} non-reading + {args.n} half-request clients")
    print(f"server RSS: before {before} KiB, with them {during} KiB, after {after} KiB")
    print(f"a normal request: {idle * 1000:.1f} ms alone, {busy * 1000:.1f} ms among them")


if __name__ == "__main__":
    asyncio.run(main())
