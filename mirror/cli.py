"""
The command line: argument parsing, logging setup, and the one place errors become exit statuses.

Data (``--json``, diffs, ``--report -``) goes to stdout; warnings, progress and summaries go to
stderr. Every PATH must exist (exit 2 otherwise), and every folder mirror writes into or removes
from is proven to be its own first (:mod:`mirror.marker`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import difflib
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
from typing import TYPE_CHECKING, Any, TextIO

from mirror import __version__, helptext
from mirror.config import SOURCES, Config, load_config, parse_duration, with_public_wrapper
from mirror.errors import (
    REASONS,
    ConfigError,
    ExitStatus,
    MirrorError,
    StoreError,
    UsageError,
    is_reason,
)
from mirror.extract import Extractor
from mirror.lock import LockedError, StoreLock, command_line
from mirror.log import configure_logging
from mirror.manifest import Manifest, manifest_path
from mirror.marker import (
    check_folder,
    check_out,
    check_store,
    is_store,
    mark_out,
    mark_store,
    prepare_demo_dir,
)
from mirror.models import ImageRef, Post
from mirror.queue import commands as queue_commands
from mirror.rewrite import decode, post_diff, rewrap, rewrite
from mirror.scan import find_posts, iter_posts, write_recorded
from mirror.source import origin_host, wrapper_base
from mirror.summary import plural, scan_totals
from mirror.table import WHERE_WIDTH, ScanTable, terminal_columns, width

if TYPE_CHECKING:
    from mirror.pipeline import Job, RunSummary

# The commands that fetch, serve or draw import aiohttp and Pillow inside their handlers, so
# `mirror scan` and `mirror rewrite` start in a fraction of the time.

log = logging.getLogger("mirror.scan")

Handler = Callable[[argparse.Namespace, Config], ExitStatus]


# What json.dumps(..., ensure_ascii=False) uses for strings; calling it directly is several times
# faster than json.dumps on a dict, with byte-identical output (tests/test_cli.py checks it).
_JSON_STR = json.encoder.encode_basestring


def _ref_json(ref: ImageRef) -> str:
    declared = f"[{ref.declared[0]}, {ref.declared[1]}]" if ref.declared else "null"
    kind = "null" if ref.declared_kind is None else _JSON_STR(ref.declared_kind)
    return (
        f'{{"post": {_JSON_STR(ref.post)}, "line": {ref.line}, "url": {_JSON_STR(ref.url)}, '
        f'"decoded": {_JSON_STR(ref.decoded)}, "source": {_JSON_STR(ref.source)}, '
        f'"where": {_JSON_STR(ref.where)}, "declared": {declared}, "declared_kind": {kind}, '
        f'"proxied": {"true" if ref.proxied else "false"}}}'
    )


def check_paths(paths: Sequence[Path], config: Config) -> None:
    """
    Refuse a PATH that does not exist; warn about a folder that holds no post.

    Raises:
        UsageError: a PATH does not exist (exit 2: a mistyped crontab path must not succeed).
    """
    for path in paths:
        if not path.exists():
            raise UsageError(f"no such file or folder: {path}")
    for path in paths:
        # Stops at the first post: cheap on a big archive, a full walk only of an empty tree.
        if path.is_dir() and next(iter(find_posts([path], config.scan)), None) is None:
            log.warning(
                "no posts under %s (scan.include: %s)", path, ", ".join(config.scan.include)
            )


def _absolute(paths: Sequence[Path]) -> list[Path]:
    """
    The PATHs as absolute, unresolved paths: the key of a post's records and of its rewrites
    (pipeline.post_key), so `--revert` finds them whatever folder it is run from.
    """
    return [Path(os.path.abspath(path)) for path in paths]  # noqa: PTH100


def cmd_scan(args: argparse.Namespace, config: Config) -> ExitStatus:
    """List every image reference under the given paths, streaming: memory stays flat."""
    check_paths(args.paths, config)
    extractor = Extractor(config.scan)
    by_where: Counter[str] = Counter()
    wrapped_by_where: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    posts = copies = 0
    table = None
    if not args.json:
        # A walk without reading, for the widest post path: whole paths, aligned.
        widest = max((width(rel) for _path, rel in find_posts(args.paths, config.scan)), default=0)
        table = ScanTable(widest, terminal_columns(sys.stdout))
        print(table.header(), file=sys.stdout)
    for post in iter_posts(args.paths, config.scan):
        posts += 1
        found = extractor(decode(post.data), post.rel)
        if not found:
            continue
        if table is None:
            sys.stdout.write("\n".join(map(_ref_json, found)) + "\n")
        else:
            sys.stdout.write("\n".join(table.rows(found)) + "\n")
            by_where.update(r.where for r in found)
            wrapped_by_where.update(r.where for r in found if r.proxied)
            hosts.update(origin_host(r.source) for r in found)
            wrapped = {r.source for r in found if r.proxied}
            copies += sum(1 for r in found if not r.proxied and r.source in wrapped)
    if table is not None:
        where = [(w, n, wrapped_by_where[w]) for w, n in by_where.most_common()]
        totals = scan_totals(
            posts,
            sum(by_where.values()),
            sum(wrapped_by_where.values()),
            copies,
            config.scan.raw,
            where,
            hosts.most_common(),
            WHERE_WIDTH + 2,
        )
        print("\n".join(totals), file=sys.stdout)
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


def _recording_store(args: argparse.Namespace, config: Config, mapped: bool) -> Path | None:
    """
    The store an in-place rewrite records its spans in (for ``--revert``), or None for none.

    From the manifest's mapping the store exists already. With ``--map`` or ``--rewrap`` no
    store is needed: one that exists is used; none is made unless asked (--store, --create).
    """
    root = Path(config.store.path)
    if mapped and not is_store(root) and args.store is None and not config.store.create:
        return None
    check_store(root, create=config.store.create, makes_missing=False)
    return root


def cmd_rewrite(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Rewrite mapped (or, with --rewrap, wrapped) references in place, into --out, or as a diff."""
    check_folder(Path(config.store.path))
    if args.revert:
        return _revert(args, config)
    check_paths(args.paths, config)
    base = _rewrap_base(args)
    mapping: dict[str, str] = {}
    if base is not None:
        # Posts rewrapped by an earlier run then read as wrapped, as `mirror scan` reports them.
        config = with_public_wrapper(config, base)
    elif args.map is not None:
        mapping = _load_map(args.map)
    else:
        mapping = _manifest_mapping(config)
    if args.out is not None:
        check_out(args.out, args.paths)
    extractor = Extractor(config.scan)
    posts = changed = spans = skipped = 0
    paths = args.paths
    unrecorded = None
    with contextlib.ExitStack() as stack:
        manifest = None
        if not args.dry_run and args.out is None:
            root = _recording_store(args, config, base is not None or args.map is not None)
            if root is None:
                unrecorded = Path(config.store.path)
            else:
                # In place: under the store lock, and recorded so `--revert` can undo it.
                mark_store(root)
                stack.enter_context(StoreLock(root, command_line()))
                manifest = stack.enter_context(
                    Manifest(manifest_path(root), durability=config.store.durability)
                )
                paths = _absolute(paths)
        elif not args.dry_run:
            mark_out(args.out)
        for post in iter_posts(paths, config.scan):
            posts += 1
            if base is not None:
                result = rewrap(post.data, base, extractor, post.rel)
            else:
                result = rewrite(
                    post.data, mapping, extractor, post.rel, site_url=config.rewrite.site_url
                )
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
        f"mirror: {plural(posts, 'post')}, {verb} {plural(spans, 'reference')} in "
        f"{plural(changed, 'post')}"
        + (f", {skipped} changed on disk meanwhile and were left alone" if skipped else ""),
        file=sys.stderr,
    )
    if unrecorded is not None and spans:
        print(
            f"  not recorded for --revert: {unrecorded} is no store (--create makes one)",
            file=sys.stderr,
        )
    return ExitStatus.INCOMPLETE if skipped else ExitStatus.OK


def _revert(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Put back what mirror replaced in the posts, from the manifest's recorded spans."""
    from mirror.revert import revert

    if args.map is not None or args.rewrap is not None or args.out is not None:
        raise UsageError("--revert cannot be combined with --map, --rewrap or --out")
    check_paths(args.paths, config)
    check_folder(Path(config.store.path))
    paths = _absolute(args.paths)
    result = revert(config, paths, show=_print_diff if args.dry_run else None)
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

    check_folder(Path(config.store.path))
    audit = verify(config, repair=args.repair)
    _care_output(audit.lines(), audit.summary(), args.quiet)
    return audit.exit_status


def cmd_gc(args: argparse.Namespace, config: Config) -> ExitStatus:
    """List (--apply: delete) the objects no post under PATH needs."""
    from mirror.audit import collect

    check_paths(args.paths, config)
    check_folder(Path(config.store.path))
    collection = collect(config, args.paths, apply=args.apply)
    _care_output(collection.lines(), collection.summary(), args.quiet)
    return ExitStatus.OK


def cmd_export(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Copy (--link: hard-link) the objects the posts need into DIR/objects/."""
    from mirror.export import export

    check_paths(args.paths, config)
    check_folder(Path(config.store.path))
    check_folder(args.dir, "export DIR")
    exported = export(config, args.dir, args.paths, link=args.link)
    _care_output(exported.lines(), exported.summary(), args.quiet)
    return exported.exit_status


def _override(section: Any, flag: str, **changes: Any) -> Any:
    """``dataclasses.replace`` for one flag; a bad value's error names the flag, not the key."""
    try:
        return dataclasses.replace(section, **changes)
    except ConfigError as exc:
        shown = " ".join(str(v) for v in changes.values())
        raise UsageError(f"{flag} {shown}: {exc.problem} (it sets {exc.key})") from exc


def _with_options(config: Config, args: argparse.Namespace) -> Config:
    """Apply the command line's overrides to the config tree, for this run only."""
    store, fetch, network, rewrite = config.store, config.fetch, config.network, config.rewrite
    option = vars(args).get
    if option("store") is not None:
        store = _override(store, "--store", path=str(args.store))
    if option("create"):
        store = dataclasses.replace(store, create=True)
    if option("jobs") is not None:
        fetch = _override(fetch, "--jobs", jobs=args.jobs)
    if option("timeout") is not None:
        # One attempt's whole time (curl's --max-time); the connect and read parts fit inside it.
        fetch = _override(
            fetch,
            "--timeout",
            total_timeout=args.timeout,
            connect_timeout=min(fetch.connect_timeout, args.timeout),
            read_timeout=min(fetch.read_timeout, args.timeout),
        )
    if option("retries") is not None:
        fetch = _override(fetch, "--retries", attempts=args.retries + 1)
    if option("user_agent") is not None:
        fetch = _override(fetch, "--user-agent", user_agent=args.user_agent)
    if option("sources") is not None:
        fetch = _override(fetch, "--sources", sources=args.sources)
    if option("base_url") is not None:
        rewrite = _override(rewrite, "--base-url", base_url=args.base_url)
    if option("connect_to"):
        connect_to = network.connect_to + tuple(args.connect_to)
        network = _override(network, "--connect-to", connect_to=connect_to)
    if option("cacert") is not None:
        network = _override(network, "--cacert", cacert=str(args.cacert))
    return dataclasses.replace(config, store=store, fetch=fetch, network=network, rewrite=rewrite)


def _print_summary(
    job: Job, summary: RunSummary, seconds: float, out: TextIO, *, empty: bool = False
) -> None:
    from mirror.summary import plan, run_summary

    lines = plan(summary, job.config.store.path, empty) if job.dry_run else []
    lines += run_summary(
        summary, seconds, rewrite=job.rewrite, dry_run=job.dry_run, raw=job.config.scan.raw
    )
    print("\n".join(lines), file=out)


async def _run_job(job: Job, paths: Sequence[Path], quiet: bool) -> RunSummary:
    from mirror.progress import maybe_progress

    # Only a terminal gets progress, so only then are the posts walked twice (for the totals).
    with maybe_progress(job, paths, sys.stderr, not quiet and sys.stderr.isatty()):
        return await job.run(paths)


def _report_stream(args: argparse.Namespace, stack: contextlib.ExitStack) -> TextIO | None:
    if args.report is None:
        return None
    if str(args.report) == "-":
        return sys.stdout
    try:
        stream: TextIO = stack.enter_context(args.report.open("w", encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--report {args.report}: {exc.strerror or exc}") from exc
    return stream


async def _once(args: argparse.Namespace, config: Config, *, rewrite: bool) -> ExitStatus:
    """One run under the store lock (a dry run takes none: it writes nothing)."""
    from mirror.pipeline import Job

    started = time.monotonic()
    dry_run = getattr(args, "dry_run", False)
    out = getattr(args, "out", None)
    root = Path(config.store.path)
    empty = not manifest_path(root).is_file()
    paths = args.paths
    with contextlib.ExitStack() as stack:
        if not dry_run:
            mark_store(root)
            stack.enter_context(StoreLock(root, command_line()))
            if out is not None:
                mark_out(out)
            elif rewrite:
                paths = _absolute(paths)
        job = Job(
            config,
            rewrite=rewrite,
            dry_run=dry_run,
            out=out,
            report=_report_stream(args, stack),
            only_failed=args.only_failed,
            retry_reasons=frozenset(args.retry_reason or ()),
            refresh_after=args.refresh_after,
        )
        summary = await _run_job(job, paths, args.quiet)
    if not args.quiet:
        _print_summary(job, summary, time.monotonic() - started, sys.stderr, empty=empty)
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
        return queue_commands.run_with_workers(args, config)
    return _job(args, config, rewrite=True)


def cmd_serve(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Serve /?<url> and stored objects until SIGTERM."""
    from mirror.workers import run_serve

    serve = config.serve
    for name in ("host", "port", "workers", "open", "accel_redirect"):
        value = getattr(args, name)
        if value is not None:
            serve = _override(serve, "--" + name.replace("_", "-"), **{name: value})
    config = dataclasses.replace(config, serve=serve)
    if args.worker_of is None:
        # Workers get their owner's checked config; only the process that was started checks.
        # Open mode fills its store by itself, so it may start one; the closed world serves
        # only what a store holds, and a missing one is surely a mistyped --store.
        root = Path(config.store.path)
        check_store(root, create=config.store.create, makes_missing=config.serve.open)
        mark_store(root)
    return run_serve(config, args.worker_of)


def cmd_demo(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Run the whole job on the bundled example against a bundled local origin."""
    from mirror.demo import demo_origin
    from mirror.pipeline import Job

    # Package data, found beside the installed package (pyproject.toml ships it).
    examples = args.examples or Path(__file__).resolve().parent / "examples"
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
            store = dataclasses.replace(config.store, path=str(work / "cache"))
            demo_config = dataclasses.replace(config, network=network, store=store)
            with (work / "report.jsonl").open("w", encoding="utf-8") as report:
                job = Job(demo_config, rewrite=True, report=report)
                summary = await _run_job(job, _absolute([work / "posts"]), args.quiet)
        return job, summary, time.monotonic() - started

    job, summary, seconds = asyncio.run(go())
    _print_summary(job, summary, seconds, sys.stdout)
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


def cmd_report(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Write the self-contained HTML report of the store (linked to the posts given)."""
    from mirror.report import write_report

    if args.gallery is not None and args.gallery < 0:
        raise UsageError(f"--gallery must be 0 or more, not {args.gallery}")
    check_paths(args.paths, config)
    check_folder(Path(config.store.path))
    extra = {} if args.gallery is None else {"gallery": args.gallery}
    report = write_report(config, args.html, args.paths, **extra)
    if not args.quiet:
        counts = Counter(entry.status for entry in report.sources)
        print(
            f"mirror: wrote {args.html}: {plural(len(report.sources), 'distinct source')} in the "
            f"manifest ({', '.join(f'{n} {s}' for s, n in counts.most_common()) or 'none'}; "
            "each URL once, however many references name it: `mirror scan` and `mirror run` "
            f"count references), {len(report.gallery)} of {report.gallery_total} objects in the "
            "gallery",
            file=sys.stderr,
        )
    return ExitStatus.OK


# --- argument types: a bad value is an argparse error naming the flag (exit 2) -----------------


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0 picks a free one)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _sources(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SOURCES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of {', '.join(SOURCES)}"
        )
    return names


def _base_url(text: str) -> str:
    if not text.endswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} must end with '/' (e.g. /mirror/)")
    return text


def _reason(text: str) -> str:
    if is_reason(text):
        return text
    near = difflib.get_close_matches(text, REASONS, n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a reason code; {hint}the codes: {', '.join(REASONS)}, http-NNN "
        "(e.g. http-404)"
    )


# --- the parser --------------------------------------------------------------------------------


def _command(
    sub: Any, name: str, parents: list[argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    short, description, _examples = helptext.COMMANDS[name]
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        parents=parents,
        help=short,
        description=helptext.paragraph(description),
        epilog=helptext.epilog(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _store_option(parser: argparse.ArgumentParser, create: bool = False) -> None:
    parser.add_argument(
        "--store", type=Path, metavar="DIR", help="store folder (default: store.path, ./cache)"
    )
    if create:
        parser.add_argument(
            "--create",
            action="store_true",
            help="make the store when --store is no store yet (store.create)",
        )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per job."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", type=Path, metavar="FILE", help="config file (default: ./config.toml)"
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", help="errors only")

    parser = argparse.ArgumentParser(
        prog="mirror",
        description=helptext.paragraph(helptext.MAIN),
        epilog=helptext.MAIN_EXAMPLES + "\n\n" + helptext.exit_statuses(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"mirror {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scan = _command(sub, "scan", [common])
    scan.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    scan.add_argument("--json", action="store_true", help="JSON Lines on stdout")
    scan.set_defaults(handler=cmd_scan)

    rw = _command(sub, "rewrite", [common])
    rw.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    rw.add_argument(
        "--map",
        type=Path,
        metavar="FILE",
        help="JSON object: source URL -> new URL (default: the manifest)",
    )
    _store_option(rw, create=True)
    rw.add_argument(
        "-o", "--out", type=Path, metavar="DIR", help="write copies under DIR, not in place"
    )
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
    rw.add_argument(
        "--base-url", type=_base_url, metavar="URL", help="what local copies' URLs start with"
    )
    rw.set_defaults(handler=cmd_rewrite)

    network = argparse.ArgumentParser(add_help=False)
    network.add_argument(
        "--connect-to",
        action="append",
        metavar="HOST:PORT:HOST2:PORT2",
        help="connect to HOST2:PORT2 for requests to HOST:PORT (repeatable; curl's meaning)",
    )
    network.add_argument(
        "--cacert", type=Path, metavar="FILE", help="PEM CAs trusted besides the system's"
    )
    network.add_argument(
        "-j", "--jobs", type=_positive_int, metavar="N", help="concurrent downloads (fetch.jobs)"
    )
    network.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="the most one attempt at one URL may take (fetch.total_timeout, 60)",
    )
    network.add_argument(
        "--retries",
        type=_count,
        metavar="N",
        help="retries of a transient failure after the first attempt (fetch.attempts - 1, 2)",
    )
    network.add_argument("--user-agent", metavar="TEXT", help="the User-Agent sent")
    network.add_argument(
        "--sources",
        type=_sources,
        metavar="LIST",
        help=f"where to look, in order (fetch.sources): comma-separated {', '.join(SOURCES)}",
    )

    job = argparse.ArgumentParser(add_help=False)
    _store_option(job, create=True)
    job.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write a JSON Lines report, one object per reference ('-': stdout)",
    )
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
        type=_reason,
        metavar="REASON",
        help="retry only failures with this reason code, e.g. size-mismatch (repeatable)",
    )

    fetch = _command(sub, "fetch", [common, network, job])
    fetch.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    fetch.set_defaults(handler=cmd_fetch)

    run = _command(sub, "run", [common, network, job])
    run.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    run.add_argument(
        "-o", "--out", type=Path, metavar="DIR", help="write rewritten copies under DIR"
    )
    run.add_argument("--dry-run", action="store_true", help="no network, no writes: print diffs")
    run.add_argument(
        "--base-url", type=_base_url, metavar="URL", help="what local copies' URLs start with"
    )
    run.set_defaults(handler=cmd_run)
    # The queue's commands (issue #12); the lead moves these two lines into mirror/cli/.
    queue_commands.add_run_option(run)
    queue_commands.add_commands(sub, common, network)

    serve = _command(sub, "serve", [common, network])
    _store_option(serve, create=True)
    serve.add_argument("--host", help="bind address (default serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="TCP port (default serve.port, 8080; 0: any)")
    serve.add_argument("--workers", type=int, help="worker processes (default serve.workers, 1)")
    serve.add_argument(
        "--open", action="store_true", default=None, help="serve any image URL (serve.open)"
    )
    serve.add_argument(
        "--accel-redirect",
        metavar="PREFIX",
        help="behind nginx: answer /?<url> hits with X-Accel-Redirect: PREFIX<ab>/<sha>.<ext>",
    )
    serve.add_argument(
        "--base-url", type=_base_url, metavar="URL", help="the path stored objects are served at"
    )
    serve.add_argument("--worker-of", help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)

    demo = _command(sub, "demo", [common])
    demo.add_argument(
        "--examples",
        type=Path,
        metavar="DIR",
        help="the examples folder (default: the one installed with mirror)",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        default=Path("mirror-demo"),
        help="work folder: new, empty, or an earlier demo's (default ./mirror-demo)",
    )
    demo.set_defaults(handler=cmd_demo)

    checker = _command(sub, "verify", [common])
    _store_option(checker)
    checker.add_argument(
        "--repair",
        action="store_true",
        help="delete corrupt objects and mark their sources (and missing ones') for re-fetch",
    )
    checker.set_defaults(handler=cmd_verify)

    gc = _command(sub, "gc", [common])
    _store_option(gc)
    gc.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    gc.add_argument("--apply", action="store_true", help="delete them (default: only list them)")
    gc.set_defaults(handler=cmd_gc)

    exporter = _command(sub, "export", [common])
    _store_option(exporter)
    exporter.add_argument("dir", type=Path, metavar="DIR", help="writes DIR/objects/<ab>/...")
    exporter.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="only what these posts need"
    )
    exporter.add_argument("--link", action="store_true", help="hard-link instead of copying")
    exporter.set_defaults(handler=cmd_export)

    report = _command(sub, "report", [common])
    report.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="posts to link images and failures to"
    )
    report.add_argument("--html", type=Path, required=True, metavar="FILE", help="page to write")
    _store_option(report)
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
    except OSError as exc:
        # Not one of mirror's own errors, but still the run failing, not a bug to show as one.
        log.debug("unexpected OS error", exc_info=True)
        print(f"mirror: error: {exc}", file=sys.stderr)
        return ExitStatus.FAILED
