"""
Measure how long a row committed by one serve node takes to show in another node's catalog.

Over one PostgreSQL manifest (``--url``): fills it with ``--sources`` mirrored sources, loads a
:class:`~mirror.catalog.Catalog` over its own connection with its refresh task running (the
interval an hour, so only ``wait_for_change``'s NOTIFY wakes it), then commits ``--new``
sources one at a time through another connection and times, for each, from the return of
``record_results`` (the commit) to the moment the catalog maps the source. Both sides run in
this one process and loop; the figure therefore excludes a network between machines but
includes the server's NOTIFY, the wake and the ``catalog_changes`` read.

    PYTHONPATH=$PWD python tests/measure_serve_nodes.py --url postgresql://user@127.0.0.1:5432/db

Not a test (pytest collects only ``test_*.py``): a script whose figures go to the report.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time

from mirror.catalog import Catalog
from mirror.config import Config, ManifestConfig
from mirror.manifest import SourceResult, open_manifest

BATCH = 5000
# How often the visibility of one row is looked at before giving up on it: a bound.
POLLS = 200_000


def row(index: int, prefix: str) -> SourceResult:
    """A mirrored source whose object is named after it."""
    digest = hashlib.sha256(f"{prefix}{index}".encode()).hexdigest()
    source = f"http://origin.example/{prefix}/{index}.png"
    return SourceResult(source, "mirrored", sha256=digest, ext="png", size=1000 + index % 977)


async def measure(url: str, sources: int, new: int) -> list[float]:
    """Return the commit-to-visible delay of each of ``new`` sources, in seconds."""
    config = Config(manifest=ManifestConfig(url=url))
    async with open_manifest(config) as writer, open_manifest(config) as feed:
        have = (await writer.counts()).get("mirrored", 0)
        for start in range(have, sources, BATCH):
            await writer.record_results(
                row(i, "old") for i in range(start, min(start + BATCH, sources))
            )
        catalog = Catalog(feed=feed)
        began = time.perf_counter()
        refresh = await catalog.run_refresh(3600.0)
        print(
            f"catalog: {len(catalog.entries)} entries loaded in {time.perf_counter() - began:.2f} s"
        )
        delays: list[float] = []
        run = f"new-{time.time_ns()}"
        try:
            for index in range(new):
                fresh = row(index, run)  # never a source an earlier run added
                await writer.record_results([fresh])
                committed = time.perf_counter()
                for _ in range(POLLS):
                    if catalog.lookup(fresh.source) is not None:
                        break
                    await asyncio.sleep(0.0002)
                else:
                    raise AssertionError(f"{fresh.source} never became visible")
                delays.append(time.perf_counter() - committed)
        finally:
            refresh.cancel()
            await asyncio.gather(refresh, return_exceptions=True)
    return delays


def main() -> None:
    """Parse the arguments, measure, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="postgresql://... (a scratch database)")
    parser.add_argument("--sources", type=int, default=200_000)
    parser.add_argument("--new", type=int, default=100)
    args = parser.parse_args()
    delays = sorted(asyncio.run(measure(args.url, args.sources, args.new)))
    ms = [d * 1000 for d in delays]
    p95 = ms[max(0, int(len(ms) * 0.95) - 1)]
    print(
        f"{len(ms)} new sources over {args.sources}: commit -> visible on the other node "
        f"median {statistics.median(ms):.2f} ms, p95 {p95:.2f} ms, max {ms[-1]:.2f} ms, "
        f"min {ms[0]:.2f} ms"
    )


if __name__ == "__main__":
    main()
