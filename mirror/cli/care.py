"""Store care and reading: ``mirror verify``, ``gc``, ``export`` and ``report``."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from mirror.cli.options import care_output, check_paths
from mirror.config import Config
from mirror.errors import ExitStatus, UsageError
from mirror.marker import check_folder
from mirror.summary import plural


def cmd_verify(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Re-hash every object and check it against the manifest; --repair fixes what it can."""
    from mirror.audit import verify

    check_folder(Path(config.store.path))
    audit = verify(config, repair=args.repair)
    care_output(audit.lines(), audit.summary(), args.quiet)
    return audit.exit_status


def cmd_gc(args: argparse.Namespace, config: Config) -> ExitStatus:
    """List (--apply: delete) the objects no post under PATH needs."""
    from mirror.audit import collect

    check_paths(args.paths, config)
    check_folder(Path(config.store.path))
    collection = collect(config, args.paths, apply=args.apply)
    care_output(collection.lines(), collection.summary(), args.quiet)
    return ExitStatus.OK


def cmd_export(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Copy (--link: hard-link) the objects the posts need into DIR/objects/."""
    from mirror.export import export

    check_paths(args.paths, config)
    check_folder(Path(config.store.path))
    check_folder(args.dir, "export DIR")
    exported = export(config, args.dir, args.paths, link=args.link)
    care_output(exported.lines(), exported.summary(), args.quiet)
    return exported.exit_status


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
