"""
The orchestrator: scan → extract → fetch → verify → store/manifest → rewrite, for ``fetch``/``run``.

Posts are streamed with a bounded number in flight, so memory stays flat. Each source URL is
fetched at most once per run however many posts name it (a shared future), and never again once
mirrored. A post is rewritten only after all its references were attempted, and only its
verified references change. Order of writes, so that a crash at any instant is safe: object file
(atomic rename) → manifest row (committed) → rewrite spans (committed) → post (atomic rename).
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from mirror.config import Config
from mirror.errors import ExitStatus, FetchError, MirrorError, PolicyError, VerifyError
from mirror.extract import Extractor
from mirror.fetch import Fetcher
from mirror.manifest import Attempt, Manifest, SourceResult, SourceRow, manifest_path
from mirror.models import ImageRef, Post, StoredObject
from mirror.rewrite import decode, encode, replace
from mirror.scan import iter_posts, write_post
from mirror.source import origin_host
from mirror.store import LocalStore, local_url
from mirror.verify import verify

# Posts whose references are being fetched at once; bounds memory on huge archives.
POSTS_IN_FLIGHT = 64
# Results are committed in batches; a post's own results are flushed before it is rewritten.
BATCH = 256
# A failed source is retried after failure_backoff * 2**(failures-1), at most a week later.
MAX_BACKOFF = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one source ended in this run."""

    status: str
    reason: str | None = None
    obj: StoredObject | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    fetched_from: str | None = None
    attempts: tuple[Attempt, ...] = ()


@dataclass
class RunSummary:
    """What a run did, for the closing summary and the exit status."""

    posts: int = 0
    rewritten: int = 0
    left_alone: int = 0
    fetched_bytes: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    failed_hosts: Counter[str] = field(default_factory=Counter)

    @property
    def exit_status(self) -> ExitStatus:
        """0 when every reference is mirrored (or there was nothing to do), else 1."""
        not_done = sum(n for status, n in self.statuses.items() if status != "mirrored")
        return ExitStatus.INCOMPLETE if not_done or self.left_alone else ExitStatus.OK


def _outcome_from_row(row: SourceRow) -> Outcome:
    obj = StoredObject(row.sha256 or "", row.ext or "", row.size or 0, "")
    return Outcome(
        "mirrored", None, obj, row.format, row.width, row.height, row.fetched_from, row.attempts
    )


class Job:
    """One ``mirror fetch`` or ``mirror run``; use :meth:`run` once."""

    def __init__(
        self,
        config: Config,
        *,
        rewrite: bool,
        dry_run: bool = False,
        out: Path | None = None,
        report: TextIO | None = None,
        diff: TextIO | None = None,
    ) -> None:
        self.config = config
        self.rewrite = rewrite
        self.dry_run = dry_run
        self.out = out
        self.report = report
        self.diff = diff if diff is not None else sys.stdout
        self.summary = RunSummary()
        self.extractor = Extractor(config.scan)
        root = Path(config.store.path)
        self.store = LocalStore(root, config.store.durability)
        path = manifest_path(root)
        if dry_run:
            # A dry run reads what exists and writes nothing, not even an empty store.
            exists = path.is_file()
            self.manifest = Manifest(path if exists else Path(":memory:"), readonly=exists)
        else:
            self.manifest = Manifest(path, durability=config.store.durability)
        self._fetcher: Fetcher | None = None
        self._futures: dict[str, asyncio.Future[Outcome]] = {}
        self._pending: list[SourceResult] = []
        self._failure: BaseException | None = None

    async def run(self, paths: Sequence[Path]) -> RunSummary:
        """
        Process every post under ``paths``.

        Raises:
            MirrorError: the store or manifest cannot be written (the run stops at once).
        """
        if not self.dry_run:
            # Once per run, before any work starts: not worth a thread hop.
            Path(self.config.store.path).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        with self.manifest:
            async with Fetcher(self.config) as fetcher:
                self._fetcher = fetcher
                await self._all_posts(paths)
            self._flush()
        return self.summary

    async def _all_posts(self, paths: Sequence[Path]) -> None:
        slots = asyncio.Semaphore(POSTS_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None and self._failure is None:
                self._failure = task.exception()

        for post in iter_posts(paths, self.config.scan):
            await slots.acquire()
            if self._failure is not None:
                slots.release()
                break
            task = asyncio.create_task(self._post(post))
            tasks.add(task)
            task.add_done_callback(done)
        if self._failure is not None:
            for task in list(tasks):
                task.cancel()
        await asyncio.gather(*list(tasks), return_exceptions=True)
        if self._failure is not None:
            raise self._failure

    async def _post(self, post: Post) -> None:
        self.summary.posts += 1
        text = decode(post.data)
        refs = self.extractor(text, post.rel)
        targets: dict[str, list[ImageRef]] = {}
        for ref in refs:
            if ref.proxied or self.config.scan.raw == "all":
                targets.setdefault(ref.source, []).append(ref)
        known = self.manifest.get_many(r.source for r in refs if r.source not in targets)
        paired = {s for s, row in known.items() if row.status == "mirrored"}
        outcomes = dict(
            zip(
                targets,
                await asyncio.gather(*(self._source(s, targets[s]) for s in targets)),
                strict=True,
            )
        )
        for source in paired:
            outcomes[source] = _outcome_from_row(known[source])
        reported = [r for r in refs if r.source in outcomes]
        mapping = {
            source: local_url(self.config.rewrite.base_url, o.obj.sha256, o.obj.ext)
            for source, o in outcomes.items()
            if o.status == "mirrored" and o.obj is not None
        }
        # local_url is what the post now says, so only a run that rewrites fills it in.
        says = mapping if self.rewrite and not self.dry_run else {}
        for ref in reported:
            self._count(ref, outcomes[ref.source], says.get(ref.source))
        if self.rewrite:
            self._rewrite(post, text, refs, mapping)

    def _rewrite(
        self, post: Post, text: str, refs: list[ImageRef], mapping: dict[str, str]
    ) -> None:
        new_text, spans = replace(text, refs, mapping)
        if self.dry_run:
            if spans:
                diff = difflib.unified_diff(
                    text.splitlines(keepends=True),
                    new_text.splitlines(keepends=True),
                    f"a/{post.rel}",
                    f"b/{post.rel}",
                )
                self.diff.writelines(d if d.endswith("\n") else d + "\n" for d in diff)
                self.summary.rewritten += 1
            return
        if not spans:
            if self.out is not None:
                write_post(post, post.data, self.out)
            return
        new_data = encode(new_text)
        self._flush()
        sources = [span.source for span in spans]
        generation = None
        if self.out is None:
            generation = self.manifest.record_spans(
                str(post.path),
                spans,
                sources,
                before_sha256=hashlib.sha256(post.data).hexdigest(),
                after_sha256=hashlib.sha256(new_data).hexdigest(),
            )
        if write_post(post, new_data, self.out):
            self.summary.rewritten += 1
        else:
            self.summary.left_alone += 1
            if generation is not None:
                self.manifest.forget_rewrite(str(post.path), generation)

    async def _source(self, source: str, refs: list[ImageRef]) -> Outcome:
        future = self._futures.get(source)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._futures[source] = future
            try:
                future.set_result(await self._resolve(source, refs))
            except asyncio.CancelledError:
                future.cancel()
                raise
            except BaseException as exc:
                future.set_exception(exc)
                # The run stops on this error anyway; waiters need not all retrieve it.
                future.exception()
                raise
            return future.result()
        return await asyncio.shield(future)

    async def _resolve(self, source: str, refs: list[ImageRef]) -> Outcome:
        row = self.manifest.get(source)
        now = time.time()
        mirrored = row is not None and row.status == "mirrored" and row.sha256 and row.ext
        if mirrored and row is not None and self.store.has(row.sha256 or "", row.ext or ""):
            return _outcome_from_row(row)
        if row is not None and row.status != "mirrored" and (row.next_attempt or 0) > now:
            return Outcome("skipped", f"backoff ({row.reason})", attempts=row.attempts)
        if self.dry_run:
            return Outcome("skipped", "dry-run")
        outcome = await self._download(source, refs)
        failures = (row.failures if row is not None else 0) + 1
        backoff = min(MAX_BACKOFF, self.config.fetch.failure_backoff * 2 ** (failures - 1))
        obj = outcome.obj
        self._pending.append(
            SourceResult(
                source=source,
                status=outcome.status,
                reason=outcome.reason,
                sha256=obj.sha256 if obj else None,
                ext=obj.ext if obj else None,
                size=obj.size if obj else None,
                format=outcome.format,
                width=outcome.width,
                height=outcome.height,
                fetched_from=outcome.fetched_from,
                attempts=outcome.attempts,
                attempted_at=now,
                next_attempt=None if outcome.status == "mirrored" else now + backoff,
            )
        )
        if len(self._pending) >= BATCH:
            self._flush()
        return outcome

    async def _download(self, source: str, refs: list[ImageRef]) -> Outcome:
        assert self._fetcher is not None
        wrapper = next((r.decoded.strip() for r in refs if r.proxied), None)
        sized = next((r for r in refs if r.declared and r.declared_kind != "display"), None)
        declared = sized.declared if sized else None
        kind = sized.declared_kind if sized else None
        urls = [
            (name, source if name == "origin" else wrapper) for name in self.config.fetch.sources
        ]
        attempts: list[Attempt] = []
        first: MirrorError | None = None
        for name, url in urls:
            if url is None:
                continue
            try:
                download = await self._fetcher.get(url, limit_key=origin_host(source))
                info = verify(download.data, self.config.verify, declared, kind)
                obj = self.store.put(download.data, download.sha256, info.ext)
            except (FetchError, VerifyError) as exc:
                attempts.append(Attempt(name, url, exc.reason))
                first = first or exc
                continue
            attempts.append(Attempt(name, url, "ok"))
            self.summary.fetched_bytes += obj.size
            return Outcome(
                "mirrored", None, obj, info.format, info.width, info.height, name, tuple(attempts)
            )
        status = "blocked" if isinstance(first, PolicyError) else "failed"
        return Outcome(status, first.reason if first else "no-source", attempts=tuple(attempts))

    def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self.manifest.record_results(batch)

    def _count(self, ref: ImageRef, outcome: Outcome, url: str | None) -> None:
        self.summary.statuses[outcome.status] += 1
        if outcome.status != "mirrored":
            self.summary.reasons[outcome.reason or "unknown"] += 1
            self.summary.failed_hosts[origin_host(ref.source)] += 1
        if self.report is None:
            return
        obj = outcome.obj
        row = {
            "post": ref.post,
            "line": ref.line,
            "url": ref.decoded,
            "source": ref.source,
            "where": ref.where,
            "declared": list(ref.declared) if ref.declared else None,
            "status": outcome.status,
            "reason": outcome.reason,
            "sha256": obj.sha256 if obj else None,
            "bytes": obj.size if obj else None,
            "format": outcome.format,
            "width": outcome.width,
            "height": outcome.height,
            "file": self.store.relpath(obj.sha256, obj.ext) if obj else None,
            "local_url": url,
            "fetched_from": outcome.fetched_from,
            "attempts": [
                {"source": a.source, "url": a.url, "outcome": a.outcome} for a in outcome.attempts
            ],
        }
        self.report.write(json.dumps(row, ensure_ascii=False) + "\n")
