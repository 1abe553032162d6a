"""
The command line: argument parsing, logging setup, and the one place errors become exit statuses.

Data (``--json``, diffs, ``--report -``) goes to stdout; warnings, progress and summaries go to
stderr. Every PATH must exist (exit 2 otherwise), and every folder mirror writes into or removes
from is proven to be its own first (:mod:`mirror.marker`).

One module per command group: :mod:`~mirror.cli.scan`, :mod:`~mirror.cli.rewrite`,
:mod:`~mirror.cli.job` (fetch, run, demo), :mod:`~mirror.cli.serve`, :mod:`~mirror.cli.care`
(verify, gc, export, report); :mod:`~mirror.cli.parser` builds the parser and
:mod:`~mirror.cli.options` holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from mirror.cli.options import with_options
from mirror.cli.parser import build_parser
from mirror.config import Config, load_config, with_manifest_beside, with_public_wrapper
from mirror.errors import ExitStatus, MirrorError
from mirror.log import configure_logging

__all__ = ["build_parser", "main", "with_options"]

log = logging.getLogger("mirror.scan")

Handler = Callable[[argparse.Namespace, Config], ExitStatus]


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
        config = with_public_wrapper(with_options(load_config(args.config), args))
        config = with_manifest_beside(config, args.config)
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
