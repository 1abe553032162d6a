"""
Measure the last step of `mirror run --workers N`: rewriting the posts from the manifest.

One command, nothing but loopback: N posts of one image each, wrapped in the front matter's
``headimg`` and an ``<img>`` (the aggregator's common shape: many small posts), their sources
recorded as mirrored in a fresh manifest, then the rewrite
(:func:`mirror.queue.rewrite.rewrite_posts`: rows read, spans journalled, posts replaced
atomically, posts recorded) timed on a fresh copy of the posts, ``--runs`` times per backend,
alternating: SQLite (the peer, in-process) and PostgreSQL (bench/pg.py's server: Debian's, fsync
off, 127.0.0.1). The figure is each backend's median and PostgreSQL's ratio to SQLite's.

    python bench/rewrite.py                          # 2,000 posts, 3 runs per backend
    python bench/rewrite.py --smoke                  # 50 posts, 1 run: does it all work?
    python bench/rewrite.py --append BENCHMARKS.md   # also append the results in Markdown

Exit status 0 when every run rewrote every post, 1 otherwise (each problem is printed).
PostgreSQL is skipped with a note where its server binaries are not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pg

from mirror.config import Config, ManifestConfig, StoreConfig, load_config
from mirror.manifest import SourceResult, open_manifest
from mirror.pipeline import RunSummary
from mirror.queue.rewrite import rewrite_posts

PROXY = "https://cors.zfour.workers.dev/?"


def source(i: int) -> str:
    """The origin URL post ``i`` names."""
    return f"http://host{i % 20:02}.example/img/{i}.jpg"


def write_posts(folder: Path, count: int) -> None:
    """Write ``count`` posts of one wrapped, sized image each."""
    folder.mkdir(parents=True)
    for i in range(count):
        text = (
            f"\n---\ntitle: 'post {i}'\nheadimg: '{PROXY}{source(i)}'\n---\n"
            f'<p><img src="{PROXY}{source(i)}" data-size="550,412"></p>\n'
        )
        (folder / f"post-{i:05}.md").write_text(text, encoding="utf-8")


async def fill(config: Config, count: int) -> None:
    """Record every post's source as mirrored (each its own object)."""
    now = time.time()
    results = [
        SourceResult(
            source(i),
            "mirrored",
            sha256=hashlib.sha256(source(i).encode()).hexdigest(),
            ext="jpg",
            size=1000,
            attempted_at=now,
        )
        for i in range(count)
    ]
    async with open_manifest(config) as manifest:
        for start in range(0, count, 256):
            await manifest.record_results(results[start : start + 256])


async def rewrite(config: Config, posts: Path) -> tuple[float, RunSummary]:
    """Time one rewrite of ``posts``: the manifest opened first, untimed."""
    async with open_manifest(config) as manifest:
        started = time.perf_counter()
        summary = await rewrite_posts(config, [posts], manifest, RunSummary())
        return time.perf_counter() - started, summary


def one_run(config: Config, template: Path, work: Path, count: int, problems: list[str]) -> float:
    """Rewrite a fresh copy of the posts; note a run that missed a post."""
    posts = work / "posts"
    shutil.rmtree(posts, ignore_errors=True)
    shutil.copytree(template, posts)
    seconds, summary = asyncio.run(rewrite(config, posts))
    if (summary.posts, summary.rewritten) != (count, count):
        problems.append(f"{config.manifest.url}: {summary.posts} posts, {summary.rewritten} new")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="posts (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per backend (median)")
    parser.add_argument("--smoke", action="store_true", help="50 posts, 1 run")
    parser.add_argument("--append", type=Path, help="append the results in Markdown to FILE")
    args = parser.parse_args(argv)
    count, runs = (50, 1) if args.smoke else (args.n, args.runs)
    problems: list[str] = []
    server = pg.Postgres() if pg.available() else None
    with tempfile.TemporaryDirectory(prefix="mirror-bench-rewrite-", dir="/dev/shm") as tmp:
        root = Path(tmp)
        write_posts(root / "template", count)
        (root / "mirror.toml").write_text("", encoding="utf-8")
        base = load_config(root / "mirror.toml")
        makers: dict[str, Callable[[int], Config]] = {
            "SQLite": lambda n: _config(base, f"sqlite:///{root / f'sqlite-{n}.sqlite3'}", root),
        }
        if server is not None:
            server.start()
            makers["PostgreSQL"] = lambda n: _config(base, server.fresh_database(), root)
        else:
            print("PostgreSQL server binaries not found: its row is skipped", file=sys.stderr)
        seconds: dict[str, list[float]] = {name: [] for name in makers}
        try:
            for n in range(runs):
                for name, make in makers.items():
                    config = make(n)  # untimed: a fresh manifest, filled
                    asyncio.run(fill(config, count))
                    seconds[name].append(one_run(config, root / "template", root, count, problems))
        finally:
            if server is not None:
                server.stop()
    table = _table(seconds, count)
    print(table)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if args.append is not None and not args.smoke:
        with args.append.open("a", encoding="utf-8") as out:
            out.write(_markdown(table, count, runs))
    return 1 if problems else 0


def _config(base: Config, url: str, root: Path) -> Config:
    return dataclasses.replace(
        base, manifest=ManifestConfig(url=url), store=StoreConfig(url=str(root / "cache"))
    )


def _table(seconds: dict[str, list[float]], count: int) -> str:
    peer = statistics.median(seconds["SQLite"])
    lines = [
        "| manifest   | median s | min s | max s | ms/post | x SQLite |",
        "| ---------- | -------: | ----: | ----: | ------: | -------: |",
    ]
    for name, values in seconds.items():
        median = statistics.median(values)
        lines.append(
            f"| {name:<10} | {median:8.2f} | {min(values):5.2f} | {max(values):5.2f} "
            f"| {median / count * 1000:7.2f} | {median / peer:8.2f} |"
        )
    return "\n".join(lines)


def _markdown(table: str, count: int, runs: int) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    return (
        f"\n## The rewrite of `run --workers` from SQLite vs PostgreSQL, {when}\n\n"
        f"- {os.cpu_count()} CPUs, {platform.platform()}; load average before the run {load:.2f}\n"
        f"- Python {platform.python_version()}; {count:,} posts of one image each (wrapped in "
        f"`headimg` and an `<img>`) on tmpfs, {runs} runs per backend, alternating; "
        "PostgreSQL: bench/pg.py's server (fsync off, 127.0.0.1), a fresh database per run\n\n"
        f"{table}\n\n```sh\npython bench/rewrite.py --runs {runs} --append BENCHMARKS.md\n```\n"
    )


if __name__ == "__main__":
    sys.exit(main())
