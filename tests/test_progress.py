"""The progress line: totals after a first pass, live counts, an ETA, redrawn from a thread."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import pytest

from mirror.config import Config, ManifestConfig, StoreConfig
from mirror.manifest import open_manifest
from mirror.pipeline import Job, RunSummary, post_key
from mirror.progress import INTERVAL, Progress, Totals, first_pass, progress_line

W = "https://cors.zfour.workers.dev/?"
POST = (
    f'<img src="{W}http://a.example/1.jpg" data-original="http://a.example/1.jpg">'
    f'<img src="{W}http://b.example/2.jpg"><img src="http://c.example/raw.jpg">\n'
)


def running() -> RunSummary:
    summary = RunSummary(posts=5, fetched_bytes=2_000_000)
    summary.statuses.update({"mirrored": 10, "failed": 1, "blocked": 1})
    return summary


def test_line_says_scanning_until_the_first_pass_is_done() -> None:
    """Before the totals: done so far, mirrored/failed, bytes, rate, and "scanning…"."""
    line = progress_line(running(), Totals(), 10.0)
    assert "5 posts, 12 references (10 mirrored, 2 failed), 2.0 MB (0.2 MB/s), scanning…" == line


def test_line_gives_totals_and_an_eta_on_references() -> None:
    """With the totals: posts and references done of all, and the ETA from references."""
    line = progress_line(running(), Totals(posts=10, refs=48), 10.0)
    expected = "5/10 posts, 12/48 references (10 mirrored, 2 failed), 2.0 MB (0.2 MB/s), ETA 0:30"
    assert expected == line
    assert "ETA" not in progress_line(running(), Totals(posts=5, refs=12), 10.0)


def job_for(tmp_path: Path, manifest: str = "") -> Job:
    store = StoreConfig(path=str(tmp_path / "store"))
    return Job(Config(store=store, manifest=ManifestConfig(url=manifest)), rewrite=True)


async def test_ticker_redraws_while_the_event_loop_is_blocked(tmp_path: Path) -> None:
    """The line is redrawn from its own thread, so a busy loop cannot freeze it past a second."""
    drawn = threading.Event()

    class Terminal(io.StringIO):
        def write(self, text: str) -> int:
            if "references" in text:
                drawn.set()
            return super().write(text)

    out = Terminal()
    with Progress(job_for(tmp_path), [tmp_path], out, interval=0.01, count=False) as progress:
        # Blocks this event loop's thread, as a long extract or a synchronous write would.
        assert drawn.wait(timeout=30)
    assert 1.0 >= INTERVAL
    assert (
        1.0 == Progress(job_for(tmp_path), [], out, interval=5).interval
    )  # at least once a second
    assert out.getvalue().endswith("\r\x1b[K")
    assert progress.totals.refs is None


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_first_pass_counts_what_the_job_will_act_on(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Acted-on references of the posts the job reads; a post it will skip unread adds none."""
    posts = tmp_path / "posts"
    posts.mkdir()
    for name in ("a.md", "b.md", "c.md"):
        (posts / name).write_text(POST, encoding="utf-8")
    job = job_for(tmp_path, "" if backend == "sqlite" else request.getfixturevalue("pg_url"))
    st = (posts / "c.md").stat()
    record = (post_key(posts / "c.md"), st.st_size, st.st_mtime_ns, st.st_ino, "x", None, "run")

    async def finished() -> None:
        async with open_manifest(job.config) as manifest:
            await manifest.record_posts([record])

    asyncio.run(finished())
    totals = Totals()
    first_pass(job, [posts], totals, threading.Event())
    # Per post: 2 wrapped + 1 raw copy of a wrapped source; the unrelated raw image is not acted on.
    assert (3, 6) == (totals.posts, totals.refs)
    stopped = Totals()
    stop = threading.Event()
    stop.set()
    first_pass(job, [posts], stopped, stop)
    assert (None, None) == (stopped.posts, stopped.refs)
