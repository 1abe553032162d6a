"""
The progress line of ``run``, ``fetch`` and ``demo`` on a terminal.

Two threads beside the job, so neither a busy event loop nor a slow first pass stalls the line:

- the *first pass* walks the posts the job will read (the stat fast path applied, as the job
  applies it), extracts their references and counts those a run acts on; until it is done the
  line says ``scanning…`` instead of totals;
- the *ticker* redraws the line every ``interval`` seconds (at most one) from the job's live
  summary: posts and references done (of the totals once known), mirrored/failed so far, bytes,
  rate, and an ETA on references.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

from mirror.errors import MirrorError
from mirror.extract import Extractor
from mirror.manifest import PostState, manifest_exists, open_manifest
from mirror.models import ImageRef
from mirror.pipeline import Job, RunSummary, post_key
from mirror.rewrite import decode
from mirror.scan import find_posts, read_post

INTERVAL = 0.5


@dataclass
class Totals:
    """What the first pass found; None until it is done."""

    posts: int | None = None
    refs: int | None = None


def acted_on(refs: Sequence[ImageRef], raw: str) -> int:
    """How many of a post's references a run acts on: the wrapped, and raw copies of them."""
    if raw == "all":
        return len(refs)
    wrapped = {ref.source for ref in refs if ref.proxied}
    return sum(1 for ref in refs if ref.proxied or ref.source in wrapped)


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    return f"{whole // 60}:{whole % 60:02d}"


def progress_line(summary: RunSummary, totals: Totals, elapsed: float) -> str:
    """Describe a run in progress (see the module docstring)."""
    statuses = dict(summary.statuses)  # one C-level copy: the job's thread may be adding to it
    done = sum(statuses.values())
    failed = statuses.get("failed", 0) + statuses.get("blocked", 0)
    skipped = statuses.get("skipped", 0)
    so_far = f"{statuses.get('mirrored', 0)} mirrored, {failed} failed"
    if skipped:
        so_far += f", {skipped} skipped"
    megabytes = summary.fetched_bytes / 1e6
    rate = f"{megabytes:.1f} MB ({megabytes / max(elapsed, 1e-3):.1f} MB/s)"
    if totals.posts is None or totals.refs is None:
        return f"{summary.posts} posts, {done} references ({so_far}), {rate}, scanning…"
    # Raw copies of sources mirrored from other posts can push the done count past the estimate.
    refs = max(totals.refs, done)
    posts = max(totals.posts, summary.posts)
    line = f"{summary.posts}/{posts} posts, {done}/{refs} references ({so_far}), {rate}"
    if 0 < done < refs:
        line += f", ETA {_duration(elapsed / done * (refs - done))}"
    return line


def first_pass(job: Job, paths: Sequence[Path], totals: Totals, stop: threading.Event) -> None:
    """
    Count the posts under ``paths`` and the references the job will act on in those it reads.

    Posts the job skips unread (the stat fast path) count as posts but add no references, as in
    the job's own summary. Stops early, leaving ``totals`` unknown, once ``stop`` is set. Runs
    an event loop of its own: the job's is busy, and the manifest is reached through the seam.
    """
    asyncio.run(_first_pass(job, paths, totals, stop))


async def _first_pass(
    job: Job, paths: Sequence[Path], totals: Totals, stop: threading.Event
) -> None:
    config = job.config
    extractor = Extractor(config.scan)
    posts = refs = 0
    async with contextlib.AsyncExitStack() as stack:
        manifest = None
        if job.fast and await manifest_exists(config):
            # Its own read-only connection: this thread must not share the job's.
            opened = open_manifest(config, readonly=True)
            manifest = await stack.enter_async_context(opened)
        folder, states = "", dict[str, PostState]()
        for file, rel in find_posts(paths, config.scan):
            if stop.is_set():
                return
            posts += 1
            if manifest is not None:
                key = post_key(file)
                if key.rpartition(os.sep)[0] != folder:
                    folder = key.rpartition(os.sep)[0]
                    states = await manifest.post_states_in(folder)
                with contextlib.suppress(OSError):
                    if job.skips_unread(states.get(key), file.stat()):
                        continue
            post = read_post(file, rel, config.scan)
            if post is not None:
                refs += acted_on(extractor(decode(post.data), post.rel), config.scan.raw)
    totals.posts, totals.refs = posts, refs


class Progress:
    """
    ``with Progress(job, paths, sys.stderr):`` draws the line while the block runs, then clears it.

    ``wait`` is how the ticker sleeps between redraws (an Event's wait; tests pass their own).
    """

    def __init__(
        self,
        job: Job,
        paths: Sequence[Path],
        out: TextIO,
        *,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        count: bool = True,
    ) -> None:
        self.job = job
        self.paths = paths
        self.out = out
        self.interval = min(interval, 1.0)
        self.clock = clock
        self.count = count
        self.totals = Totals()
        self.started = clock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def line(self) -> str:
        """The line as it would be drawn now."""
        return progress_line(self.job.summary, self.totals, self.clock() - self.started)

    def draw(self) -> None:
        """Redraw the line, cut to the terminal's width (a wrapped line cannot be redrawn)."""
        try:
            line = self.line()
        except RuntimeError:
            return  # a counter grew while it was read; the next tick draws
        columns = shutil.get_terminal_size().columns
        if len(line) >= columns:
            line = line[: max(columns - 2, 0)] + "…"
        self.out.write(f"\r{line}\x1b[K")
        self.out.flush()

    def _tick(self) -> None:
        # Bounded by the stop event, set when the job ends.
        while not self._stop.wait(self.interval):
            self.draw()

    def _count(self) -> None:
        with contextlib.suppress(MirrorError, OSError):
            # Only the progress line depends on it ("scanning…" stays); the job reports errors.
            first_pass(self.job, self.paths, self.totals, self._stop)

    def __enter__(self) -> Progress:
        self.started = self.clock()
        targets = [self._tick, self._count] if self.count else [self._tick]
        for target in targets:
            thread = threading.Thread(target=target, name=f"mirror-progress{target.__name__}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.out.write("\r\x1b[K")
        self.out.flush()


@contextlib.contextmanager
def maybe_progress(
    job: Job, paths: Sequence[Path], out: TextIO, enabled: bool
) -> Iterator[Progress | None]:
    """A :class:`Progress` when ``enabled`` (not quiet, and ``out`` is a terminal), else nothing."""
    if not enabled:
        yield None
        return
    with Progress(job, paths, out) as progress:
        yield progress
