"""
One contract for every manifest backend: SQLite (the file) and PostgreSQL (tests/pg_server.py).

Each test runs once per backend through :func:`mirror.manifest.open_manifest`, so both answer the
same calls the same way; a few look behind a backend with raw SQL (schema versions, row counts)
to prove what the protocol alone cannot show. What only a SQLite file can do (WAL, a full disk,
temp files, a corrupt file) stays in tests/test_manifest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mirror.config import Config, ManifestConfig, StoreConfig
from mirror.errors import ConfigError, ManifestError
from mirror.lock import LockedError
from mirror.manifest import (
    Attempt,
    CatalogRow,
    CursorExpired,
    PostState,
    RecordedSpan,
    SourceResult,
    SQLiteManifest,
    manifest_exists,
    manifest_name,
    open_manifest,
)
from mirror.manifest import postgres as pg_module
from mirror.manifest import sqlite as sqlite_module
from mirror.manifest.base import GalleryObject, Manifest, NegativeEntry
from mirror.manifest.postgres import PostgresManifest
from mirror.manifest.postgres_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from mirror.models import Span

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
SHA_C = hashlib.sha256(b"c").hexdigest()
URL = "https://cors.zfour.workers.dev/?https://img.example/a.jpg"
WORKTREE = Path(__file__).resolve().parent.parent


class Clock:
    """A settable stand-in for time.time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mirrored(source: str = URL, sha: str = SHA_A, size: int = 10, **extra: Any) -> SourceResult:
    return SourceResult(
        source, "mirrored", sha256=sha, ext="jpg", size=size, format="JPEG", width=4, height=3,
        **{"fetched_from": "origin", **extra},
    )  # fmt: skip


def failed(source: str = URL, reason: str = "http-404") -> SourceResult:
    return SourceResult(
        source, "failed", reason=reason, attempts=(Attempt("origin", source, reason),)
    )


@dataclasses.dataclass
class Backend:
    """One backend under test: how to open it, and a raw connection to look behind it."""

    kind: str
    url: str
    clock: Clock

    @property
    def config(self) -> Config:
        return Config(manifest=ManifestConfig(url=self.url))

    def manifest(self, *, readonly: bool = False) -> Manifest:
        return open_manifest(self.config, readonly=readonly, clock=self.clock)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run raw SQL outside mirror (committed at once) and return its rows."""
        if self.kind == "sqlite":
            with Closing(sqlite3.connect(self.url.removeprefix("sqlite://"))) as conn:
                rows = conn.execute(sql).fetchall()
                conn.commit()
                return rows
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def set_version(self, version: int) -> None:
        """Make the stored schema claim ``version``."""
        if self.kind == "sqlite":
            self.query(f"PRAGMA user_version = {version}")
        else:
            self.query(f"INSERT INTO mirror_schema VALUES ({version}, 0)")

    @property
    def module(self) -> Any:
        return sqlite_module if self.kind == "sqlite" else pg_module


class Closing:
    """Close a sqlite3 connection on exit (its own context manager only commits)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend, empty: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite://{tmp_path / 'manifest.sqlite3'}", Clock())
    return Backend("postgres", request.getfixturevalue("pg_url"), Clock())


@pytest.fixture
async def manifest(backend: Backend) -> AsyncIterator[Manifest]:
    async with backend.manifest() as opened:
        yield opened


# --- schema versions ---------------------------------------------------------------------------


async def test_a_new_manifest_is_at_the_current_schema_version(backend: Backend) -> None:
    """Opening an empty manifest builds the whole schema at the backend's current version."""
    async with backend.manifest() as manifest:
        assert backend.module.SCHEMA_VERSION == await manifest.schema_version()


async def test_reopening_keeps_the_data_and_does_not_migrate_again(backend: Backend) -> None:
    """Opening an up-to-date manifest again changes nothing."""
    async with backend.manifest() as manifest:
        await manifest.record_results([mirrored()])
    async with backend.manifest() as manifest:
        counts = await manifest.counts()
        assert (backend.module.SCHEMA_VERSION, 1) == (
            await manifest.schema_version(), counts["mirrored"],
        )  # fmt: skip
    if backend.kind == "postgres":
        applied = backend.query("SELECT version FROM mirror_schema ORDER BY version")
        assert [(n,) for n in range(1, PG_SCHEMA_VERSION + 1)] == applied


async def test_migrations_apply_in_order_from_the_stored_version(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reopening with a new migration applies only that one, once."""
    async with backend.manifest() as manifest:
        await manifest.record_results([mirrored()])
    module = backend.module
    version = module.SCHEMA_VERSION
    extra = ("CREATE TABLE notes (text TEXT)", "INSERT INTO notes VALUES ('migrated')")
    monkeypatch.setattr(module, "MIGRATIONS", (*module.MIGRATIONS, extra))
    monkeypatch.setattr(module, "SCHEMA_VERSION", version + 1)
    for _ in range(2):
        async with backend.manifest() as manifest:
            assert (version + 1, [("migrated",)], 1) == (
                await manifest.schema_version(),
                backend.query("SELECT text FROM notes"),
                (await manifest.counts())["mirrored"],
            )


async def test_a_newer_schema_is_refused(backend: Backend) -> None:
    """A manifest from a newer mirror is not touched, and the error names it."""
    async with backend.manifest():
        pass
    backend.set_version(backend.module.SCHEMA_VERSION + 1)
    with pytest.raises(ManifestError, match="has schema") as caught:
        await backend.manifest().open()
    assert "manifest " in str(caught.value)


async def test_a_reader_does_not_build_or_upgrade_a_manifest(backend: Backend) -> None:
    """Opening read-only where no manifest was written is an error, not a new schema."""
    with pytest.raises(ManifestError, match="manifest"):
        await backend.manifest(readonly=True).open()


# --- sources: merging rules and batches --------------------------------------------------------


async def test_record_and_get_a_mirrored_row(manifest: Manifest) -> None:
    """A mirrored result reads back joined with its object."""
    await manifest.record_results([mirrored(etag='"x"', attempts=(Attempt("origin", URL, "ok"),))])
    row = await manifest.get(URL)
    assert row is not None
    assert ("mirrored", SHA_A, "jpg", 10, "JPEG", 4, 3) == (
        row.status, row.sha256, row.ext, row.size, row.format, row.width, row.height,
    )  # fmt: skip
    assert ((Attempt("origin", URL, "ok"),), '"x"', 1000.0, 0) == (
        row.attempts, row.etag, row.first_seen, row.failures,
    )  # fmt: skip
    assert await manifest.get("https://unknown.example/x.png") is None


async def test_via_fetched_from_and_attempt_details_roundtrip(manifest: Manifest) -> None:
    """The source kind, the URL that delivered, and each attempt's detail read back as written."""
    tried = (
        Attempt("origin", URL, "dns", "cannot resolve img.example"),
        Attempt("wayback", "https://web.archive.org/web/2022id_/x", "ok"),
    )
    final = "https://web.archive.org/web/20220131000000id_/https://img.example/a.jpg"
    await manifest.record_results([mirrored(fetched_from=final, via="wayback", attempts=tried)])
    row = await manifest.get(URL)
    assert row is not None
    assert (final, "wayback", tried) == (row.fetched_from, row.via, row.attempts)


async def test_failures_count_up_then_reset(manifest: Manifest, backend: Backend) -> None:
    """Consecutive failures count; a success zeroes them and first_seen stays."""
    await manifest.record_results([failed()])
    backend.clock.now = 2000.0
    await manifest.record_results([failed(reason="timeout")])
    row = await manifest.get(URL)
    assert row is not None
    assert ("failed", "timeout", 2, 1000.0, 2000.0) == (
        row.status, row.reason, row.failures, row.first_seen, row.last_attempt,
    )  # fmt: skip
    await manifest.record_results([mirrored()])
    row = await manifest.get(URL)
    assert row is not None
    assert ("mirrored", None, 0, 1000.0) == (row.status, row.reason, row.failures, row.first_seen)


async def test_failure_after_mirror_keeps_the_object(manifest: Manifest) -> None:
    """A failed refresh of a mirrored source keeps it mirrored and notes the reason."""
    await manifest.record_results([mirrored()])
    await manifest.record_results([failed(reason="http-410")])
    row = await manifest.get(URL)
    assert row is not None
    assert ("mirrored", SHA_A, "http-410", 1) == (row.status, row.sha256, row.reason, row.failures)


async def test_skipped_never_overwrites(manifest: Manifest) -> None:
    """A skipped result only creates rows that do not exist yet."""
    await manifest.record_results([failed(), SourceResult("https://new.example/b.png", "skipped")])
    await manifest.record_results([SourceResult(URL, "skipped", reason="not-due")])
    assert {"mirrored": 0, "failed": 1, "blocked": 0, "skipped": 1} == await manifest.counts()


async def test_duplicates_in_one_batch_merge_in_order(manifest: Manifest) -> None:
    """Two results for one source in a batch behave like two batches."""
    await manifest.record_results([failed(), failed(), mirrored(), failed(reason="timeout")])
    row = await manifest.get(URL)
    assert row is not None
    assert ("mirrored", "timeout", 1) == (row.status, row.reason, row.failures)


async def test_same_object_from_many_sources(manifest: Manifest) -> None:
    """Many sources share one object row."""
    other = "https://img.example/a-copy.jpg"
    await manifest.record_results([mirrored(), mirrored(other)])
    objects = await manifest.objects()
    assert ([(SHA_A, tuple(sorted([URL, other])))], 2) == (
        [(o.sha256, o.sources) for o in objects], (await manifest.counts())["mirrored"],
    )  # fmt: skip


async def test_get_many_finds_large_batches(manifest: Manifest) -> None:
    """get_many finds rows past SQLite's parameter limit, and nothing that is not there."""
    sources = [f"https://img.example/{i}.jpg" for i in range(1200)]
    await manifest.record_results(
        SourceResult(s, "blocked", reason="private-address") for s in sources
    )
    found = await manifest.get_many([*sources, "https://missing.example/"])
    assert (1200, "blocked") == (len(found), found[sources[-1]].status)


async def test_mirrored_mapping(manifest: Manifest) -> None:
    """The mapping lists mirrored sources only, with their local URLs."""
    await manifest.record_results(
        [mirrored(), mirrored("https://b.example/b.png", SHA_B), failed("f")]
    )
    assert {
        URL: f"/mirror/{SHA_A[:2]}/{SHA_A}.jpg",
        "https://b.example/b.png": f"/mirror/{SHA_B[:2]}/{SHA_B}.jpg",
    } == await manifest.mirrored_mapping("/mirror/")


async def test_a_failed_transaction_keeps_nothing(manifest: Manifest) -> None:
    """A transaction that fails part-way leaves the manifest as it was."""

    async def batch() -> None:
        async with manifest.transaction():
            await manifest.record_results([mirrored()])
            await manifest.record_results([SourceResult("x", "failed")])
            raise RuntimeError("crash mid-batch")

    with pytest.raises(RuntimeError, match="mid-batch"):
        await batch()
    assert {"mirrored": 0, "failed": 0, "blocked": 0, "skipped": 0} == await manifest.counts()


async def test_a_second_connection_sees_a_batch_only_once_committed(backend: Backend) -> None:
    """Another connection sees a transaction's rows once it commits, not before."""
    async with backend.manifest() as writer, backend.manifest() as reader:
        async with writer.transaction():
            await writer.record_results([mirrored()])
            assert await reader.get(URL) is None
        row = await reader.get(URL)
        assert row is not None
        assert "mirrored" == row.status


async def test_concurrent_writers_lose_nothing(backend: Backend) -> None:
    """Two connections writing interleaved batches over the same sources lose no update."""
    sources = [f"https://img.example/{i}.jpg" for i in range(40)]

    async def writer(manifest: Manifest, tag: str) -> None:
        for turn in range(10):
            async with manifest.transaction():
                await manifest.record_results([failed(s) for s in sources[:20]])
                await asyncio.sleep(0)  # the other writer tries meanwhile
                own = mirrored(f"https://{tag}.example/{turn}.jpg", SHA_C)
                await manifest.record_results([*(failed(s) for s in sources[20:]), own])

    async with backend.manifest() as first, backend.manifest() as second:
        await asyncio.gather(writer(first, "a"), writer(second, "b"))
        rows = await first.get_many(sources)
        objects = await first.objects()
        assert ({20}, 40) == ({row.failures for row in rows.values()}, len(rows))
        assert {"mirrored": 20, "failed": 40, "blocked": 0, "skipped": 0} == await first.counts()
        assert [(SHA_C, 20)] == [(o.sha256, len(o.sources)) for o in objects]


# --- posts and rewrites ------------------------------------------------------------------------


async def test_posts_state_roundtrip(manifest: Manifest, backend: Backend) -> None:
    """A post's state reads back; rewritten_at survives a later plain scan."""
    assert await manifest.post_state("source/_posts/a.md") is None
    await manifest.record_post("source/_posts/a.md", 10, 123, 77, SHA_A, rewritten=True)
    backend.clock.now = 2000.0
    await manifest.record_post("source/_posts/a.md", 11, 456, 77, SHA_B, mode="run")
    state = await manifest.post_state("source/_posts/a.md")
    expected = PostState("source/_posts/a.md", 11, 456, 77, SHA_B, 2000.0, 1000.0, None, "run")
    assert expected == state


async def test_post_states_in_a_folder_are_read_by_prefix(manifest: Manifest) -> None:
    """record_posts writes a batch; post_states_in returns the folder and subfolders only."""
    names = ["p/a.md", "p/sub/b.md", "p0/c.md", "p-x/d.md", "q/e.md", "p.md"]
    await manifest.record_posts(
        [(name, 1, 2 * 10**18, 3, SHA_A, 5000.0, "fetch") for name in names]
    )
    states = await manifest.post_states_in("p")
    assert ["p/a.md", "p/sub/b.md"] == sorted(states)
    assert (
        PostState("p/a.md", 1, 2 * 10**18, 3, SHA_A, 1000.0, None, 5000.0, "fetch")
        == (states["p/a.md"])
    )


async def test_spans_roundtrip_newest_first(manifest: Manifest) -> None:
    """Rewrites read back newest first, spans in recorded order, with their sources."""
    first = [Span(10, "http://a/1.jpg", "/mirror/1.jpg"), Span(50, "http://a/2.jpg", "/m/2.jpg")]
    assert 1 == await manifest.record_spans(
        "p.md", first, ["s1", "s2"], before_sha256=SHA_A, after_sha256=SHA_B
    )
    assert 2 == await manifest.record_spans(
        "p.md", [Span(0, "x", "y")], [None], before_sha256=SHA_B, after_sha256="c" * 64
    )
    rewrites = await manifest.spans_for("p.md")
    assert [2, 1] == [r.generation for r in rewrites]
    assert (
        RecordedSpan(10, "http://a/1.jpg", "/mirror/1.jpg", "s1"),
        RecordedSpan(50, "http://a/2.jpg", "/m/2.jpg", "s2"),
    ) == rewrites[1].spans
    assert (SHA_A, SHA_B, 1000.0) == (
        rewrites[1].before_sha256, rewrites[1].after_sha256, rewrites[1].created,
    )  # fmt: skip
    assert [] == await manifest.spans_for("other.md")


async def test_rerecording_from_the_same_content_replaces_the_generation(
    manifest: Manifest,
) -> None:
    """Recording a rewrite again from the same before-hash does not stack a copy."""
    await manifest.record_spans("p.md", [Span(1, "a", "b")], ["s"], before_sha256=SHA_A)
    await manifest.record_spans("p.md", [Span(2, "c", "d")], ["t"], before_sha256=SHA_A)
    rewrites = await manifest.spans_for("p.md")
    assert [(1, (RecordedSpan(2, "c", "d", "t"),))] == [(r.generation, r.spans) for r in rewrites]


async def test_forget_rewrite_drops_its_spans(manifest: Manifest, backend: Backend) -> None:
    """Forgetting a generation removes it and its spans."""
    await manifest.record_spans("p.md", [Span(1, "a", "b")], ["s"])
    await manifest.forget_rewrite("p.md", 1)
    assert ([], [(0,)]) == (
        await manifest.spans_for("p.md"),
        backend.query("SELECT COUNT(*) FROM spans"),
    )


async def test_rewritten_posts_lists_each_post_once(manifest: Manifest) -> None:
    """What revert reads to find journal keys written before keys were absolute."""
    assert [] == await manifest.rewritten_posts()
    await manifest.record_spans("/b/p.md", [Span(1, "a", "b")], ["s"])
    await manifest.record_spans("/b/p.md", [Span(2, "c", "d")], ["t"], before_sha256=SHA_A)
    generation = await manifest.record_spans("a.md", [Span(1, "a", "b")], ["s"])
    assert ["/b/p.md", "a.md"] == await manifest.rewritten_posts()
    assert generation is not None
    await manifest.forget_rewrite("a.md", generation)
    assert ["/b/p.md"] == await manifest.rewritten_posts()


async def test_spans_and_sources_must_pair_up(manifest: Manifest) -> None:
    """Each span needs the source it was made for; no spans records nothing."""
    with pytest.raises(ValueError, match="spans"):
        await manifest.record_spans("p.md", [Span(1, "a", "b")], [])
    assert await manifest.record_spans("p.md", [], []) is None


async def test_host_profiles_roundtrip(manifest: Manifest) -> None:
    """The profile that worked for a host reads back, and a later one replaces it."""
    assert await manifest.host_profile("origin.example") is None
    await manifest.record_host_profile("origin.example", "home")
    await manifest.record_host_profile("origin.example", "referer")
    await manifest.record_host_profile("other.example", None)
    assert ("referer", None) == (
        await manifest.host_profile("origin.example"), await manifest.host_profile("other.example"),
    )  # fmt: skip


# --- objects, serve's catalog, eviction ----------------------------------------------------------


async def test_objects_and_forget_objects(manifest: Manifest) -> None:
    """objects() names each object's sources and served URLs; forget_objects marks for re-fetch."""
    await manifest.record_results([mirrored("http://x/1"), mirrored("http://x/2")])
    await manifest.record_results([mirrored("http://x/3", SHA_B)])
    await manifest.record_served("http://open/9", mirrored("http://open/9"))
    await manifest.record_post("p.md", 1, 1, 1, "00", next_check=None, mode="fetch")
    rows = {row.sha256: row for row in await manifest.objects()}
    assert (("http://x/1", "http://x/2"), ("http://open/9",)) == (
        rows[SHA_A].sources,
        rows[SHA_A].served,
    )
    assert (("http://x/3",), ()) == (rows[SHA_B].sources, rows[SHA_B].served)
    assert 2 == await manifest.forget_objects({SHA_A: "corrupt-object"})
    assert [SHA_B] == [row.sha256 for row in await manifest.objects()]
    row = await manifest.get("http://x/1")
    assert row is not None
    assert ("failed", "corrupt-object", None, None) == (
        row.status, row.reason, row.sha256, row.next_attempt,
    )  # fmt: skip
    catalog, _cursor = await manifest.catalog()
    assert [] == [c for c in catalog if c.status == "served"]
    state = await manifest.post_state("p.md")
    assert state is not None
    assert 0 == state.next_check


async def test_catalog_lists_sources_and_served_rows(manifest: Manifest) -> None:
    """The catalog has every sources row (with its object, if any) and every served row."""
    await manifest.record_results([mirrored(), failed("http://f/1")])
    await manifest.record_served("http://open/1", mirrored("http://open/1", SHA_B, size=7))
    rows, _cursor = await manifest.catalog()
    assert sorted([
        CatalogRow(URL, "mirrored", SHA_A, "jpg", 10, "JPEG"),
        CatalogRow("http://f/1", "failed", None, None, None, None),
        CatalogRow("http://open/1", "served", SHA_B, "jpg", 7, "JPEG"),
    ], key=repr) == sorted(rows, key=repr)  # fmt: skip


async def record_open(manifest: Manifest, backend: Backend, *names: str) -> dict[str, str]:
    """Record one served object per name, each 10 bytes, served one second apart."""
    shas = {}
    for name in names:
        sha = hashlib.sha256(name.encode()).hexdigest()
        await manifest.record_served(f"http://open/{name}", mirrored(f"http://open/{name}", sha))
        backend.clock.now += 1
        shas[name] = sha
    return shas


class Deleted:
    """The store's delete as evict_served calls it, recording what it was asked to delete."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, sha256: str, ext: str) -> bool:
        self.calls.append((sha256, ext))
        return True


async def test_eviction_takes_the_least_recently_served_first(
    manifest: Manifest, backend: Backend
) -> None:
    """Beyond max_bytes, the least recently served objects go, deleted before the rows go."""
    shas = await record_open(manifest, backend, "old", "mid", "new")
    await manifest.touch_served({"http://open/old": backend.clock.now + 5})
    delete = Deleted()
    evicted = await manifest.evict_served(20, delete)
    assert ([(shas["mid"], "jpg")], delete.calls) == (evicted, [(shas["mid"], "jpg")])
    assert sorted([shas["old"], shas["new"]]) == [o.sha256 for o in await manifest.objects()]
    assert [] == await manifest.evict_served(20, Deleted())


async def test_an_object_a_post_names_is_never_evicted(
    manifest: Manifest, backend: Backend
) -> None:
    """A served object that a sources row also names is not a candidate and counts nothing."""
    shas = await record_open(manifest, backend, "one", "two")
    await manifest.record_results([mirrored("http://post/1", shas["one"])])
    assert [(shas["two"], "jpg")] == await manifest.evict_served(0, Deleted())
    assert [shas["one"]] == [o.sha256 for o in await manifest.objects()]


async def test_a_failing_delete_forgets_only_what_was_deleted(
    manifest: Manifest, backend: Backend
) -> None:
    """When the store's delete fails, deleted objects are forgotten and the rest keep their rows."""
    shas = await record_open(manifest, backend, "a", "b", "c")
    calls: list[str] = []

    async def delete(sha256: str, ext: str) -> bool:
        calls.append(sha256)
        if len(calls) == 2:
            raise OSError("the store is gone")
        return True

    with pytest.raises(OSError, match="store is gone"):
        await manifest.evict_served(0, delete)
    left = sorted(o.sha256 for o in await manifest.objects())
    assert sorted(set(shas.values()) - {calls[0]}) == left


# --- the change feed -----------------------------------------------------------------------------


async def test_the_feed_gives_only_what_changed_after_a_cursor(manifest: Manifest) -> None:
    """After catalog(), catalog_changes returns the 100 new sources alone, then nothing."""
    await manifest.record_results(
        [SourceResult(f"http://old/{i}", "blocked", reason="bad-port") for i in range(2000)]
    )
    rows, cursor = await manifest.catalog()
    assert 2000 == len(rows)
    new = [
        mirrored(f"http://new/{i}", hashlib.sha256(b"%d" % i).hexdigest(), i + 1)
        for i in range(100)
    ]
    await manifest.record_results(new)
    changed, removed, after = await manifest.catalog_changes(cursor)
    assert (100, [], True) == (len(changed), removed, after > cursor)
    assert {(f"http://new/{i}", "mirrored", i + 1) for i in range(100)} == {
        (row.source, row.status, row.size) for row in changed
    }
    assert ([], [], after) == await manifest.catalog_changes(after)


async def test_the_feed_reports_removed_and_changed_rows(
    manifest: Manifest, backend: Backend
) -> None:
    """Forgetting objects shows as a changed sources row and a removed served row."""
    await manifest.record_results([mirrored("http://post/1")])
    shas = await record_open(manifest, backend, "x")
    _rows, cursor = await manifest.catalog()
    await manifest.forget_objects({SHA_A: "corrupt-object", shas["x"]: "corrupt-object"})
    changed, removed, _after = await manifest.catalog_changes(cursor)
    assert ([CatalogRow("http://post/1", "failed", None, None, None, None)], ["http://open/x"]) == (
        changed, removed,
    )  # fmt: skip


async def test_a_touch_or_a_noop_write_is_no_catalog_change(
    manifest: Manifest, backend: Backend
) -> None:
    """Serving an object again (touch_served) and recording a post leave the cursor alone."""
    await record_open(manifest, backend, "x")
    _rows, cursor = await manifest.catalog()
    await manifest.touch_served({"http://open/x": 5000.0})
    await manifest.record_post("p.md", 1, 1, 1, SHA_A)
    assert ([], [], cursor) == await manifest.catalog_changes(cursor)


def _small_log(text: str) -> str:
    """Shrink the log's limits in a migration: keep 40 entries, trim every 8th / 4th time."""
    text = text.replace("NEW.seq - 65536", "NEW.seq - 40").replace("% 1024", "% 8")
    return text.replace("OFFSET 65536", "OFFSET 40").replace("n % 64", "n % 4")


async def test_the_log_is_trimmed_and_an_old_cursor_reloads(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change log stays bounded; a cursor behind the trimmed part must reload in full."""
    module = backend.module
    small = tuple(tuple(_small_log(s) for s in step) for step in module.MIGRATIONS)
    assert small != module.MIGRATIONS
    monkeypatch.setattr(module, "MIGRATIONS", small)
    async with backend.manifest() as manifest:
        for i in range(100):
            await manifest.record_results([failed(f"http://f/{i}")])
        assert backend.query("SELECT COUNT(*) FROM catalog_log")[0][0] <= 48
        with pytest.raises(CursorExpired, match="cursor 0"):
            await manifest.catalog_changes(0)
        rows, cursor = await manifest.catalog()
        await manifest.record_results([failed("http://f/new")])
        changed, _removed, _after = await manifest.catalog_changes(cursor)
        assert (100, ["http://f/new"]) == (len(rows), [row.source for row in changed])
        with pytest.raises(CursorExpired):
            await manifest.catalog_changes(cursor + 1000)


async def test_wait_for_change_wakes_on_another_connections_commit(backend: Backend) -> None:
    """A node waiting for a change is woken by another node's commit, and only then."""
    async with backend.manifest() as node, backend.manifest() as job:
        _rows, cursor = await node.catalog()
        assert await node.wait_for_change(0) is False
        waiter = asyncio.create_task(node.wait_for_change(30))
        await job.record_results([mirrored()])
        assert await waiter is True
        changed, _removed, after = await node.catalog_changes(cursor)
        assert ([URL], True) == (
            [row.source for row in changed],
            await node.wait_for_change(0) is False,
        )
        assert after > cursor


# --- pins and eviction (issue #13 row 1) ----------------------------------------------------------


async def test_a_pin_before_eviction_spares_the_object(
    manifest: Manifest, backend: Backend
) -> None:
    """A live pin keeps an object from eviction; unpinned or expired, it goes."""
    shas = await record_open(manifest, backend, "a", "b")
    assert set() == await manifest.pin([shas["a"]], "job-1", backend.clock.now + 60)
    assert [(shas["b"], "jpg")] == await manifest.evict_served(0, Deleted())
    await manifest.unpin("job-1")
    assert [(shas["a"], "jpg")] == await manifest.evict_served(0, Deleted())
    shas = await record_open(manifest, backend, "c")
    await manifest.pin([shas["c"]], "job-2", backend.clock.now + 60)
    backend.clock.now += 61
    assert [(shas["c"], "jpg")] == await manifest.evict_served(0, Deleted())


async def _until_waiting(backend: Backend, waited: asyncio.Event) -> None:
    """Return once the pin is blocked behind the eviction (bounded polling)."""
    if backend.kind == "sqlite":
        await asyncio.wait_for(waited.wait(), 30)
        return
    sql = "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    for _ in range(3000):
        if backend.query(sql)[0][0]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the pin never waited for the eviction")


async def test_a_pin_during_eviction_waits_and_sees_the_object_gone(backend: Backend) -> None:
    """A pin that comes while eviction deletes waits for it, then reports the object gone."""
    async with backend.manifest() as server, backend.manifest() as job:
        shas = await record_open(server, backend, "a")
        inside, go = asyncio.Event(), asyncio.Event()
        deleted: list[str] = []

        async def delete(sha256: str, ext: str) -> bool:
            inside.set()
            await go.wait()
            deleted.append(sha256)
            return True

        waited = asyncio.Event()
        if isinstance(job, SQLiteManifest):
            sync_pin = job.sync.pin

            def pin(*args: Any) -> set[str]:
                waited.set()  # called once per try; the first try finds the lock taken
                return sync_pin(*args)

            job.sync.pin = pin  # type: ignore[method-assign, assignment]
        eviction = asyncio.create_task(server.evict_served(0, delete))
        await asyncio.wait_for(inside.wait(), 30)
        pinning = asyncio.create_task(job.pin([shas["a"]], "job", backend.clock.now + 60))
        await _until_waiting(backend, waited)
        assert (False, []) == (pinning.done(), deleted)
        go.set()
        assert [(shas["a"], "jpg")] == await eviction
        assert {shas["a"]} == await pinning
        # The job writes the object again; pinned now, it stays.
        await job.record_served("http://open/a", mirrored("http://open/a", shas["a"]))
        assert [] == await server.evict_served(0, Deleted())


# --- leases and the shared negative cache ------------------------------------------------------


async def test_a_lease_is_held_by_one_holder_until_released_or_expired(backend: Backend) -> None:
    """Across two connections one holder has a lease; release or expiry frees it."""
    key = "fetch https://img.example/" + "x" * 3000
    async with backend.manifest() as one, backend.manifest() as two:
        assert (True, False, True) == (
            await one.lease(key, "node-1", 30),
            await two.lease(key, "node-2", 30),
            await one.lease(key, "node-1", 30),
        )
        assert await two.wait_released(key, 0) is False
        waiter = asyncio.create_task(two.wait_released(key, 30))
        await one.release(key, "node-2")  # not the holder: nothing happens
        await one.release(key, "node-1")
        assert await waiter is True
        assert await two.lease(key, "node-2", 30) is True
        backend.clock.now += 31
        assert (True, True) == (await two.wait_released(key, 0), await one.lease(key, "node-1", 5))


async def test_only_the_evict_lease_holder_evicts(backend: Backend) -> None:
    """Eviction is decided once: of two nodes, only the one holding the evict lease evicts."""
    async with backend.manifest() as one, backend.manifest() as two:
        await record_open(one, backend, "a")
        evicted: list[list[tuple[str, str]]] = []
        for node, name in ((one, "node-1"), (two, "node-2")):
            if await node.lease("evict", name, 60):
                evicted.append(await node.evict_served(0, Deleted()))
        assert 1 == len(evicted)


async def test_the_negative_cache_is_shared_and_trimmed(backend: Backend) -> None:
    """A failure remembered by one node is seen by another; long-expired entries are trimmed."""
    async with backend.manifest() as one, backend.manifest() as two:
        assert await two.negative_get(URL) is None
        await one.negative_put(URL, 1060.0, 1, 502, "http-500")
        await one.negative_put(URL, 1120.0, 2, 502, "timeout")
        assert NegativeEntry(1120.0, 2, 502, "timeout") == await two.negative_get(URL)
        backend.clock.now = 1120.0 + 3601
        await two.negative_put("https://other.example/", backend.clock.now + 60, 1, 404, "http-404")
        assert await one.negative_get(URL) is None


async def test_a_forgotten_failure_is_gone_for_every_node(backend: Backend) -> None:
    """negative_forget drops one URL's entry (seen from another connection), and only it."""
    other = "https://other.example/"
    async with backend.manifest() as one, backend.manifest() as two:
        await one.negative_put(URL, 1060.0, 3, 502, "http-500")
        await one.negative_put(other, 1060.0, 1, 404, "http-404")
        await two.negative_forget(URL)
        await two.negative_forget("https://never.example/")  # nothing remembered: no error
        assert (None, NegativeEntry(1060.0, 1, 404, "http-404")) == (
            await one.negative_get(URL),
            await one.negative_get(other),
        )


# --- report -------------------------------------------------------------------------------------


async def test_report_rows_give_what_the_report_reads(manifest: Manifest, backend: Backend) -> None:
    """report_rows returns every source, the object totals and the gallery, oldest first."""
    await manifest.record_results([mirrored("http://x/1", SHA_B, size=5)])
    backend.clock.now = 2000.0
    await manifest.record_results([mirrored("http://x/2", SHA_A, size=7), failed("http://f/1")])
    await manifest.record_served("http://open/1", mirrored("http://open/1", SHA_C, size=100))
    report = await manifest.report_rows()
    assert (3, 112) == (report.objects, report.object_bytes)
    assert (GalleryObject(SHA_B, "jpg", 5, 4, 3), GalleryObject(SHA_A, "jpg", 7, 4, 3)) == (
        report.gallery
    )
    failures = {s.source: (s.status, s.reason, s.failures, s.attempts) for s in report.sources}
    assert ("failed", "http-404", 1, (Attempt("origin", "http://f/1", "http-404"),)) == (
        failures["http://f/1"]
    )
    assert {"http://x/1", "http://x/2", "http://f/1"} == set(failures)


# --- the store lock ---------------------------------------------------------------------------

_HOLD = """
import asyncio, sys
from mirror.config import Config, ManifestConfig
from mirror.manifest import open_manifest

async def main() -> None:
    manifest = open_manifest(Config(manifest=ManifestConfig(url=sys.argv[1])))
    async with manifest, manifest.lock("mirror run --every 1h"):
        print("locked", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""
_REFUSED = re.compile(
    r"the store is locked by another mirror \(pid (\d+)[^,]*, `mirror run --every 1h`, since "
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\): .+; wait for it to finish, or stop it"
)


@pytest.fixture
def holder(backend: Backend) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the store lock (the SQLite file's flock or the advisory lock)."""
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, backend.url], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        assert "locked\n" == process.stdout.readline()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


async def test_the_store_lock_refuses_a_second_holder_until_the_first_is_killed(
    backend: Backend, holder: subprocess.Popen[str]
) -> None:
    """A second command is refused naming the holder's pid; SIGKILLed, the holder frees it."""
    async with backend.manifest() as manifest:
        with pytest.raises(LockedError) as caught:
            async with manifest.lock("mirror fetch"):
                pass
        found = _REFUSED.fullmatch(str(caught.value))
        assert found is not None, str(caught.value)
        assert str(holder.pid) == found[1]
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        # PostgreSQL ends the dead client's session a moment after its socket closes.
        for _ in range(3000):
            try:
                async with manifest.lock("mirror fetch"):
                    break
            except LockedError:
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("the lock of a killed holder never came free")
        async with manifest.lock("mirror fetch"), backend.manifest() as other:
            with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
                async with other.lock("mirror run --every 1h"):
                    pass


# --- choosing a backend --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://mirror:secret@db:5432/mirror", "password"),
        ("postgres://db/mirror?sslmode=require&password=secret", "password"),
        ("mysql://db/mirror", "unknown scheme"),
        ("sqlite://relative.sqlite3", "sqlite:///abs/path"),
    ],
)
def test_bad_manifest_urls_are_config_errors(url: str, problem: str) -> None:
    """A password in the URL, an unknown scheme or a relative sqlite:// URL is refused."""
    with pytest.raises(ConfigError, match=problem) as caught:
        ManifestConfig(url=url)
    assert ("manifest.url", "secret" not in str(caught.value)) == (caught.value.key, True)


def test_open_manifest_picks_the_backend_by_url(tmp_path: Path) -> None:
    """An empty URL is the store's file, a path or sqlite:/// a file there, postgresql:// a db."""
    store = Config(store=StoreConfig(url=str(tmp_path / "store")))
    default = open_manifest(store)
    chosen = open_manifest(Config(manifest=ManifestConfig(url=f"sqlite://{tmp_path}/m.db")))
    plain = open_manifest(Config(manifest=ManifestConfig(url="rel/m.db")))
    pg = open_manifest(
        Config(manifest=ManifestConfig(url="postgres://me@db:5433/m?sslmode=disable"))
    )
    assert isinstance(default, SQLiteManifest)
    assert (tmp_path / "store" / "manifest.sqlite3", tmp_path / "m.db", Path("rel/m.db")) == (
        default.path, getattr(chosen, "path", None), getattr(plain, "path", None),
    )  # fmt: skip
    assert (True, "postgres://me@db:5433/m?sslmode=disable") == (
        isinstance(pg, PostgresManifest), pg.name,
    )  # fmt: skip


def test_psycopg_is_imported_only_for_postgresql(tmp_path: Path) -> None:
    """Opening a SQLite manifest through the factory never imports psycopg."""
    code = (
        "import asyncio, sys; from mirror.config import Config, ManifestConfig;"
        "from mirror.manifest import open_manifest;"
        f"m = open_manifest(Config(manifest=ManifestConfig(url='sqlite://{tmp_path}/m.db')));"
        "asyncio.run(m.open()); asyncio.run(m.close()); print('psycopg' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "False" == done.stdout.strip()


async def test_an_unreachable_database_is_a_manifest_error_without_the_password(
    pg_server: Any,
) -> None:
    """A connection failure names the manifest and never shows a password given in the URL."""
    url = f"postgresql://mirror:hunter2@127.0.0.1:{pg_server.port}/no_such_database"
    with pytest.raises(ManifestError, match="no_such_database") as caught:
        await PostgresManifest(url).open()
    assert "hunter2" not in str(caught.value)
    assert "postgresql://mirror@127.0.0.1" in str(caught.value)


# --- PostgreSQL only: round trips, bad input -----------------------------------------------------


class TurnCounter:
    """A TCP relay to the server that counts round trips: client sends after a server reply."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.turns = 0
        self.counting = False
        self._last = "server"
        self.relays: list[asyncio.Task[Any]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.relays.append(task)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, side: str) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if side == "client" and self.counting and self._last == "server":
                        self.turns += 1
                    self._last = side
                    sink.write(data)
                    await sink.drain()
            sink.close()
            with contextlib.suppress(ConnectionError):
                await sink.wait_closed()

        await asyncio.gather(
            pump(reader, upstream_writer, "client"), pump(upstream_reader, writer, "server")
        )

    def start(self) -> None:
        self.turns, self.counting, self._last = 0, True, "server"


async def test_a_256_row_batch_is_two_round_trips(pg_server: Any, pg_url: str) -> None:
    """record_results sends a 256-row batch in two round trips, new rows or updates."""
    counter = TurnCounter(pg_server.port)
    relay = await asyncio.start_server(counter.handle, "127.0.0.1", 0)
    port = relay.sockets[0].getsockname()[1]
    url = pg_url.replace(f":{pg_server.port}/", f":{port}/")
    try:
        async with PostgresManifest(url) as manifest:
            turns = []
            for batch in (
                [
                    mirrored(f"http://x/{i}", hashlib.sha256(b"%d" % i).hexdigest())
                    for i in range(256)
                ],
                [failed(f"http://x/{i}") for i in range(256)],
            ):
                counter.start()
                await manifest.record_results(batch)
                counter.counting = False
                turns.append(counter.turns)
            assert ([2, 2], 256) == (turns, (await manifest.counts())["mirrored"])
    finally:
        relay.close()
        await relay.wait_closed()
        # The manifest closed its connections, so each relay ends once both sides are closed.
        await asyncio.wait_for(asyncio.gather(*counter.relays), 30)


async def test_a_batch_postgresql_refuses_keeps_nothing_and_names_the_manifest(
    pg_url: str,
) -> None:
    """A NUL in a URL (PostgreSQL TEXT cannot hold one) fails the batch whole; the next works."""
    async with PostgresManifest(pg_url) as manifest:
        with pytest.raises(ManifestError, match="while recording results") as caught:
            await manifest.record_results([mirrored(), failed("http://bad/\x00")])
        assert pg_url in str(caught.value)
        assert {"mirrored": 0, "failed": 0, "blocked": 0, "skipped": 0} == await manifest.counts()
        await manifest.record_results([mirrored()])
        assert 1 == (await manifest.counts())["mirrored"]


# --- SQLite only: waiting for another process's write lock ----------------------------------


async def test_a_write_waits_for_the_sqlite_lock_on_the_loop_then_says_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind another writer a write sleeps on the loop (other tasks run), then fails clearly."""
    monkeypatch.setattr("mirror.manifest.sqlite.BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "manifest.sqlite3"
    async with SQLiteManifest(path) as manifest:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            with pytest.raises(ManifestError, match="locked by another process"):
                await manifest.record_results([mirrored()])
            ticker.cancel()
            assert ticks > 10
            other.execute("ROLLBACK")
        finally:
            other.close()
        await manifest.record_results([mirrored()])
        assert 1 == (await manifest.counts())["mirrored"]


async def test_manifest_exists_only_once_a_writer_created_it(backend: Backend) -> None:
    """A command that only reads can tell "no manifest yet" apart from an empty one."""
    assert not await manifest_exists(backend.config)
    assert "secret" not in manifest_name(backend.config)
    async with backend.manifest():
        pass
    assert await manifest_exists(backend.config)
