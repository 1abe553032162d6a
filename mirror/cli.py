"""
The command line: argument parsing, logging setup, and the one place errors become exit statuses.

Data (``--json``, diffs) goes to stdout; warnings, progress and summaries go to stderr.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from mirror import __version__
from mirror.config import Config, load_config
from mirror.errors import ExitStatus, MirrorError, UsageError
from mirror.extract import Extractor
from mirror.log import configure_logging
from mirror.models import ImageRef
from mirror.rewrite import decode, rewrite
from mirror.scan import iter_posts, write_post
from mirror.source import origin_host

log = logging.getLogger("mirror.scan")

Handler = Callable[[argparse.Namespace, Config], ExitStatus]


def _ref_json(ref: ImageRef) -> str:
    return json.dumps(
        {
            "post": ref.post,
            "line": ref.line,
            "url": ref.url,
            "decoded": ref.decoded,
            "source": ref.source,
            "where": ref.where,
            "declared": list(ref.declared) if ref.declared else None,
            "declared_kind": ref.declared_kind,
            "proxied": ref.proxied,
        },
        ensure_ascii=False,
    )


def _print_table(refs: list[ImageRef], posts: int, out: TextIO) -> None:
    width = min(60, max((len(f"{r.post}:{r.line}") for r in refs), default=10))
    where_width = max((len(r.where) for r in refs), default=5)
    print(f"{'POST:LINE':<{width}}  {'WHERE':<{where_width}}  KIND     DECLARED   SOURCE", file=out)
    for ref in refs:
        place = f"{ref.post}:{ref.line}"
        if len(place) > width:
            place = "…" + place[-(width - 1) :]
        declared = f"{ref.declared[0]}x{ref.declared[1]}" if ref.declared else "-"
        kind = "wrapped" if ref.proxied else "raw"
        print(
            f"{place:<{width}}  {ref.where:<{where_width}}  {kind:<7}  {declared:<9}  {ref.source}",
            file=out,
        )
    wrapped = sum(r.proxied for r in refs)
    print(
        f"\n{len(refs)} references in {posts} posts: {wrapped} wrapped, {len(refs) - wrapped} raw",
        file=out,
    )
    by_where = Counter(r.where for r in refs)
    wrapped_by_where = Counter(r.where for r in refs if r.proxied)
    print("\nby where:", file=out)
    for where, count in by_where.most_common():
        print(
            f"  {where:<{where_width}}  {count:>6}  ({wrapped_by_where[where]} wrapped)", file=out
        )
    print("\nby origin host:", file=out)
    for host, count in Counter(origin_host(r.source) for r in refs).most_common():
        print(f"  {host:<40}  {count:>6}", file=out)


def cmd_scan(args: argparse.Namespace, config: Config) -> ExitStatus:
    """List every image reference under the given paths."""
    extractor = Extractor(config.scan)
    refs: list[ImageRef] = []
    posts = 0
    for post in iter_posts(args.paths, config.scan):
        posts += 1
        found = extractor(decode(post.data), post.rel)
        if args.json:
            for ref in found:
                print(_ref_json(ref), file=sys.stdout)
        else:
            refs.extend(found)
    if not args.json:
        _print_table(refs, posts, sys.stdout)
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


def cmd_rewrite(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Rewrite mapped references in place, into --out, or as a diff."""
    mapping = _load_map(args.map)
    extractor = Extractor(config.scan)
    posts = changed = spans = skipped = 0
    for post in iter_posts(args.paths, config.scan):
        posts += 1
        result = rewrite(post.data, mapping, extractor, post.rel)
        if args.dry_run:
            if result.spans:
                before = decode(post.data).splitlines(keepends=True)
                after = decode(result.data).splitlines(keepends=True)
                diff = difflib.unified_diff(before, after, f"a/{post.rel}", f"b/{post.rel}")
                sys.stdout.writelines(line if line.endswith("\n") else line + "\n" for line in diff)
        elif (result.spans or args.out is not None) and not write_post(post, result.data, args.out):
            skipped += 1
            continue
        if result.spans:
            changed += 1
            spans += len(result.spans)
    verb = "would rewrite" if args.dry_run else "rewrote"
    print(
        f"mirror: {posts} posts, {verb} {spans} references in {changed} posts"
        + (f", {skipped} changed on disk meanwhile and were left alone" if skipped else ""),
        file=sys.stderr,
    )
    return ExitStatus.INCOMPLETE if skipped else ExitStatus.OK


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
    rw.add_argument("--map", type=Path, required=True, help="JSON object: source URL -> new URL")
    rw.add_argument("--out", type=Path, help="write copies under DIR instead of in place")
    rw.add_argument("--dry-run", action="store_true", help="print a unified diff, write nothing")
    rw.set_defaults(handler=cmd_rewrite)
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
        config = load_config(args.config)
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
