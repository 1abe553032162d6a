"""
The bare Python baseline for bench/fetch.py: what a few lines of aiohttp do with a URL list.

    python bench/aiohttp_get.py URLS DEST [JOBS]

GETs every URL of the file URLS (one a line), JOBS (default 32) at a time over one session, and
writes each body to DEST/<last path segment>: no verification, no hashing, no store, no manifest.
It is the floor for one asyncio process, so it tells mirror's own costs from the interpreter's
and aiohttp's. Exit status 0 when every answer was 200, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp


async def fetch_all(urls: list[str], dest: Path, jobs: int) -> int:
    """Download every URL into ``dest``; return how many failed."""
    failed = 0
    connector = aiohttp.TCPConnector(limit=jobs)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def one(url: str) -> None:
            nonlocal failed
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status
                        )
            except aiohttp.ClientError as exc:
                print(f"{url}: {exc}", file=sys.stderr)
                failed += 1
                return
            # Blocking on purpose, as such a script would: the file system is tmpfs or fast.
            (dest / url.rsplit("/", 1)[1]).write_bytes(body)

        await asyncio.gather(*(one(url) for url in urls))
    return failed


def main(argv: list[str]) -> int:
    """Parse ``URLS DEST [JOBS]`` and run; 2 on a usage error."""
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    urls = Path(argv[0]).read_text(encoding="utf-8").split()
    dest = Path(argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    jobs = int(argv[2]) if len(argv) == 3 else 32
    return 1 if asyncio.run(fetch_all(urls, dest, jobs)) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
