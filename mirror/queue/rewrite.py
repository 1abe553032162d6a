"""
The last step of ``mirror run --workers``: rewrite the posts from the shared manifest.

What ``mirror run`` does to a post once its sources were attempted, with the outcomes read
from the manifest the workers filled instead of fetched here: the same references are acted on
(wrapped ones, their raw copies, every raw one with ``scan.raw = "all"``), mirrored ones point
at their objects, dead wrappers are unwrapped with ``rewrite.on_failure = "unwrap"``, the spans
are recorded before the post is replaced (for ``mirror rewrite --revert``), a post changed on
disk meanwhile is left alone, and each finished post is recorded for the next run's stat fast
path. Nothing is fetched here.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mirror.config import Config
from mirror.downloader import Outcome
from mirror.extract import Extractor
from mirror.jsonl import reference_row, write_row
from mirror.manifest import SourceRow
from mirror.manifest.base import Manifest
from mirror.models import ImageRef, Post
from mirror.pipeline import RunSummary, outcome_from_row, post_key
from mirror.queue.enqueue import targets
from mirror.rewrite import decode, encode, replace
from mirror.scan import iter_posts, write_recorded
from mirror.store.base import local_url


@dataclass(frozen=True)
class Report:
    """Where the per-reference rows go, and how the store names an object."""

    stream: TextIO
    key: Callable[[str, str], str]


# Posts whose rows are asked for in one query: a round trip per post was most of the cost of
# rewriting small posts from a PostgreSQL manifest.
READ_AHEAD = 64
# A source the workers never got to (its task failed past its retries, or was cancelled).
NOT_FETCHED = "not-fetched"


def outcome_of(row: SourceRow | None) -> Outcome:
    """Return the outcome a manifest row stands for (a missing row: not fetched)."""
    if row is None:
        return Outcome("skipped", NOT_FETCHED)
    if row.status == "mirrored" and row.sha256 and row.ext:
        return outcome_from_row(row)
    return Outcome(
        row.status,
        row.reason,
        fetched_from=row.fetched_from,
        attempts=row.attempts,
        next_attempt=row.next_attempt,
        via=row.via,
    )


async def _read_ahead(
    posts: Iterator[Post], extractor: Extractor, manifest: Manifest
) -> AsyncIterator[tuple[Post, str, list[ImageRef], dict[str, SourceRow]]]:
    """Yield each post with its text, references and rows, asking for READ_AHEAD posts' at once."""
    while chunk := list(itertools.islice(posts, READ_AHEAD)):
        parsed = []
        for post in chunk:
            text = decode(post.data)
            parsed.append((post, text, extractor(text, post.rel)))
        rows = await manifest.get_many({ref.source for _, _, refs in parsed for ref in refs})
        for post, text, refs in parsed:
            yield post, text, refs, {r.source: rows[r.source] for r in refs if r.source in rows}


async def rewrite_posts(
    config: Config,
    paths: Sequence[Path],
    manifest: Manifest,
    summary: RunSummary,
    report: Report | None = None,
) -> RunSummary:
    """
    Rewrite every post under ``paths`` (absolute) from ``manifest``; count into ``summary``.

    With ``report`` (the stream and the store's key function), write each reference's row to
    it as ``mirror run --report`` does.

    Raises:
        StoreError: a post cannot be written; ManifestError: the manifest cannot be used.
    """
    extractor = Extractor(config.scan)
    durable = config.store.durability == "power"
    records = []
    async for post, text, refs, rows in _read_ahead(
        iter_posts(paths, config.scan), extractor, manifest
    ):
        summary.posts += 1
        acted = targets(refs, config)
        outcomes = {s: outcome_of(rows.get(s)) for s in acted}
        for source, row in rows.items():
            if source not in acted and row.status == "mirrored":
                outcomes[source] = outcome_of(row)
        reported = [r for r in refs if r.source in outcomes]
        mapping = {
            s: local_url(config.base_url, o.obj.sha256, o.obj.ext)
            for s, o in outcomes.items()
            if o.obj is not None
        }
        for ref in reported:
            outcome = outcomes[ref.source]
            summary.count(ref, outcome)
            if report is not None:
                url = mapping.get(ref.source)
                line = reference_row(ref, outcome, url, config.rewrite.site_url, report.key)
                write_row(report.stream, line)
        summary.saw(post.rel, refs, reported, outcomes)
        chosen = refs
        if config.rewrite.on_failure == "unwrap":
            unwrap = {s: s for s, o in outcomes.items() if o.obj is None}
            chosen = [r for r in refs if r.source in mapping or (r.proxied and r.source in unwrap)]
            mapping = {**unwrap, **mapping}
        new_text, spans = replace(text, chosen, mapping, site_url=config.rewrite.site_url)
        data = post.data
        if spans:
            data = encode(new_text)
            if not await write_recorded(post, data, spans, manifest, durable=durable):
                summary.left_alone += 1
                continue
            summary.rewritten += 1
        waiting = [o.next_attempt or 0.0 for o in outcomes.values() if o.obj is None]
        st = post.path.stat()
        records.append(
            (
                post_key(post.path),
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                hashlib.sha256(data).hexdigest(),
                min(waiting) if waiting else None,
                "run",
            )
        )
        if len(records) >= 256:
            await manifest.record_posts(records)
            records = []
    if records:
        await manifest.record_posts(records)
    return summary
