"""
What the commands say when they finish: the run summary, a dry run's plan, scan's totals.

Counts must agree across commands, or the difference is named in the same line: ``mirror scan``
counts every reference, ``mirror run`` acts on the wrapped ones and the raw copies of their
sources, and ``mirror report`` counts distinct source URLs. Pure text: the callers print it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for the annotation: `mirror scan` must not import aiohttp through the pipeline.
    from mirror.pipeline import RunSummary

# How many hosts (and posts) a summary names before it says "and N more".
SHOWN = 10
OFFLINE = "no host could be resolved — are you offline?"


def plural(count: int, word: str, many: str | None = None) -> str:
    """Return ``"1 post"``, ``"2 posts"``; ``many`` for irregular plurals."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def cut(counts: Counter[str], noun: str, unit: str, shown: int = SHOWN) -> str:
    """List the ``shown`` biggest counts, then ``and 2 more hosts (3 references)`` when cut."""
    top = counts.most_common(shown)
    text = ", ".join(f"{name} {n}" for name, n in top)
    rest = len(counts) - len(top)
    if rest > 0:
        hidden = sum(counts.values()) - sum(n for _name, n in top)
        text += f", and {rest} more {noun if rest == 1 else noun + 's'} ({plural(hidden, unit)})"
    return text


def acting(found: int, wrapped: int, acted_wrapped: int, acted_raw: int, raw: str) -> str:
    """
    Say how many references there are and which of them a run acts on, e.g. ``215 references:
    134 wrapped, 81 raw; acting on 184: 134 wrapped + 50 raw copies of them``.
    """
    text = f"{plural(found, 'reference')}: {wrapped} wrapped, {found - wrapped} raw"
    total = acted_wrapped + acted_raw
    if raw == "all":
        return f"{text}; acting on {total}: {acted_wrapped} wrapped + {acted_raw} raw (scan.raw)"
    return f"{text}; acting on {total}: {acted_wrapped} wrapped + {acted_raw} raw copies of them"


def _statuses(summary: RunSummary, dry_run: bool) -> str:
    counts = Counter(summary.statuses)
    planned = summary.reasons["dry-run"] if dry_run else 0
    if planned:
        counts["skipped"] -= planned
        counts["to fetch"] = planned
    parts = [f"{n} {status}" for status, n in counts.most_common() if n > 0]
    return ", ".join(parts) or "none"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def run_summary(
    summary: RunSummary,
    seconds: float,
    *,
    rewrite: bool,
    dry_run: bool,
    raw: str,
    workers: int = 0,
) -> list[str]:
    """
    The closing summary of ``run``/``fetch``/``demo``, one line each.

    The first line keeps the shape ``mirror: N posts[ (U unchanged since the last run)], R
    references: ...; W posts rewritten; M MB fetched in S s`` (bench/archive.py reads it).
    With ``workers`` (``run --workers``: the bytes went through them, not this process) it
    ends ``fetched by N workers in S s``.
    """
    refs = sum(summary.statuses.values())
    unchanged = f" ({summary.unchanged} unchanged since the last run)" if summary.unchanged else ""
    head = f"mirror: {plural(summary.posts, 'post')}{unchanged}, {plural(refs, 'reference')}: "
    head += _statuses(summary, dry_run)
    if dry_run:
        head += f"; {plural(summary.rewritten, 'post')} would be rewritten; a dry run: nothing "
        head += f"fetched or written ({seconds:.1f} s)"
    else:
        if rewrite:
            head += f"; {plural(summary.rewritten, 'post')} rewritten"
        if workers:
            head += f"; fetched by {plural(workers, 'worker')} in {seconds:.1f} s"
        else:
            head += f"; {_mb(summary.fetched_bytes)} fetched in {seconds:.1f} s"
    lines = [head]
    read = f" in the {plural(summary.posts - summary.unchanged, 'post')} read" if unchanged else ""
    found = acting(
        summary.found, summary.found_wrapped, summary.acted_wrapped, summary.acted_raw, raw
    )
    lines.append(f"  {found}{read}")
    if summary.left_alone:
        lines.append(
            f"  {plural(summary.left_alone, 'post')} changed on disk meanwhile and "
            f"{'was' if summary.left_alone == 1 else 'were'} left alone"
        )
    if summary.waiting:
        lines.append(
            f"  {plural(summary.waiting, 'unchanged post')} still wait for images in backoff"
        )
    reasons = Counter(
        {r: n for r, n in summary.reasons.items() if not (dry_run and r == "dry-run")}
    )
    if reasons:
        lines.append(f"  not mirrored, by reason: {cut(reasons, 'reason', 'reference', 100)}")
        if not dry_run:
            lines.append(
                f"  not mirrored, by host: {cut(summary.failed_hosts, 'host', 'reference')}"
            )
    if summary.offline:
        lines.append(f"  {OFFLINE}")
    return lines


def plan(summary: RunSummary, store: str, empty: bool) -> list[str]:
    """
    A dry run's plan: what a real run would fetch, by origin host and by post, and the first URLs.
    """
    lines = []
    if empty:
        lines.append(f"mirror: the store {store} holds nothing yet (no manifest): a dry run there")
        lines.append("  can only say what a real run would fetch; nothing would be rewritten yet")
    sources = len(summary.planned)
    if not sources:
        lines.append("mirror: a real run would fetch nothing")
        return lines
    lines.append(f"mirror: a real run would fetch {plural(sources, 'source')} (distinct URLs):")
    lines.append(f"  by origin host: {cut(summary.planned_hosts, 'host', 'source')}")
    lines.append(f"  by post: {cut(summary.planned_posts, 'post', 'source')}")
    first = summary.planned_urls
    more = f" (of {sources})" if sources > len(first) else ""
    lines.append(f"  the first {plural(len(first), 'URL')}{more}:")
    lines.extend(f"    {url}" for url in first)
    return lines


def scan_totals(
    posts: int,
    found: int,
    wrapped: int,
    copies: int,
    raw: str,
    by_where: Iterable[tuple[str, int, int]],
    hosts: Iterable[tuple[str, int]],
    pad: int,
) -> list[str]:
    """
    Scan's closing totals: the count line (with what ``mirror run`` would act on), then the
    references by where and by origin host. ``copies`` are raw references whose source is also
    wrapped in the same post; ``mirror run`` also follows raw copies of sources mirrored from
    other posts, so it may act on a few more.
    """
    acted_raw = found - wrapped if raw == "all" else copies
    line = (
        f"{plural(found, 'reference')} in {plural(posts, 'post')}: {wrapped} wrapped, "
        f"{found - wrapped} raw; `mirror run` acts on {wrapped + acted_raw}: {wrapped} wrapped + "
    )
    if raw == "all":
        line += f"{acted_raw} raw (scan.raw)"
    else:
        line += f"{acted_raw} raw copies of them"
        others = found - wrapped - copies
        if others:
            line += f"; the other {others} raw stay as written unless another post wraps them"
    lines = ["", line, "", "by where:"]
    lines.extend(f"  {where:<{pad}}  {n:>6}  ({w} wrapped)" for where, n, w in by_where)
    lines += ["", "by origin host:"]
    lines.extend(f"  {host:<40}  {n:>6}" for host, n in hosts)
    return lines
