"""
What every command shares: checking PATHs, the command line's overrides of the config tree, the
argument types (a bad value is an argparse error naming the flag, exit 2), and care output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mirror.config import SOURCES, Config, parse_duration
from mirror.errors import REASONS, ConfigError, UsageError, is_reason
from mirror.models import Post
from mirror.rewrite import post_diff
from mirror.scan import find_posts

log = logging.getLogger("mirror.scan")


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


def report_stream(
    args: argparse.Namespace, stack: contextlib.ExitStack | contextlib.AsyncExitStack
) -> TextIO | None:
    """
    Open ``--report FILE`` for writing (``-``: stdout) on ``stack``; None without ``--report``.

    Raises:
        UsageError: the file cannot be written.
    """
    if args.report is None:
        return None
    if str(args.report) == "-":
        return sys.stdout
    try:
        stream: TextIO = stack.enter_context(args.report.open("w", encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--report {args.report}: {exc.strerror or exc}") from exc
    return stream


def absolute_paths(paths: Sequence[Path]) -> list[Path]:
    """
    The PATHs as absolute, unresolved paths: the key of a post's records and of its rewrites
    (pipeline.post_key), so `--revert` finds them whatever folder it is run from.
    """
    return [Path(os.path.abspath(path)) for path in paths]  # noqa: PTH100


def override(section: Any, flag: str, **changes: Any) -> Any:
    """``dataclasses.replace`` for one flag; a bad value's error names the flag, not the key."""
    try:
        return dataclasses.replace(section, **changes)
    except ConfigError as exc:
        shown = " ".join(str(v) for v in changes.values())
        raise UsageError(f"{flag} {shown}: {exc.problem} (it sets {exc.key})") from exc


def with_options(config: Config, args: argparse.Namespace) -> Config:
    """Apply the command line's overrides to the config tree, for this run only."""
    store, fetch, network, rewrite = config.store, config.fetch, config.network, config.rewrite
    option = vars(args).get
    if option("store") is not None:
        store = override(store, "--store", url=str(args.store), path="")
    if option("create"):
        store = dataclasses.replace(store, create=True)
    if option("jobs") is not None:
        fetch = override(fetch, "--jobs", jobs=args.jobs)
    if option("timeout") is not None:
        # One attempt's whole time (curl's --max-time); the connect and read parts fit inside it.
        fetch = override(
            fetch,
            "--timeout",
            total_timeout=args.timeout,
            connect_timeout=min(fetch.connect_timeout, args.timeout),
            read_timeout=min(fetch.read_timeout, args.timeout),
        )
    if option("retries") is not None:
        fetch = override(fetch, "--retries", attempts=args.retries + 1)
    if option("user_agent") is not None:
        fetch = override(fetch, "--user-agent", user_agent=args.user_agent)
    if option("sources") is not None:
        fetch = override(fetch, "--sources", sources=args.sources)
    if option("base_url") is not None:
        rewrite = override(rewrite, "--base-url", base_url=args.base_url)
    if option("connect_to"):
        connect_to = network.connect_to + tuple(args.connect_to)
        network = override(network, "--connect-to", connect_to=connect_to)
    if option("cacert") is not None:
        network = override(network, "--cacert", cacert=str(args.cacert))
    return dataclasses.replace(config, store=store, fetch=fetch, network=network, rewrite=rewrite)


# --- argument types: a bad value is an argparse error naming the flag (exit 2) -----------------


def duration(text: str) -> float:
    """Parse ``30m``, ``1h``, ``1d`` or seconds (``--every``, ``--refresh-after``)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_int(text: str) -> int:
    """Parse a whole number of 1 or more (``--jobs``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def nonnegative(text: str) -> int:
    """Parse a whole number of 0 or more (``--retries``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def port(text: str) -> int:
    """Parse a TCP port, 0 for any free one (``--port``)."""
    value = nonnegative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0 picks a free one)")
    return value


def seconds(text: str) -> float:
    """Parse a number of seconds over 0 (``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def sources(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list of ``fetch.sources`` names (``--sources``)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SOURCES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of {', '.join(SOURCES)}"
        )
    return names


def base_url(text: str) -> str:
    """Accept a base URL that ends with ``/`` (``--base-url``)."""
    if not text.endswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} must end with '/' (e.g. /mirror/)")
    return text


def reason(text: str) -> str:
    """Accept a reason code, suggesting the nearest one on a typo (``--retry-reason``)."""
    if is_reason(text):
        return text
    near = difflib.get_close_matches(text, REASONS, n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a reason code; {hint}the codes: {', '.join(REASONS)}, http-NNN "
        "(e.g. http-404)"
    )


def print_diff(post: Post, data: bytes) -> None:
    """Write the unified diff of a post's rewrite to stdout."""
    sys.stdout.writelines(post_diff(post.data, data, post.rel))


def care_output(lines: list[str], summary: list[str], quiet: bool) -> None:
    """Print a care command's problem lines (stdout) and its summary (stderr, unless quiet)."""
    for line in lines:
        print(line, file=sys.stdout)
    if not quiet:
        for line in summary:
            print(line, file=sys.stderr)
