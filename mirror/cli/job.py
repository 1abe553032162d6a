"""
The job: ``mirror fetch``, ``mirror run`` (once or ``--every``) and ``mirror demo``.

The commands that fetch import aiohttp and Pillow inside their handlers, so ``mirror scan`` and
``mirror rewrite`` start in a fraction of the time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import random
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mirror.cli import queue
from mirror.cli.options import absolute_paths, check_paths, report_stream
from mirror.config import Config, ManifestConfig, StoreConfig
from mirror.errors import ExitStatus, MirrorError, StoreError, UsageError
from mirror.lock import LockedError, command_line
from mirror.manifest import manifest_exists, open_manifest
from mirror.marker import check_out, check_store, mark_out, mark_store, prepare_demo_dir

if TYPE_CHECKING:
    from mirror.pipeline import Job, RunSummary

log = logging.getLogger("mirror.scan")


def print_summary(
    job: Job, summary: RunSummary, seconds: float, out: TextIO, *, empty: bool = False
) -> None:
    from mirror.summary import plan, run_summary

    lines = plan(summary, job.config.store.location, empty) if job.dry_run else []
    lines += run_summary(
        summary, seconds, rewrite=job.rewrite, dry_run=job.dry_run, raw=job.config.scan.raw
    )
    print("\n".join(lines), file=out)


async def run_job(job: Job, paths: Sequence[Path], quiet: bool) -> RunSummary:
    from mirror.progress import maybe_progress

    # Only a terminal gets progress, so only then are the posts walked twice (for the totals).
    with maybe_progress(job, paths, sys.stderr, not quiet and sys.stderr.isatty()):
        return await job.run(paths)


async def _once(args: argparse.Namespace, config: Config, *, rewrite: bool) -> ExitStatus:
    """
    One run under the store lock of the manifest (a dry run takes none: it writes nothing):
    an ``flock`` beside a SQLite file, an advisory lock of a PostgreSQL database, so two
    machines running over one database exclude each other too.
    """
    from mirror.pipeline import Job

    started = time.monotonic()
    dry_run = getattr(args, "dry_run", False)
    out = getattr(args, "out", None)
    # Only a dry run's plan says whether the store is new.
    empty = dry_run and not await manifest_exists(config)
    paths = args.paths
    async with contextlib.AsyncExitStack() as stack:
        manifest = None
        if not dry_run:
            if config.store.scheme == "file":
                mark_store(Path(config.store.path))
            # Opened first: a PostgreSQL manifest's lock lives in its schema. Taken before the
            # report is opened, so a refused run truncates nobody's report.
            manifest = await stack.enter_async_context(open_manifest(config))
            await stack.enter_async_context(manifest.lock(command_line()))
            if out is not None:
                mark_out(out)
            elif rewrite:
                paths = absolute_paths(paths)
        job = Job(
            config,
            rewrite=rewrite,
            dry_run=dry_run,
            out=out,
            report=report_stream(args, stack),
            only_failed=args.only_failed,
            retry_reasons=frozenset(args.retry_reason or ()),
            refresh_after=args.refresh_after,
            manifest=manifest,
        )
        summary = await run_job(job, paths, args.quiet)
    if not args.quiet:
        print_summary(job, summary, time.monotonic() - started, sys.stderr, empty=empty)
    return summary.exit_status


async def _every(args: argparse.Namespace, config: Config, *, rewrite: bool) -> ExitStatus:
    """Run, sleep ``--every`` with a little jitter, run again; SIGTERM or SIGINT ends it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    current: list[asyncio.Task[ExitStatus]] = []

    def on_signal() -> None:
        stop.set()
        for task in current:
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    first = True
    # Bounded by the signals: each pass is one run and one sleep.
    while not stop.is_set():
        task = asyncio.create_task(_once(args, config, rewrite=rewrite))
        current.append(task)
        try:
            await task
        except asyncio.CancelledError:
            if stop.is_set():
                print("mirror: stopped during a run; what it finished is kept", file=sys.stderr)
                return ExitStatus.INTERRUPTED
            raise
        except LockedError:
            if first:
                raise  # a second scheduler must not start beside the first
            log.warning("skipped this run: the store is locked by another mirror")
        except MirrorError as exc:
            if exc.exit_status == ExitStatus.USAGE:
                raise
            print(f"mirror: error: {exc}; trying again next time", file=sys.stderr)
        finally:
            current.clear()
        first = False
        # Jitter, so jobs started together do not hit the same origins in step.
        delay = args.every * random.uniform(0.95, 1.05)
        if not args.quiet:
            when = time.strftime("%H:%M:%S", time.localtime(time.time() + delay))
            print(f"mirror: next run at {when}", file=sys.stderr)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return ExitStatus.OK


def _job(args: argparse.Namespace, config: Config, *, rewrite: bool) -> ExitStatus:
    dry_run = getattr(args, "dry_run", False)
    out = getattr(args, "out", None)
    if getattr(args, "every", None) is not None and (dry_run or out is not None):
        raise UsageError("--every repeats a real run: it does not go with --dry-run or --out")
    if dry_run and args.report is not None and str(args.report) == "-":
        raise UsageError("--report - and --dry-run both write to stdout: give --report a FILE")
    check_paths(args.paths, config)
    if config.store.scheme == "file":
        check_store(Path(config.store.path), create=config.store.create, makes_missing=True)
    if out is not None:
        check_out(out, args.paths)
    if getattr(args, "every", None) is not None:
        return asyncio.run(_every(args, config, rewrite=rewrite))
    return asyncio.run(_once(args, config, rewrite=rewrite))


def cmd_fetch(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Download and verify every reference into the store; posts untouched."""
    return _job(args, config, rewrite=False)


def cmd_run(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Scan, fetch, verify, store and rewrite."""
    if args.workers is not None:
        return queue.run_with_workers(args, config)
    return _job(args, config, rewrite=True)


def cmd_demo(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Run the whole job on the bundled example against a bundled local origin."""
    from mirror.demo import EXAMPLES, demo_origin
    from mirror.pipeline import Job

    # Package data, found beside the installed package (pyproject.toml ships it).
    examples = args.examples or EXAMPLES
    if not (examples / "posts").is_dir() or not (examples / "origin").is_dir():
        raise UsageError(f"{examples} has no posts/ and origin/: pass --examples DIR")
    work = args.dir
    prepare_demo_dir(work)
    try:
        shutil.copytree(examples / "posts", work / "posts")
    except OSError as exc:
        raise StoreError(f"cannot copy the example posts to {work / 'posts'}: {exc}") from exc
    mark_store(work / "cache")

    async def go() -> tuple[Job, RunSummary, float]:
        started = time.monotonic()
        async with demo_origin(examples / "origin") as origin:
            network = dataclasses.replace(
                config.network, connect_to=origin.connect_to, cacert=str(origin.cacert)
            )
            # Always a local store in the demo's folder, with its manifest inside.
            store = StoreConfig(url=str(work / "cache"), durability=config.store.durability)
            demo_config = dataclasses.replace(
                config, network=network, store=store, manifest=ManifestConfig()
            )
            with (work / "report.jsonl").open("w", encoding="utf-8") as report:
                job = Job(demo_config, rewrite=True, report=report)
                summary = await run_job(job, absolute_paths([work / "posts"]), args.quiet)
        return job, summary, time.monotonic() - started

    job, summary, seconds = asyncio.run(go())
    print_summary(job, summary, seconds, sys.stdout)
    print(
        f"\nrewritten posts: {work / 'posts'}\nstore (objects + manifest): {work / 'cache'}\n"
        f"per-reference report: {work / 'report.jsonl'}\n"
        "A few origin images are faulty on purpose (a 404, an HTML page, a hotlink placeholder\n"
        "that the proxy source then replaces), so some references end failed; `mirror run`\n"
        "would exit 1 for them. The demo itself exits 0 when the job ran. Next, on your posts:\n"
        "  mirror scan source/_posts      then      mirror run --dry-run source/_posts",
        file=sys.stdout,
    )
    return ExitStatus.OK
