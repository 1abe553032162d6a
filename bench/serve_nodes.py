"""
bench/serve.py's PostgreSQL half: the manifest two `mirror serve` nodes share, and the catalog
refresh figure.

:func:`fill` copies the store's mirrored rows from the SQLite manifest `mirror fetch` wrote into
a fresh PostgreSQL database (the same rows through the async manifest's ``record_results``, so
the nodes serve the same objects as the SQLite peer) and pads it with generated mirrored
sources up to ``--catalog-sources`` (their objects are not in the store: they only make the
catalog as big as a real one). :func:`catalog_figures` then commits ``--catalog-new`` sources
one at a time through a connection of its own, as a queue worker would, and times, for each:

- **visible on every node**: from the return of the commit to the first 200 for ``/?<source>``
  from each running node (polled over HTTP, each node as fast as it answers its 404s; so the
  figure includes the server's NOTIFY, the node's wake and ``catalog_changes`` read, and one
  poll's round trip at most);
- **refresh work**: one :meth:`~mirror.catalog.Catalog.sync` of a catalog in this process, the
  same code the nodes run, reading and applying that one change, beside the full load
  (``catalog()`` of every row) it replaces, measured in the same run.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from nginx import HOST
from yarl import URL

from mirror.catalog import Catalog
from mirror.config import Config, ManifestConfig
from mirror.errors import MirrorError
from mirror.manifest import SourceResult, open_manifest

BATCH = 5000
# How long one new source may take to show on a node before the run counts it as failed.
VISIBLE_WITHIN = 10.0
# What the functions here raise besides RuntimeError: the bench reports them as problems.
FAILURES = (aiohttp.ClientError, MirrorError)


@dataclass(frozen=True, slots=True)
class Object:
    """A stored object a new source can name (so a node's hit for it finds the file)."""

    sha256: str
    ext: str
    size: int


def write_config(path: Path, url: str) -> Path:
    """Write the nodes' config: defaults, the shared manifest."""
    path.write_text(f'# bench/serve.py: the serve nodes\' manifest\n[manifest]\nurl = "{url}"\n')
    return path


def store_rows(manifest: Path) -> list[SourceResult]:
    """The mirrored rows of the SQLite manifest `mirror fetch` wrote, as results to record."""
    with sqlite3.connect(f"file:{manifest}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT s.source, o.sha256, o.ext, o.bytes, o.format, o.width, o.height FROM sources s"
            " JOIN objects o ON o.sha256 = s.sha256 WHERE s.status = 'mirrored' ORDER BY s.source"
        ).fetchall()
    return [
        SourceResult(
            str(source), "mirrored", sha256=sha, ext=ext, size=size, format=kind, width=width,
            height=height, fetched_from="origin",
        )
        for source, sha, ext, size, kind, width, height in rows
    ]  # fmt: skip


def filler(index: int) -> SourceResult:
    """A generated mirrored source whose object is named after it (and is not stored)."""
    digest = hashlib.sha256(f"filler{index}".encode()).hexdigest()
    source = f"http://filler.example/{index // 1000}/{index}.jpg"
    return SourceResult(source, "mirrored", sha256=digest, ext="jpg", size=1000 + index % 977)


async def fill(url: str, rows: list[SourceResult], sources: int) -> float:
    """Record ``rows``, then fillers up to ``sources`` in all; return the seconds it took."""
    started = time.perf_counter()
    async with open_manifest(Config(manifest=ManifestConfig(url=url))) as manifest:
        await manifest.record_results(rows)
        for start in range(len(rows), sources, BATCH):
            end = min(start + BATCH, sources)
            await manifest.record_results(filler(i) for i in range(start, end))
    return time.perf_counter() - started


async def _visible(session: aiohttp.ClientSession, port: int, source: str, since: float) -> float:
    """Poll one node for ``source`` until it answers 200; return the seconds since ``since``."""
    target = URL(f"http://{HOST}:{port}/?{source}", encoded=True)
    while True:
        async with session.get(target) as response:
            await response.read()
            if response.status == 200:
                return time.perf_counter() - since
        if time.perf_counter() - since > VISIBLE_WITHIN:
            raise RuntimeError(f"{source} not visible on :{port} after {VISIBLE_WITHIN:g} s")


def spread(seconds: list[float]) -> str:
    """Median, p95 (nearest rank) and max, in ms."""
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[max(0, -(-len(ms) * 95 // 100) - 1)]
    return f"median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms"


async def catalog_figures(url: str, ports: list[int], new: int, target: Object) -> list[str]:
    """Commit ``new`` sources one at a time; describe when each showed, and a refresh's work."""
    config = Config(manifest=ManifestConfig(url=url))
    run = f"new-{time.time_ns()}"  # never a source an earlier run added
    visible: list[float] = []
    work: list[float] = []
    async with open_manifest(config) as writer, open_manifest(config) as feed:
        catalog = Catalog(feed=feed)
        started = time.perf_counter()
        await catalog.sync()
        full = time.perf_counter() - started
        loaded = len(catalog.entries)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for index in range(new):
                source = f"http://fresh.example/{run}/{index}.{target.ext}"
                result = SourceResult(
                    source, "mirrored", sha256=target.sha256, ext=target.ext, size=target.size
                )
                await writer.record_results([result])
                committed = time.perf_counter()
                waits = [_visible(session, port, source, committed) for port in ports]
                visible.append(max(await asyncio.gather(*waits)))
                started = time.perf_counter()
                changed = await catalog.sync()
                work.append(time.perf_counter() - started)
                if not changed or catalog.lookup(source) is None:
                    raise RuntimeError(f"the catalog's refresh did not bring {source}")
    return [
        f"catalog refresh, {new} new sources committed one at a time into {loaded:,} "
        f"(PostgreSQL): visible on all {len(ports)} nodes {spread(visible)}",
        f"refresh work per new source (one `Catalog.sync`, its `catalog_changes` read and "
        f"apply): {spread(work)}; a full load of the {loaded:,} rows in the same run: "
        f"{full * 1000:,.0f} ms",
    ]
