"""Store care and reading: ``mirror verify``, ``gc``, ``export``, ``sync`` and ``report``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path

from mirror.cli.options import care_output, check_paths
from mirror.config import Config
from mirror.errors import ConfigError, ExitStatus, UsageError
from mirror.marker import check_folder, check_store, mark_store
from mirror.summary import plural


def _check_local(config: Config) -> None:
    """Refuse a local store path that is a file; a bucket has nothing to check here."""
    if config.store.scheme == "file":
        check_folder(Path(config.store.path))


def cmd_sync(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Copy the objects SRC has and DST lacks, checking every hash."""
    from mirror.sync import side, sync

    for url, flag in ((args.src, "SRC"), (args.dst, "DST")):
        try:
            where = side(config, url).store
        except ConfigError as exc:
            raise UsageError(f"{flag} {url!r}: {exc.problem}") from exc
        if where.scheme == "file":
            folder = Path(where.path)
            if flag == "SRC":
                check_store(folder, create=False, makes_missing=False, flag=flag)
            else:
                check_store(folder, create=config.store.create, makes_missing=True, flag=flag)
    if side(config, args.src).store == side(config, args.dst).store:
        raise UsageError("SRC and DST are the same store")
    if not args.dry_run and side(config, args.dst).store.scheme == "file":
        mark_store(Path(side(config, args.dst).store.path))
    synced = asyncio.run(sync(config, args.src, args.dst, dry_run=args.dry_run))
    care_output(synced.lines(), synced.summary(args.src, args.dst), args.quiet)
    return synced.exit_status


def cmd_verify(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Re-hash every object and check it against the manifest; --repair fixes what it can."""
    from mirror.audit import verify

    _check_local(config)
    audit = asyncio.run(verify(config, repair=args.repair))
    care_output(audit.lines(), audit.summary(), args.quiet)
    return audit.exit_status


def cmd_gc(args: argparse.Namespace, config: Config) -> ExitStatus:
    """List (--apply: delete) the objects no post under PATH needs."""
    from mirror.audit import collect

    check_paths(args.paths, config)
    _check_local(config)
    collection = asyncio.run(collect(config, args.paths, apply=args.apply))
    care_output(collection.lines(), collection.summary(), args.quiet)
    return ExitStatus.OK


def cmd_export(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Copy (--link: hard-link) the objects the posts need into DIR/<ab>/."""
    from mirror.export import export

    check_paths(args.paths, config)
    _check_local(config)
    check_folder(args.dir, "export DIR")
    exported = asyncio.run(export(config, args.dir, args.paths, link=args.link))
    care_output(exported.lines(), exported.summary(), args.quiet)
    return exported.exit_status


def cmd_report(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Write the self-contained HTML report of the store (linked to the posts given)."""
    from mirror.report import write_report

    if args.gallery is not None and args.gallery < 0:
        raise UsageError(f"--gallery must be 0 or more, not {args.gallery}")
    check_paths(args.paths, config)
    _check_local(config)
    extra = {} if args.gallery is None else {"gallery": args.gallery}
    report = asyncio.run(write_report(config, args.html, args.paths, **extra))
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
