"""
The command line: argument parsing, logging setup, and the one place errors become exit statuses.

Data (``--json``, diffs) goes to stdout; warnings, progress and summaries go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mirror import __version__
from mirror.config import Config, load_config, parse_duration, with_public_wrapper
from mirror.errors import ExitStatus, MirrorError, UsageError
from mirror.extract import Extractor
from mirror.lock import LockedError, StoreLock, command_line
from mirror.log import configure_logging
from mirror.manifest import Manifest, manifest_path
from mirror.models import ImageRef, Post
from mirror.rewrite import decode, post_diff, rewrap, rewrite
from mirror.scan import find_posts, iter_posts, write_recorded
from mirror.source import origin_host, wrapper_base

if TYPE_CHECKING:
    from mirror.pipeline import Job, RunSummary

# The commands that fetch, serve or draw import aiohttp and Pillow inside their handlers, so
# `mirror scan` and `mirror rewrite` start in a fraction of the time.

log = logging.getLogger("mirror.scan")

Handler = Callable[[argparse.Namespace, Config], ExitStatus]


# What json.dumps(..., ensure_ascii=False) uses for strings; calling it directly is several times
# faster than json.dumps on a dict, with byte-identical output (tests/test_cli.py checks it).
_JSON_STR = json.encoder.encode_basestring
PLACE_WIDTH = 48
WHERE_WIDTH = 24


def _ref_json(ref: ImageRef) -> str:
    declared = f"[{ref.declared[0]}, {ref.declared[1]}]" if ref.declared else "null"
    kind = "null" if ref.declared_kind is None else _JSON_STR(ref.declared_kind)
    return (
        f'{{"post": {_JSON_STR(ref.post)}, "line": {ref.line}, "url": {_JSON_STR(ref.url)}, '
        f'"decoded": {_JSON_STR(ref.decoded)}, "source": {_JSON_STR(ref.source)}, '
        f'"where": {_JSON_STR(ref.where)}, "declared": {declared}, "declared_kind": {kind}, '
        f'"proxied": {"true" if ref.proxied else "false"}}}'
    )


def _table_row(ref: ImageRef) -> str:
    place = f"{ref.post}:{ref.line}"
    if len(place) > PLACE_WIDTH:
        place = "…" + place[-(PLACE_WIDTH - 1) :]
    declared = f"{ref.declared[0]}x{ref.declared[1]}" if ref.declared else "-"
    kind = "wrapped" if ref.proxied else "raw"
    return (
        f"{place:<{PLACE_WIDTH}}  {ref.where:<{WHERE_WIDTH}}  {kind:<7}  {declared:<9}  "
        f"{ref.source}"
    )


def _print_totals(
    posts: int, by_where: Counter[str], wrapped_by_where: Counter[str], hosts: Counter[str]
) -> None:
    total, wrapped = sum(by_where.values()), sum(wrapped_by_where.values())
    out = sys.stdout
    print(
        f"\n{total} references in {posts} posts: {wrapped} wrapped, {total - wrapped} raw", file=out
    )
    print("\nby where:", file=out)
    for where, count in by_where.most_common():
        print(
            f"  {where:<{WHERE_WIDTH}}  {count:>6}  ({wrapped_by_where[where]} wrapped)", file=out
        )
    print("\nby origin host:", file=out)
    for host, count in hosts.most_common():
        print(f"  {host:<40}  {count:>6}", file=out)


def cmd_scan(args: argparse.Namespace, config: Config) -> ExitStatus:
    """List every image reference under the given paths, streaming: memory stays flat."""
    extractor = Extractor(config.scan)
    by_where: Counter[str] = Counter()
    wrapped_by_where: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    posts = 0
    if not args.json:
        header = (
            f"{'POST:LINE':<{PLACE_WIDTH}}  {'WHERE':<{WHERE_WIDTH}}  KIND     DECLARED   SOURCE"
        )
        print(header, file=sys.stdout)
    for post in iter_posts(args.paths, config.scan):
        posts += 1
        found = extractor(decode(post.data), post.rel)
        if not found:
            continue
        line = _ref_json if args.json else _table_row
        sys.stdout.write("\n".join(map(line, found)) + "\n")
        if not args.json:
            by_where.update(r.where for r in found)
            wrapped_by_where.update(r.where for r in found if r.proxied)
            hosts.update(origin_host(r.source) for r in found)
    if not args.json:
        _print_totals(posts, by_where, wrapped_by_where, hosts)
    return ExitStatus.OK


def _load_map(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--map {path}: cannot read it: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"--map {path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise UsageError(f"--map {path}: must be a JSON object of source URL -> new URL strings")
    return data


def _manifest_mapping(config: Config) -> dict[str, str]:
    path = manifest_path(Path(config.store.path))
    if not path.is_file():
        raise UsageError(f"no --map given and no manifest at {path}: run `mirror fetch` first")
    with Manifest(path, readonly=True) as manifest:
        return manifest.mirrored_mapping(config.rewrite.base_url)


def _rewrap_base(args: argparse.Namespace) -> str | None:
    if args.rewrap is None:
        return None
    if args.map is not None:
        raise UsageError("--map and --rewrap cannot be combined: --rewrap needs no map")
    try:
        return wrapper_base(args.rewrap)
    except ValueError as exc:
        raise UsageError(f"--rewrap: {exc}") from exc


def _print_diff(post: Post, data: bytes) -> None:
    sys.stdout.writelines(post_diff(post.data, data, post.rel))


def cmd_rewrite(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Rewrite mapped (or, with --rewrap, wrapped) references in place, into --out, or as a diff."""
    if args.revert:
        return _revert(args, config)
    base = _rewrap_base(args)
    mapping: dict[str, str] = {}
    if base is not None:
        # Posts rewrapped by an earlier run then read as wrapped, as `mirror scan` reports them.
        config = with_public_wrapper(config, base)
    elif args.map is not None:
        mapping = _load_map(args.map)
    else:
        mapping = _manifest_mapping(config)
    extractor = Extractor(config.scan)
    posts = changed = spans = skipped = 0
    with contextlib.ExitStack() as stack:
        manifest = None
        if not args.dry_run and args.out is None:
            # In place: under the store lock, and recorded so `--revert` can undo it.
            root = Path(config.store.path)
            stack.enter_context(StoreLock(root, command_line()))
            manifest = stack.enter_context(
                Manifest(manifest_path(root), durability=config.store.durability)
            )
        for post in iter_posts(args.paths, config.scan):
            posts += 1
            if base is not None:
                result = rewrap(post.data, base, extractor, post.rel)
            else:
                result = rewrite(post.data, mapping, extractor, post.rel)
            if args.dry_run:
                _print_diff(post, result.data)
            elif (result.spans or args.out is not None) and not write_recorded(
                post, result.data, result.spans, manifest, args.out
            ):
                skipped += 1
                continue
            if result.spans:
                changed += 1
                spans += len(result.spans)
    if args.dry_run:
        verb = "would rewrite" if base is None else "would rewrap"
    else:
        verb = "rewrote" if base is None else "rewrapped"
    print(
        f"mirror: {posts} posts, {verb} {spans} references in {changed} posts"
        + (f", {skipped} changed on disk meanwhile and were left alone" if skipped else ""),
        file=sys.stderr,
    )
    return ExitStatus.INCOMPLETE if skipped else ExitStatus.OK


def _revert(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Put back what mirror replaced in the posts, from the manifest's recorded spans."""
    from mirror.revert import revert

    if args.map is not None or args.rewrap is not None or args.out is not None:
        raise UsageError("--revert cannot be combined with --map, --rewrap or --out")

    result = revert(config, args.paths, show=_print_diff if args.dry_run else None)
    print(result.summary(args.dry_run), file=sys.stderr)
    return result.exit_status


def _care_output(lines: list[str], summary: list[str], quiet: bool) -> None:
    for line in lines:
        print(line, file=sys.stdout)
    if not quiet:
        for line in summary:
            print(line, file=sys.stderr)


def cmd_verify(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Re-hash every object and check it against the manifest; --repair fixes what it can."""
    from mirror.audit import verify

    audit = verify(config, repair=args.repair)
    _care_output(audit.lines(), audit.summary(), args.quiet)
    return audit.exit_status


def cmd_gc(args: argparse.Namespace, config: Config) -> ExitStatus:
    """List (--apply: delete) the objects no post under PATH needs."""
    from mirror.audit import collect

    collection = collect(config, args.paths, apply=args.apply)
    _care_output(collection.lines(), collection.summary(), args.quiet)
    return ExitStatus.OK


def cmd_export(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Copy (--link: hard-link) the objects the posts need into DIR/objects/."""
    from mirror.export import export

    exported = export(config, args.dir, args.paths, link=args.link)
    _care_output(exported.lines(), exported.summary(), args.quiet)
    return exported.exit_status


def _with_options(config: Config, args: argparse.Namespace) -> Config:
    """Apply the command line's overrides to the config tree."""
    store, fetch, network = config.store, config.fetch, config.network
    if getattr(args, "store", None) is not None:
        store = dataclasses.replace(store, path=str(args.store))
    if getattr(args, "jobs", None) is not None:
        fetch = dataclasses.replace(fetch, jobs=args.jobs)
    if getattr(args, "connect_to", None):
        connect_to = network.connect_to + tuple(args.connect_to)
        network = dataclasses.replace(network, connect_to=connect_to)
    if getattr(args, "cacert", None) is not None:
        network = dataclasses.replace(network, cacert=str(args.cacert))
    return dataclasses.replace(config, store=store, fetch=fetch, network=network)


def _print_summary(summary: RunSummary, seconds: float, out: TextIO) -> None:
    refs = sum(summary.statuses.values())
    by_status = ", ".join(f"{n} {s}" for s, n in summary.statuses.most_common()) or "none"
    megabytes = summary.fetched_bytes / 1e6
    unchanged = f" ({summary.unchanged} unchanged since the last run)" if summary.unchanged else ""
    print(
        f"mirror: {summary.posts} posts{unchanged}, {refs} references: {by_status}; "
        f"{summary.rewritten} posts rewritten; {megabytes:.1f} MB fetched in {seconds:.1f} s",
        file=out,
    )
    if summary.left_alone:
        print(
            f"  {summary.left_alone} posts changed on disk meanwhile and were left alone", file=out
        )
    if summary.waiting:
        print(f"  {summary.waiting} unchanged posts still wait for images in backoff", file=out)
    if summary.reasons:
        reasons = ", ".join(f"{r} {n}" for r, n in summary.reasons.most_common())
        print(f"  not mirrored, by reason: {reasons}", file=out)
        hosts = ", ".join(f"{h} {n}" for h, n in summary.failed_hosts.most_common(10))
        print(f"  not mirrored, by host: {hosts}", file=out)


def progress_line(summary: RunSummary, total_posts: int, elapsed: float) -> str:
    """Describe a run in progress: posts done/total, references, bytes, rate and ETA."""
    done = sum(summary.statuses.values())
    megabytes = summary.fetched_bytes / 1e6
    line = (
        f"{summary.posts}/{total_posts} posts, {done} references done, "
        f"{megabytes:.1f} MB ({megabytes / max(elapsed, 1e-3):.1f} MB/s)"
    )
    if 0 < summary.posts < total_posts:
        left = elapsed / summary.posts * (total_posts - summary.posts)
        line += f", ETA {int(left) // 60}:{int(left) % 60:02d}"
    return line


async def _progress(job: Job, total_posts: int, started: float) -> None:
    """Redraw one status line on a terminal until cancelled."""
    try:
        while True:
            await asyncio.sleep(0.5)
            line = progress_line(job.summary, total_posts, time.monotonic() - started)
            sys.stderr.write(f"\r{line}\x1b[K")
            sys.stderr.flush()
    finally:
        sys.stderr.write("\r\x1b[K")


async def _run_job(job: Job, paths: Sequence[Path], quiet: bool) -> RunSummary:
    started = time.monotonic()
    ticker = None
    if not quiet and sys.stderr.isatty():
        # Only a terminal gets progress, so only then is the tree walked twice (for the total).
        total = sum(1 for _ in find_posts(paths, job.config.scan))
        ticker = asyncio.create_task(_progress(job, total, started))
    try:
        return await job.run(paths)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def _once(args: argparse.Namespace, config: Config, *, rewrite: bool) -> ExitStatus:
    """One run under the store lock (a dry run takes none: it writes nothing)."""
    from mirror.pipeline import Job

    started = time.monotonic()
    dry_run = getattr(args, "dry_run", False)
    with contextlib.ExitStack() as stack:
        if not dry_run:
            stack.enter_context(StoreLock(Path(config.store.path), command_line()))
        report = None
        if args.report is not None:
            report = stack.enter_context(args.report.open("w", encoding="utf-8"))
        job = Job(
            config,
            rewrite=rewrite,
            dry_run=dry_run,
            out=getattr(args, "out", None),
            report=report,
            only_failed=args.only_failed,
            retry_reasons=frozenset(args.retry_reason or ()),
            refresh_after=args.refresh_after,
        )
        summary = await _run_job(job, args.paths, args.quiet)
    if not args.quiet:
        _print_summary(summary, time.monotonic() - started, sys.stderr)
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
    if getattr(args, "every", None) is not None:
        if getattr(args, "dry_run", False) or getattr(args, "out", None) is not None:
            raise UsageError("--every repeats a real run: it does not go with --dry-run or --out")
        return asyncio.run(_every(args, config, rewrite=rewrite))
    return asyncio.run(_once(args, config, rewrite=rewrite))


def cmd_fetch(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Download and verify every reference into the store; posts untouched."""
    return _job(args, config, rewrite=False)


def cmd_run(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Scan, fetch, verify, store and rewrite."""
    return _job(args, config, rewrite=True)


def cmd_serve(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Serve /?<url> and stored objects until SIGTERM."""
    from mirror.workers import run_serve

    overrides = {
        name: getattr(args, name)
        for name in ("host", "port", "workers", "open", "accel_redirect")
        if getattr(args, name) is not None
    }
    config = dataclasses.replace(config, serve=dataclasses.replace(config.serve, **overrides))
    return run_serve(config, args.worker_of)


def cmd_demo(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Run the whole job on the bundled example against a bundled local origin."""
    from mirror.demo import demo_origin
    from mirror.pipeline import Job

    examples = args.examples
    if not (examples / "posts").is_dir() or not (examples / "origin").is_dir():
        raise UsageError(f"{examples} has no posts/ and origin/: pass --examples DIR")
    work = args.dir
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(examples / "posts", work / "posts")

    async def go() -> tuple[RunSummary, float]:
        started = time.monotonic()
        async with demo_origin(examples / "origin") as origin:
            network = dataclasses.replace(
                config.network, connect_to=origin.connect_to, cacert=str(origin.cacert)
            )
            store = dataclasses.replace(config.store, path=str(work / "cache"))
            demo_config = dataclasses.replace(config, network=network, store=store)
            with (work / "report.jsonl").open("w", encoding="utf-8") as report:
                job = Job(demo_config, rewrite=True, report=report)
                summary = await _run_job(job, [work / "posts"], args.quiet)
        return summary, time.monotonic() - started

    summary, seconds = asyncio.run(go())
    _print_summary(summary, seconds, sys.stdout)
    print(
        f"\nrewritten posts: {work / 'posts'}\nstore (objects + manifest): {work / 'cache'}\n"
        f"per-reference report: {work / 'report.jsonl'}\n"
        "A few origin images are faulty on purpose (a 404, an HTML page, a hotlink placeholder\n"
        "that the proxy source then replaces), so some references end failed; `mirror run`\n"
        "would exit 1 for them. The demo itself exits 0 when the job ran.",
        file=sys.stdout,
    )
    return ExitStatus.OK


def cmd_report(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Write the self-contained HTML report of the store (linked to the posts given)."""
    from mirror.report import write_report

    if args.gallery is not None and args.gallery < 0:
        raise UsageError(f"--gallery must be 0 or more, not {args.gallery}")
    extra = {} if args.gallery is None else {"gallery": args.gallery}
    report = write_report(config, args.html, args.paths, **extra)
    if not args.quiet:
        counts = Counter(entry.status for entry in report.sources)
        print(
            f"mirror: wrote {args.html}: {len(report.sources)} sources "
            f"({', '.join(f'{n} {s}' for s, n in counts.most_common()) or 'none'}), "
            f"{len(report.gallery)} of {report.gallery_total} objects in the gallery",
            file=sys.stderr,
        )
    return ExitStatus.OK


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per job."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="config file (default: ./config.toml if any)")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", help="errors only")

    parser = argparse.ArgumentParser(
        prog="mirror", description="Rescue images behind a dying CORS proxy and rewrite posts."
    )
    parser.add_argument("--version", action="version", version=f"mirror {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scan = sub.add_parser("scan", parents=[common], help="list every image reference")
    scan.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    scan.add_argument("--json", action="store_true", help="JSON Lines on stdout")
    scan.set_defaults(handler=cmd_scan)

    rw = sub.add_parser("rewrite", parents=[common], help="point references at new URLs")
    rw.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    rw.add_argument(
        "--map", type=Path, help="JSON object: source URL -> new URL (default: the manifest)"
    )
    rw.add_argument("--store", type=Path, help="store folder (default: store.path, ./cache)")
    rw.add_argument("--out", type=Path, help="write copies under DIR instead of in place")
    rw.add_argument("--dry-run", action="store_true", help="print a unified diff, write nothing")
    rw.add_argument(
        "--rewrap",
        metavar="URL",
        help="point wrapped references at URL/?<source> (mirror serve); no map or manifest",
    )
    rw.add_argument(
        "--revert",
        action="store_true",
        help="put back the original text of every span mirror replaced (from the manifest)",
    )
    rw.set_defaults(handler=cmd_rewrite)

    network = argparse.ArgumentParser(add_help=False)
    network.add_argument("--store", type=Path, help="store folder (default: store.path, ./cache)")
    network.add_argument(
        "--connect-to",
        action="append",
        metavar="HOST:PORT:HOST2:PORT2",
        help="connect to HOST2:PORT2 for requests to HOST:PORT (repeatable; curl's meaning)",
    )
    network.add_argument("--cacert", type=Path, help="PEM CAs trusted besides the system's")
    network.add_argument("--report", type=Path, help="write a JSON Lines report, one per reference")
    network.add_argument("--jobs", type=int, help="concurrent downloads (default fetch.jobs, 32)")

    job = argparse.ArgumentParser(add_help=False)
    job.add_argument(
        "--every",
        type=_duration,
        metavar="DURATION",
        help="run again every DURATION (30m, 1h, 1d) until SIGTERM",
    )
    job.add_argument(
        "--refresh-after",
        type=_duration,
        metavar="DURATION",
        help="revalidate objects older than DURATION with conditional requests",
    )
    job.add_argument(
        "--only-failed", action="store_true", help="retry only what failed before (no backoff)"
    )
    job.add_argument(
        "--retry-reason",
        action="append",
        metavar="REASON",
        help="retry only failures with this reason, e.g. size-mismatch (repeatable)",
    )

    fetch = sub.add_parser("fetch", parents=[common, network, job], help="download and verify")
    fetch.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    fetch.set_defaults(handler=cmd_fetch)

    run = sub.add_parser("run", parents=[common, network, job], help="scan + fetch + rewrite")
    run.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    run.add_argument("--out", type=Path, help="write rewritten copies under DIR")
    run.add_argument("--dry-run", action="store_true", help="no network, no writes: print diffs")
    run.set_defaults(handler=cmd_run)

    serve = sub.add_parser(
        "serve", parents=[common, network], help="answer as the CORS proxy, from the store"
    )
    serve.add_argument("--host", help="bind address (default serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default serve.port, 8080; 0: any)")
    serve.add_argument("--workers", type=int, help="worker processes (default serve.workers, 1)")
    serve.add_argument(
        "--open", action="store_true", default=None, help="serve any image URL (serve.open)"
    )
    serve.add_argument(
        "--accel-redirect",
        metavar="PREFIX",
        help="behind nginx: answer /?<url> hits with X-Accel-Redirect: PREFIX<ab>/<sha>.<ext>",
    )
    serve.add_argument("--worker-of", help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)

    demo = sub.add_parser("demo", parents=[common], help="the whole job on the bundled example")
    demo.add_argument(
        "--examples",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "examples",
        help="the examples folder (default: the one beside the package)",
    )
    demo.add_argument("--dir", type=Path, default=Path("mirror-demo"), help="work folder")
    demo.set_defaults(handler=cmd_demo)

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", type=Path, help="store folder (default: store.path, ./cache)")

    checker = sub.add_parser("verify", parents=[common, store], help="re-hash and check the store")
    checker.add_argument(
        "--repair",
        action="store_true",
        help="delete corrupt objects and mark their sources (and missing ones') for re-fetch",
    )
    checker.set_defaults(handler=cmd_verify)

    gc = sub.add_parser("gc", parents=[common, store], help="remove objects no post needs")
    gc.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    gc.add_argument("--apply", action="store_true", help="delete them (default: only list them)")
    gc.set_defaults(handler=cmd_gc)

    exporter = sub.add_parser("export", parents=[common, store], help="copy objects to upload")
    exporter.add_argument("dir", type=Path, metavar="DIR", help="writes DIR/objects/<ab>/...")
    exporter.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="only what these posts need"
    )
    exporter.add_argument("--link", action="store_true", help="hard-link instead of copying")
    exporter.set_defaults(handler=cmd_export)

    report = sub.add_parser("report", parents=[common], help="write a visual HTML report")
    report.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="posts to link images and failures to"
    )
    report.add_argument("--html", type=Path, required=True, metavar="FILE", help="page to write")
    report.add_argument("--store", type=Path, help="store folder (default: store.path, ./cache)")
    report.add_argument(
        "--gallery",
        type=int,
        metavar="N",
        help="thumbnails of at most N objects (default 500)",
    )
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run mirror; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits 2 on usage errors and 0 for --help; return it so main() is testable.
        return int(exc.code) if isinstance(exc.code, int) else ExitStatus.USAGE
    configure_logging(-1 if args.quiet else args.verbose)
    try:
        # Posts already pointed at serve.public_url must keep counting as wrapped in every command.
        config = with_public_wrapper(_with_options(load_config(args.config), args))
        handler: Handler = args.handler
        return handler(args, config)
    except MirrorError as exc:
        print(f"mirror: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("mirror: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # `mirror scan --json | head`: the reader has gone; stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitStatus.OK
