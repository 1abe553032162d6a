"""
The orchestrator: scan → extract → fetch → verify → store/manifest → rewrite, for ``fetch``/``run``.

Posts are streamed with a bounded number in flight, so memory stays flat. Each source URL is
fetched at most once per run however many posts name it (a shared future, then a bounded memory
of recent outcomes backed by the manifest), and never again once mirrored. A post whose size,
mtime and inode match the manifest's record of a finished post is not even read (the stat fast
path); one that was only touched is hashed, not parsed. A post is rewritten only after all its
references were attempted, and only its verified references change. Order of writes, so that a
crash at any instant is safe: object (committed to the store: a rename, or an S3 upload that
shows only once complete) → manifest row (committed) → rewrite spans (committed) → post (atomic
rename) → the post's record for the fast path (committed).

The store is reached only through :class:`~mirror.store.ObjectStore` (``open_store``), so the run
is the same on a local folder and on a bucket; the manifest only through the async seam
(:class:`mirror.manifest.base.Manifest`), so it is the same on SQLite and on PostgreSQL. Whether
a mirrored source's object is still there is asked once per object per run (:class:`Presence`),
and only for sources the run resolves: the stat fast path never asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import secrets
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from mirror.config import Config
from mirror.downloader import Context, Downloader, Outcome
from mirror.errors import ExitStatus, MirrorError
from mirror.extract import Extractor, post_date
from mirror.fetch import Fetcher
from mirror.jsonl import reference_row, write_row
from mirror.manifest import PostState, SourceResult, SourceRow, dry_run_manifest, open_manifest
from mirror.manifest.base import Manifest
from mirror.models import ImageRef, Post, StoredObject
from mirror.rewrite import decode, encode, post_diff, replace
from mirror.scan import find_posts, read_post, write_recorded
from mirror.source import origin_host
from mirror.store import ObjectStore, local_url, open_store

# Posts whose references are being fetched at once; bounds memory on huge archives.
POSTS_IN_FLIGHT = 64
# Results are committed in batches; a post's own results are flushed before it is rewritten.
BATCH = 256
# A failed source is retried after failure_backoff * 2**(failures-1), at most a week later.
MAX_BACKOFF = 7 * 24 * 3600.0
# Outcomes kept in memory after their fetch ends; older ones are read back from the manifest.
RECENT = 4096
# A dry run lists this many of the URLs a real run would fetch.
PLAN_URLS = 10
# How long a run's pin outlives it when the run is killed: far longer than any post's wait
# between an object's commit and its rows' (one batch), short enough to free serve's budget.
PIN_SECONDS = 6 * 3600.0
# Objects known to be in the store, per run; beyond this the oldest are asked about again.
PRESENT = 16384
# A staged file (or S3 multipart upload) this old is stale even when its writer may be alive: a
# serve without the store lock may be mid-download, so only dead writers' go at once.
STALE_STAGING = 3600.0


class Presence:
    """
    Whether objects are still in the store, asked with ``store.stat`` once per object per run.

    Only positive answers are kept (bounded, oldest out): a missing object is fetched again and
    noted with :meth:`saw` once committed.
    """

    def __init__(self, store: ObjectStore, limit: int = PRESENT) -> None:
        self.store = store
        self.limit = limit
        self.asked = 0
        self._present: OrderedDict[str, None] = OrderedDict()

    async def has(self, sha256: str, ext: str) -> bool:
        """Tell whether the object is stored."""
        key = f"{sha256}.{ext}"
        if key in self._present:
            self._present.move_to_end(key)
            return True
        self.asked += 1
        if await self.store.stat(sha256, ext) is None:
            return False
        self.saw(sha256, ext)
        return True

    def saw(self, sha256: str, ext: str) -> None:
        """Note an object known to be stored (just committed)."""
        self._present[f"{sha256}.{ext}"] = None
        if len(self._present) > self.limit:
            self._present.popitem(last=False)


@dataclass
class RunSummary:
    """
    What a run did, for the closing summary and the exit status.

    ``found`` counts every reference in the posts read (what ``mirror scan`` counts);
    ``statuses`` counts the ones the run acted on: every wrapped reference, and the raw ones that
    are copies of a wrapped source (all raw ones with ``scan.raw = "all"``). ``planned*`` is a
    dry run's plan: the distinct sources a real run would fetch.
    """

    posts: int = 0
    unchanged: int = 0
    waiting: int = 0
    rewritten: int = 0
    left_alone: int = 0
    fetched_bytes: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    failed_hosts: Counter[str] = field(default_factory=Counter)
    found: int = 0
    found_wrapped: int = 0
    acted_wrapped: int = 0
    acted_raw: int = 0
    failed_reasons: Counter[str] = field(default_factory=Counter)
    planned: set[str] = field(default_factory=set)
    planned_hosts: Counter[str] = field(default_factory=Counter)
    planned_posts: Counter[str] = field(default_factory=Counter)
    planned_urls: list[str] = field(default_factory=list)

    def count(self, ref: ImageRef, outcome: Outcome) -> None:
        """Count how one reference the run acted on ended."""
        self.statuses[outcome.status] += 1
        if outcome.status != "mirrored":
            self.reasons[outcome.reason or "unknown"] += 1
            self.failed_hosts[origin_host(ref.source)] += 1

    def saw(
        self,
        post: str,
        refs: Sequence[ImageRef],
        acted: Sequence[ImageRef],
        outcomes: Mapping[str, Outcome],
    ) -> None:
        """Count one post's references: all of them, those acted on, and a dry run's plan."""
        self.found += len(refs)
        self.found_wrapped += sum(ref.proxied for ref in refs)
        in_post: set[str] = set()
        for ref in acted:
            outcome = outcomes[ref.source]
            if ref.proxied:
                self.acted_wrapped += 1
            else:
                self.acted_raw += 1
            if outcome.status in ("failed", "blocked"):
                self.failed_reasons[outcome.reason or "unknown"] += 1
            if outcome.reason == "dry-run" and ref.source not in in_post:
                in_post.add(ref.source)
                self.planned_posts[post] += 1
                if ref.source not in self.planned:
                    self.planned.add(ref.source)
                    self.planned_hosts[origin_host(ref.source)] += 1
                    if len(self.planned_urls) < PLAN_URLS:
                        self.planned_urls.append(ref.source)

    @property
    def offline(self) -> bool:
        """
        Tell whether no host could be resolved: every failure is ``dns`` (or ``host-down``, the
        circuit breaker's verdict after them) and nothing was downloaded.
        """
        reasons = set(self.failed_reasons)
        return "dns" in reasons and reasons <= {"dns", "host-down"} and not self.fetched_bytes

    @property
    def exit_status(self) -> ExitStatus:
        """
        0 when every reference is mirrored (or there was nothing to do), else 1.

        ``waiting`` counts unchanged posts skipped unread that still lack a reference in backoff.
        """
        not_done = sum(n for status, n in self.statuses.items() if status != "mirrored")
        incomplete = not_done or self.left_alone or self.waiting
        return ExitStatus.INCOMPLETE if incomplete else ExitStatus.OK


@dataclass(frozen=True, slots=True)
class PostRecord:
    """A post this run finished with, for the stat fast path of the next run."""

    path: Path
    stat: os.stat_result
    sha256: str
    next_check: float | None
    mode: str | None


def post_key(path: Path) -> str:
    """
    A post's key in the posts table: absolute, so `mirror run posts` and `mirror run /abs/posts`
    share records; not resolved, because that would stat every component of every path.
    """
    return os.path.abspath(path)  # noqa: PTH100


def _context(source: str, refs: list[ImageRef], date: str | None) -> Context:
    """The other sources of the elements that name ``source`` (srcset, data-original...)."""
    elements = {r.element for r in refs if r.source == source}
    others = dict.fromkeys(r.source for r in refs if r.element in elements and r.source != source)
    return Context(tuple(others), date)


def outcome_from_row(row: SourceRow) -> Outcome:
    """Return the outcome a mirrored manifest row stands for, as a run found it."""
    obj = StoredObject(row.sha256 or "", row.ext or "", row.size or 0, "")
    return Outcome(
        "mirrored",
        None,
        obj,
        row.format,
        row.width,
        row.height,
        row.fetched_from,
        row.attempts,
        etag=row.etag,
        last_modified=row.last_modified,
        via=row.via,
    )


class Job:
    """
    One ``mirror fetch`` or ``mirror run``; use :meth:`run` once.

    ``manifest`` is an open one the caller holds the store lock of (``manifest.lock``), as
    ``mirror run`` does. Without it :meth:`run` opens the one ``config`` names, SQLite or
    PostgreSQL (a dry run's: :func:`~mirror.manifest.dry_run_manifest`), under no lock: the
    demo's own folder, tests.
    """

    def __init__(
        self,
        config: Config,
        *,
        rewrite: bool,
        dry_run: bool = False,
        out: Path | None = None,
        report: TextIO | None = None,
        diff: TextIO | None = None,
        only_failed: bool = False,
        retry_reasons: frozenset[str] = frozenset(),
        refresh_after: float | None = None,
        clock: Callable[[], float] = time.time,
        manifest: Manifest | None = None,
    ) -> None:
        self.config = config
        self.rewrite = rewrite
        self.dry_run = dry_run
        self.out = out
        self.report = report
        self.diff = diff if diff is not None else sys.stdout
        self.only_failed = only_failed or bool(retry_reasons)
        self.retry_reasons = retry_reasons
        self.refresh_after = refresh_after
        self.clock = clock
        self._given = manifest
        self.summary = RunSummary()
        self.extractor = Extractor(config.scan)
        self.store: ObjectStore = open_store(config)
        self.presence = Presence(self.store)
        self._manifest: Manifest | None = None
        # What a finished post is recorded as: only an in-place run leaves it rewritten.
        self.mode = "run" if rewrite and out is None else "fetch"
        # A report lists every reference, so a run that writes one reads every post.
        self.fast = not dry_run and out is None and refresh_after is None and report is None
        # store.durability decides for posts too: fsyncs per post dominated a big first run.
        self.durable = config.store.durability == "power"
        self._downloader: Downloader | None = None
        self._futures: dict[str, asyncio.Future[Outcome]] = {}
        self._recent: OrderedDict[str, Outcome] = OrderedDict()
        self._pending: list[SourceResult] = []
        self._posts: list[PostRecord] = []
        # One flush at a time, so a post's record never commits before its sources' rows.
        self._flushing = asyncio.Lock()
        self._failure: BaseException | None = None
        # Whose pins these are: this run's only (a killed run's expire after PIN_SECONDS).
        self.holder = f"run:{os.getpid()}:{secrets.token_hex(4)}"

    @property
    def manifest(self) -> Manifest:
        """The manifest, while :meth:`run` runs."""
        assert self._manifest is not None, "the manifest is open only while the job runs"
        return self._manifest

    async def run(self, paths: Sequence[Path]) -> RunSummary:
        """
        Process every post under ``paths``.

        Raises:
            MirrorError: the store or manifest cannot be written (the run stops at once).
        """
        async with contextlib.AsyncExitStack() as stack:
            manifest = self._given
            if manifest is None:
                # The job's clock stays the job's: the manifest stamps rows with real time.
                if self.dry_run:
                    opened = await dry_run_manifest(self.config)
                else:
                    opened = open_manifest(self.config)
                manifest = await stack.enter_async_context(opened)
            self._manifest = manifest
            try:
                async with self.store:
                    if not self.dry_run:
                        # The caller holds the store lock: a dead writer's staged files go at once.
                        await self.store.cleanup(older_than=STALE_STAGING)
                    await self._run(paths)
            finally:
                self._manifest = None
        return self.summary

    async def _run(self, paths: Sequence[Path]) -> None:
        try:
            async with Fetcher(self.config) as fetcher:
                self._downloader = Downloader(
                    self.config, fetcher, self.store, self.manifest, self.clock, pin=self._pin
                )
                await self._all_posts(paths)
                self.summary.fetched_bytes = self._downloader.fetched_bytes
        except BaseException:
            # Cancelled (SIGTERM) or failing: keep what finished; objects are already stored.
            with contextlib.suppress(MirrorError):
                await self._finish()
            raise
        await self._finish()

    async def _finish(self) -> None:
        await self._flush()
        if not self.dry_run:
            # Only posts whose rows are committed name our objects: those rows keep them.
            await self.manifest.unpin(self.holder)

    async def _pin(self, sha256: str) -> None:
        """Keep serve's eviction off an object until the rows naming it are committed."""
        # A pin that finds the object evicted needs nothing more: the commit after it writes it.
        await self.manifest.pin([sha256], self.holder, self.clock() + PIN_SECONDS)

    async def _all_posts(self, paths: Sequence[Path]) -> None:
        slots = asyncio.Semaphore(POSTS_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None and self._failure is None:
                self._failure = task.exception()

        sweep = not self.dry_run and self.out is None
        folder, states = "", {}
        for path, rel in find_posts(paths, self.config.scan, sweep=sweep):
            try:
                st = path.stat()
            except OSError:
                st = None  # read_post says why
            if self.fast and st is not None:
                key = post_key(path)
                if key.rpartition(os.sep)[0] != folder:
                    # One query per folder instead of one per post: the no-op re-run's cost.
                    folder = key.rpartition(os.sep)[0]
                    states = await self.manifest.post_states_in(folder)
                if self._unchanged(states.get(key), st):
                    continue
            post = read_post(path, rel, self.config.scan)
            if post is None:
                continue
            await slots.acquire()
            if self._failure is not None:
                slots.release()
                break
            task = asyncio.create_task(self._post(post, st))
            tasks.add(task)
            task.add_done_callback(done)
        if self._failure is not None:
            for task in list(tasks):
                task.cancel()
        await asyncio.gather(*list(tasks), return_exceptions=True)
        if self._failure is not None:
            raise self._failure

    def _finished(self, state: PostState) -> bool:
        """Tell whether a post in ``state`` needs nothing from this run."""
        if state.mode is None or (self.mode == "run" and state.mode != "run"):
            return False
        if state.next_check is None:
            return True
        return not self.only_failed and state.next_check > self.clock()

    def skips_unread(self, state: PostState | None, st: os.stat_result) -> bool:
        """
        Tell whether the stat fast path skips a post in ``state`` unread: same size, mtime and
        inode as a finished post (the progress line's first pass asks too).
        """
        if state is None or (st.st_size, st.st_mtime_ns, st.st_ino) != (
            state.size,
            state.mtime_ns,
            state.inode,
        ):
            return False
        return self._finished(state)

    def _unchanged(self, state: PostState | None, st: os.stat_result) -> bool:
        """The stat fast path: same size, mtime and inode as a finished post, so not read."""
        if not self.skips_unread(state, st):
            return False
        assert state is not None
        self.summary.posts += 1
        self.summary.unchanged += 1
        if state.next_check is not None:
            self.summary.waiting += 1
        return True

    async def _post(self, post: Post, st: os.stat_result | None) -> None:
        self.summary.posts += 1
        digest = hashlib.sha256(post.data).hexdigest()
        if self.fast and st is not None:
            state = await self.manifest.post_state(post_key(post.path))
            if state is not None and state.sha256 == digest and self._finished(state):
                # Touched but not changed: note the new stat so the next run skips it unread.
                await self._note_post(
                    PostRecord(post.path, st, digest, state.next_check, state.mode)
                )
                self.summary.unchanged += 1
                return
        text = decode(post.data)
        refs = self.extractor(text, post.rel)
        targets: dict[str, list[ImageRef]] = {}
        for ref in refs:
            if ref.proxied or self.config.scan.raw == "all":
                targets.setdefault(ref.source, []).append(ref)
        # One query for the post's sources, not one per source.
        known = await self.manifest.get_many(r.source for r in refs)
        paired = {s for s, row in known.items() if s not in targets and row.status == "mirrored"}
        date = post_date(text)
        outcomes = dict(
            zip(
                targets,
                await asyncio.gather(
                    *(
                        self._source(s, targets[s], _context(s, refs, date), known.get(s))
                        for s in targets
                    )
                ),
                strict=True,
            )
        )
        for source in paired:
            outcomes[source] = outcome_from_row(known[source])
        reported = [r for r in refs if r.source in outcomes]
        mapping = {
            source: local_url(self.config.base_url, o.obj.sha256, o.obj.ext)
            for source, o in outcomes.items()
            if o.status == "mirrored" and o.obj is not None
        }
        # local_url is what the post now says, so only a run that rewrites fills it in.
        says = mapping if self.rewrite and not self.dry_run else {}
        for ref in reported:
            self._count(ref, outcomes[ref.source], says.get(ref.source))
        self.summary.saw(post.rel, refs, reported, outcomes)
        if self._downloader is not None:
            # Live, for the progress line; run() sets the final figure.
            self.summary.fetched_bytes = self._downloader.fetched_bytes
        waiting = [o.next_attempt or self.clock() for o in outcomes.values() if o.obj is None]
        next_check = min(waiting) if waiting else None
        if self.rewrite:
            if self.config.rewrite.on_failure == "unwrap":
                # A dead wrapper becomes its origin URL, so copies do not need the proxy.
                unwrap = {s: s for s, o in outcomes.items() if o.obj is None}
                refs = [
                    r for r in refs if r.source in mapping or (r.proxied and r.source in unwrap)
                ]
                mapping = {**unwrap, **mapping}
            written = await self._rewrite(post, text, refs, mapping)
            if written is None:
                return
            if written is not post.data:
                digest = hashlib.sha256(written).hexdigest()
                st = post.path.stat() if self.out is None else st
        if st is not None and not self.dry_run:
            await self._note_post(PostRecord(post.path, st, digest, next_check, self.mode))

    async def _note_post(self, record: PostRecord) -> None:
        self._posts.append(record)
        # Results first (a post's record claims its sources are settled), in bounded batches.
        if len(self._posts) >= BATCH:
            await self._flush()

    async def _rewrite(
        self, post: Post, text: str, refs: list[ImageRef], mapping: dict[str, str]
    ) -> bytes | None:
        """Rewrite the post; return its bytes now (``post.data`` when unchanged), None if left."""
        new_text, spans = replace(text, refs, mapping, site_url=self.config.rewrite.site_url)
        new_data = encode(new_text) if spans else post.data
        if self.dry_run:
            if spans:
                self.diff.writelines(post_diff(post.data, new_data, post.rel))
                self.summary.rewritten += 1
            return post.data
        if not spans and self.out is None:
            return post.data
        # Results first: the spans name sources the manifest must already hold.
        await self._flush()
        manifest = self.manifest if self.out is None else None
        if await write_recorded(post, new_data, spans, manifest, self.out, durable=self.durable):
            self.summary.rewritten += bool(spans)
            return new_data
        self.summary.left_alone += 1
        return None

    async def _source(
        self, source: str, refs: list[ImageRef], context: Context, row: SourceRow | None
    ) -> Outcome:
        """Resolve ``source`` once per run however many posts name it; remember recent ones."""
        recent = self._recent.get(source)
        if recent is not None:
            return recent
        future = self._futures.get(source)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._futures[source] = future
        try:
            outcome = await self._resolve(source, refs, context, row)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            # The run stops on this error anyway; waiters need not all retrieve it.
            future.exception()
            raise
        finally:
            del self._futures[source]
        future.set_result(outcome)
        # Bounded, so memory stays flat on a huge archive; older ones come from the manifest.
        self._recent[source] = outcome
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        return outcome

    def _selected(self, row: SourceRow | None) -> bool:
        """With --only-failed / --retry-reason: whether this source is to be tried again."""
        if row is None or row.status not in ("failed", "blocked"):
            return False
        return not self.retry_reasons or row.reason in self.retry_reasons

    async def _resolve(
        self, source: str, refs: list[ImageRef], context: Context, row: SourceRow | None
    ) -> Outcome:
        """``row`` is the manifest's as the post began; a flush since can only have added it."""
        now = self.clock()
        has = row is not None and row.status == "mirrored" and row.sha256 and row.ext
        if has and row is not None and await self.presence.has(row.sha256 or "", row.ext or ""):
            stale = self.refresh_after is not None and (row.last_attempt or 0) < now - (
                self.refresh_after
            )
            if stale and not self.dry_run:
                return await self._refresh(source, refs, context, row, now)
            return outcome_from_row(row)
        if self.only_failed and not self._selected(row):
            reason = "not-selected" if row is not None else "not-failed"
            return Outcome("skipped", reason, next_attempt=now)
        if (
            not self.only_failed
            and row is not None
            and row.status != "mirrored"
            and (row.next_attempt or 0) > now
        ):
            reason = f"backoff ({row.reason})"
            return Outcome("skipped", reason, attempts=row.attempts, next_attempt=row.next_attempt)
        if self.dry_run:
            return Outcome("skipped", "dry-run", next_attempt=now)
        assert self._downloader is not None
        outcome = await self._downloader.download(source, refs, context, {})
        if outcome.obj is not None:
            self.presence.saw(outcome.obj.sha256, outcome.obj.ext)
        if outcome.status != "mirrored":
            failures = (row.failures if row is not None else 0) + 1
            backoff = min(MAX_BACKOFF, self.config.fetch.failure_backoff * 2 ** (failures - 1))
            # host-down is this run's verdict on the host, not on the URL: due next run.
            due = now if outcome.reason == "host-down" else now + backoff
            outcome = dataclasses.replace(outcome, next_attempt=due)
        await self._record(source, outcome, now)
        return outcome

    async def _refresh(
        self, source: str, refs: list[ImageRef], context: Context, row: SourceRow, now: float
    ) -> Outcome:
        """Revalidate a mirrored source with a conditional request; a 304 downloads nothing."""
        assert self._downloader is not None
        headers = {}
        if row.etag:
            headers["If-None-Match"] = row.etag
        if row.last_modified:
            headers["If-Modified-Since"] = row.last_modified
        kept = outcome_from_row(row)
        outcome = await self._downloader.download(source, refs, context, headers, names=("origin",))
        if outcome.obj is None:
            # 304, or the origin failed: the stored copy stands (the manifest keeps it too).
            if outcome.status == "mirrored":
                result = dataclasses.replace(kept, reason=outcome.reason, attempts=outcome.attempts)
            else:
                due = now + self.config.fetch.failure_backoff
                result = dataclasses.replace(outcome, next_attempt=due)
            await self._record(source, result, now)
            return kept
        await self._record(source, outcome, now)
        return outcome

    async def _record(self, source: str, outcome: Outcome, now: float) -> None:
        self._pending.append(outcome.result(source, now))
        if len(self._pending) >= BATCH:
            await self._flush()

    async def _flush(self) -> None:
        async with self._flushing:
            await self._flush_now()

    async def _flush_now(self) -> None:
        # Taken only under the lock: one flush waiting for the database must not let a later one
        # commit posts whose sources are in the batch still on its way.
        if self._pending:
            batch, self._pending = self._pending, []
            await self.manifest.record_results(batch)
        if self._posts:
            posts, self._posts = self._posts, []
            await self.manifest.record_posts(
                (
                    post_key(r.path),
                    r.stat.st_size,
                    r.stat.st_mtime_ns,
                    r.stat.st_ino,
                    r.sha256,
                    r.next_check,
                    r.mode,
                )
                for r in posts
            )

    def _count(self, ref: ImageRef, outcome: Outcome, url: str | None) -> None:
        self.summary.count(ref, outcome)
        if self.report is None:
            return
        row = reference_row(ref, outcome, url, self.config.rewrite.site_url, self.store.key)
        write_row(self.report, row)
