"""The argument parser: one subcommand per job, with the options the commands share."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from mirror import __version__, helptext
from mirror.cli import queue
from mirror.cli.care import cmd_export, cmd_gc, cmd_report, cmd_sync, cmd_verify
from mirror.cli.job import cmd_demo, cmd_fetch, cmd_run
from mirror.cli.options import (
    base_url,
    duration,
    nonnegative,
    port,
    positive_int,
    reason,
    seconds,
    sources,
)
from mirror.cli.rewrite import cmd_rewrite
from mirror.cli.scan import cmd_scan
from mirror.cli.serve import cmd_serve
from mirror.config import SOURCES


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
        "--store",
        metavar="STORE",
        help="store folder or URL, e.g. s3://bucket/prefix (default: store.url, ./cache)",
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
        "--base-url", type=base_url, metavar="URL", help="what local copies' URLs start with"
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
        "-j", "--jobs", type=positive_int, metavar="N", help="concurrent downloads (fetch.jobs)"
    )
    network.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="the most one attempt at one URL may take (fetch.total_timeout, 60)",
    )
    network.add_argument(
        "--retries",
        type=nonnegative,
        metavar="N",
        help="retries of a transient failure after the first attempt (fetch.attempts - 1, 2)",
    )
    network.add_argument("--user-agent", metavar="TEXT", help="the User-Agent sent")
    network.add_argument(
        "--sources",
        type=sources,
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
        type=duration,
        metavar="DURATION",
        help="run again every DURATION (30m, 1h, 1d) until SIGTERM",
    )
    job.add_argument(
        "--refresh-after",
        type=duration,
        metavar="DURATION",
        help="revalidate objects older than DURATION with conditional requests",
    )
    job.add_argument(
        "--only-failed", action="store_true", help="retry only what failed before (no backoff)"
    )
    job.add_argument(
        "--retry-reason",
        action="append",
        type=reason,
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
        "--base-url", type=base_url, metavar="URL", help="what local copies' URLs start with"
    )
    run.set_defaults(handler=cmd_run)
    queue.add_run_option(run)
    queue.add_commands(functools.partial(_command, sub), common, network)

    serve = _command(sub, "serve", [common, network])
    _store_option(serve, create=True)
    serve.add_argument("--host", help="bind address (default serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=port, help="TCP port (default serve.port, 8080; 0: any)")
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
        "--base-url", type=base_url, metavar="URL", help="the path stored objects are served at"
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
    exporter.add_argument(
        "dir", type=Path, metavar="DIR", help="writes DIR/<ab>/<sha256>.<ext> (rewrite.base_url's)"
    )
    exporter.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="only what these posts need"
    )
    exporter.add_argument("--link", action="store_true", help="hard-link instead of copying")
    exporter.set_defaults(handler=cmd_export)

    syncer = _command(sub, "sync", [common])
    syncer.add_argument("src", metavar="SRC", help="the store to copy from: a folder or a URL")
    syncer.add_argument("dst", metavar="DST", help="the store to fill: a folder or a URL")
    syncer.add_argument(
        "--create", action="store_true", help="make DST in a folder that is no store yet"
    )
    syncer.add_argument("--dry-run", action="store_true", help="list what would be copied")
    syncer.set_defaults(handler=cmd_sync)

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
