"""
The queue's commands: ``mirror enqueue``, ``mirror worker``, ``mirror status`` and
``mirror run --workers N``, registered on the parser by :func:`add_commands`.

``run --workers N`` on one machine: it needs a ``postgresql://`` manifest (the queue lives
there; exit 2 otherwise), starts N ``mirror worker`` processes with this run's checked config
(in the environment, as ``serve --workers`` hands it on), queues the posts' sources, waits
until the queue has drained (woken by each task that ends), stops them by pid (SIGTERM, then
SIGKILL past ``STOP_SECONDS``) and rewrites the posts from the manifest as ``mirror run`` does.
A worker that dies is not replaced: its tasks are queued again for the others once its
heartbeat is stale.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mirror.cli.options import absolute_paths, check_paths, report_stream
from mirror.config import Config, config_from_mapping
from mirror.errors import ExitStatus, QueueError, UsageError
from mirror.marker import check_store, mark_store

# procrastinate and psycopg are imported by the commands only, not with the cli.

if TYPE_CHECKING:
    from mirror.pipeline import RunSummary

CONFIG_ENV = "MIRROR_QUEUE_CONFIG"
PR_SET_PDEATHSIG = 1
# A worker asked to stop gets this long to give its tasks back before SIGKILL.
STOP_SECONDS = 20.0


def add_commands(
    command: Callable[[str, list[argparse.ArgumentParser]], argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    network: argparse.ArgumentParser,
) -> None:
    """Add ``enqueue``, ``worker`` and ``status`` with ``command(name, parents)``."""
    enq = command("enqueue", [common])
    enq.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    enq.add_argument("--json", action="store_true", help="print the summary as JSON")
    enq.set_defaults(handler=cmd_enqueue)
    worker = command("worker", [common, network])
    worker.add_argument(
        "--concurrency",
        type=_positive,
        metavar="N",
        help="sources fetched at once (queue.concurrency, else fetch.jobs)",
    )
    worker.add_argument("--from-run", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(handler=cmd_worker)
    status = command("status", [common])
    status.add_argument("--json", action="store_true", help="print it as JSON")
    status.set_defaults(handler=cmd_status)


def add_run_option(run: argparse.ArgumentParser) -> None:
    """Add ``--workers N`` to ``mirror run``."""
    run.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="fetch with N local worker processes over the queue (needs a postgresql manifest)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def require_postgres(config: Config, command: str) -> None:
    """Refuse (UsageError, exit 2) without a postgresql manifest: the queue lives there."""
    from mirror.queue.app import require_postgres as check

    check(config, command)


def cmd_enqueue(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Queue one task per source of the posts that needs fetching."""
    require_postgres(config, "mirror enqueue")
    summary = asyncio.run(_enqueue(config, args.paths))
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(
            f"mirror: queued {summary['queued']} of {summary['sources']} sources "
            f"({summary['already_queued']} already queued, {summary['mirrored']} mirrored, "
            f"{summary['not_due']} not due yet)",
            file=sys.stderr,
        )
    return ExitStatus.OK


async def _enqueue(config: Config, paths: Sequence[Path]) -> dict[str, Any]:
    from mirror.manifest import open_manifest
    from mirror.queue.enqueue import enqueue
    from mirror.queue.worker import open_queue

    app = await open_queue(config)
    async with app.open_async(), open_manifest(config) as manifest:
        summary = (await enqueue(config, paths, app, manifest)).to_json()
        # Planned without statistics (a new table), fetching a job scans the queue once per job.
        await app.connector.execute_query_async("ANALYZE procrastinate_jobs")
        return summary


def cmd_worker(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Fetch queued sources until SIGTERM or SIGINT."""
    from mirror.queue.worker import run_worker

    if args.from_run:
        # Started by `run --workers`: its checked config, not this command line's.
        config = config_from_mapping(json.loads(os.environ[CONFIG_ENV]))
    require_postgres(config, "mirror worker")
    ready_store(config)
    outcomes = asyncio.run(run_worker(config, args.concurrency))
    if not args.quiet:
        done = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "nothing"
        print(f"mirror: worker stopped; it did {done}", file=sys.stderr)
    return ExitStatus.OK


def cmd_status(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Print the queue per origin host and the workers alive."""
    import time

    from mirror.queue.status import read_status

    status = asyncio.run(read_status(config))
    if status is None:
        if args.json:
            print(json.dumps({"hosts": [], "workers": [], "queue": False}))
        else:
            print("mirror: no queue in this database yet (mirror enqueue creates it)")
        return ExitStatus.OK
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print("\n".join(status.lines(time.time())))
    return ExitStatus.OK


def _die_with_parent() -> None:
    # Linux: the worker gets SIGTERM when the run dies, even by SIGKILL (no orphans fetching).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(config: Config, count: int) -> list[subprocess.Popen[bytes]]:
    settings = dataclasses.asdict(config)
    env = {**os.environ, CONFIG_ENV: json.dumps(settings)}
    command = [sys.executable, "-m", "mirror", "worker", "--from-run", "--quiet"]
    return [subprocess.Popen(command, env=env, preexec_fn=_die_with_parent) for _ in range(count)]


def _stop(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.terminate()
    for proc in workers:
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_workers(config: Config, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run ``count`` worker processes for the block; stop them by pid after it, however it ends."""
    workers = _spawn(config, count)
    try:
        yield workers
    finally:
        _stop(workers)


async def _wait_drained(config: Config, workers: Sequence[subprocess.Popen[bytes]]) -> None:
    import psycopg

    from mirror.manifest.postgres import redact
    from mirror.queue.schema import TASK_CHANNEL
    from mirror.queue.status import pending

    url = config.manifest.url
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f"LISTEN {TASK_CHANNEL}")
            # Bounded by the queue: it drains, or every worker died (then the run says so).
            while await pending(conn) > 0:
                if all(proc.poll() is not None for proc in workers):
                    raise QueueError("every worker stopped before the queue drained")
                # Woken by the next task that ends, else looks again after poll_interval.
                async for _ in conn.notifies(timeout=config.queue.poll_interval, stop_after=1):
                    pass
    except psycopg.Error as exc:
        raise QueueError(f"queue {redact(url)}: {redact(str(exc).strip())}") from exc


def run_with_workers(args: argparse.Namespace, config: Config) -> ExitStatus:
    """
    ``mirror run --workers N``: queue, fetch with N local workers, rewrite (module docstring).

    Raises:
        UsageError: no postgresql manifest, or an option a queued run cannot honour.
    """
    started = time.monotonic()
    require_postgres(config, "mirror run --workers")
    refused = [
        flag
        for flag, given in (
            ("--dry-run", args.dry_run),
            ("--out", args.out is not None),
            ("--every", args.every is not None),
            ("--refresh-after", args.refresh_after is not None),
            ("--only-failed", args.only_failed),
            ("--retry-reason", bool(args.retry_reason)),
        )
        if given
    ]
    if refused:
        raise UsageError(
            f"--workers does not go with {', '.join(refused)}: the queue fetches what is not "
            "mirrored or is due (run without --workers for these)"
        )
    check_paths(args.paths, config)
    ready_store(config)
    paths = absolute_paths(args.paths)
    # SIGTERM ends the run through its finally blocks, so the workers are stopped by pid.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(ExitStatus.INTERRUPTED))
    with contextlib.ExitStack() as stack:
        report = report_stream(args, stack)
        # The workers start first: their start-up overlaps the scan and the queueing.
        with local_workers(config, args.workers) as workers:
            asyncio.run(_enqueue(config, paths))
            asyncio.run(_wait_drained(config, workers))
            # Asked to stop now, waited for after the rewrite: their shutdown overlaps it.
            for proc in workers:
                proc.terminate()
            summary = asyncio.run(_rewrite(config, paths, report))
    if not args.quiet:
        from mirror.summary import run_summary

        seconds = time.monotonic() - started
        lines = run_summary(
            summary, seconds, rewrite=True, dry_run=False, raw=config.scan.raw, workers=args.workers
        )
        print("\n".join(lines), file=sys.stderr)
    return summary.exit_status


async def _rewrite(config: Config, paths: Sequence[Path], report: TextIO | None) -> RunSummary:
    from mirror.manifest import open_manifest
    from mirror.pipeline import RunSummary
    from mirror.queue.rewrite import Report, rewrite_posts
    from mirror.store import open_store

    async with open_manifest(config) as manifest:
        if report is None:
            return await rewrite_posts(config, paths, manifest, RunSummary())
        # The store only names the report's files: opened (a bucket's client) for that alone.
        async with open_store(config) as store:
            return await rewrite_posts(
                config, paths, manifest, RunSummary(), Report(report, store.key)
            )


def ready_store(config: Config) -> None:
    """
    A folder store: refuse a folder that is not one (as `mirror run` does), then mark it, so
    what the workers fill is a store to every other command.

    Raises:
        UsageError: the folder holds files and is not a store (and ``store.create`` is off).
    """
    if config.store.scheme == "file":
        folder = Path(config.store.path)
        check_store(folder, create=config.store.create, makes_missing=True)
        mark_store(folder)
