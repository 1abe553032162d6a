"""Tests for the SQLite manifest, on real files."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mirror.atomic import temp_name
from mirror.errors import ManifestError
from mirror.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Attempt,
    Manifest,
    PostState,
    RecordedSpan,
    SourceResult,
    manifest_path,
)
from mirror.manifest import sqlite as manifest_module
from mirror.models import Span

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
URL = "https://cors.zfour.workers.dev/?https://img.example/a.jpg"


class Clock:
    """A settable stand-in for time.time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mirrored(source: str = URL, sha: str = SHA_A, **extra: object) -> SourceResult:
    return SourceResult(
        source, "mirrored", sha256=sha, ext="jpg", size=10, format="JPEG", width=4, height=3,
        fetched_from="origin", **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def failed(source: str = URL, reason: str = "http-404") -> SourceResult:
    return SourceResult(
        source, "failed", reason=reason, attempts=(Attempt("origin", source, reason),)
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manifest(tmp_path: Path, clock: Clock) -> Iterator[Manifest]:
    with Manifest(manifest_path(tmp_path), clock=clock) as opened:
        yield opened


def test_open_sets_schema_version_and_wal(tmp_path: Path) -> None:
    """A new manifest is at the current schema version, in WAL mode."""
    with Manifest(manifest_path(tmp_path)) as manifest:
        version = manifest.conn.execute("PRAGMA user_version").fetchone()[0]
        journal = manifest.conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = manifest.conn.execute("PRAGMA synchronous").fetchone()[0]
    assert (SCHEMA_VERSION, "wal", 1) == (version, journal, sync)
    assert (tmp_path / "manifest.sqlite3").is_file()


def test_power_durability_uses_full_sync(tmp_path: Path) -> None:
    """durability "power" makes SQLite sync every commit."""
    with Manifest(manifest_path(tmp_path), durability="power") as manifest:
        assert 2 == manifest.conn.execute("PRAGMA synchronous").fetchone()[0]


def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    """Opening an up-to-date manifest again changes nothing."""
    path = manifest_path(tmp_path)
    with Manifest(path) as manifest:
        manifest.record_results([mirrored()])
    with Manifest(path) as manifest:
        version = manifest.conn.execute("PRAGMA user_version").fetchone()[0]
        assert (SCHEMA_VERSION, 1) == (version, manifest.counts()["mirrored"])


def test_migrations_apply_in_order_from_the_stored_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reopening with a new migration applies only that one, once."""
    path = manifest_path(tmp_path)
    with Manifest(path) as manifest:
        manifest.record_results([mirrored()])
    extra = ("CREATE TABLE notes (text TEXT)", "INSERT INTO notes VALUES ('migrated')")
    monkeypatch.setattr("mirror.manifest.sqlite.MIGRATIONS", (*manifest_module.MIGRATIONS, extra))
    monkeypatch.setattr("mirror.manifest.sqlite.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    for _ in range(2):
        with Manifest(path) as manifest:
            version = manifest.conn.execute("PRAGMA user_version").fetchone()[0]
            notes = manifest.conn.execute("SELECT text FROM notes").fetchall()
            assert (SCHEMA_VERSION + 1, [("migrated",)], 1) == (
                version, notes, manifest.counts()["mirrored"],
            )  # fmt: skip


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A manifest from a newer mirror is not touched."""
    path = manifest_path(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ManifestError, match="schema"):
        Manifest(path).open()


def test_corrupt_file_is_a_manifest_error_naming_it(tmp_path: Path) -> None:
    """Garbage in the manifest file gives a clear error with the file's name."""
    path = manifest_path(tmp_path)
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ManifestError, match="corrupt") as caught:
        Manifest(path).open()
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_locked_manifest_is_a_manifest_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer blocked by another writer gets a message saying the file is locked."""
    monkeypatch.setattr("mirror.manifest.sqlite.BUSY_TIMEOUT_MS", 50)
    path = manifest_path(tmp_path)
    with (
        Manifest(path) as first,
        first.transaction(),
        Manifest(path) as second,
        pytest.raises(ManifestError, match="locked"),
    ):
        second.record_results([mirrored()])


def test_record_and_get_a_mirrored_row(manifest: Manifest, clock: Clock) -> None:
    """A mirrored result reads back joined with its object."""
    manifest.record_results([mirrored(etag='"x"', attempts=(Attempt("origin", URL, "ok"),))])
    row = manifest.get(URL)
    assert row is not None
    assert ("mirrored", SHA_A, "jpg", 10, "JPEG", 4, 3) == (
        row.status, row.sha256, row.ext, row.size, row.format, row.width, row.height,
    )  # fmt: skip
    assert ((Attempt("origin", URL, "ok"),), '"x"', 1000.0, 0) == (
        row.attempts, row.etag, row.first_seen, row.failures,
    )  # fmt: skip
    assert manifest.get("https://unknown.example/x.png") is None


def test_failures_count_up_then_reset(manifest: Manifest, clock: Clock) -> None:
    """Consecutive failures count; a success zeroes them and first_seen stays."""
    manifest.record_results([failed()])
    clock.now = 2000.0
    manifest.record_results([failed(reason="timeout")])
    row = manifest.get(URL)
    assert row is not None
    assert ("failed", "timeout", 2, 1000.0, 2000.0) == (
        row.status, row.reason, row.failures, row.first_seen, row.last_attempt,
    )  # fmt: skip
    manifest.record_results([mirrored()])
    row = manifest.get(URL)
    assert row is not None
    assert ("mirrored", None, 0, 1000.0) == (row.status, row.reason, row.failures, row.first_seen)


def test_failure_after_mirror_keeps_the_object(manifest: Manifest) -> None:
    """A failed refresh of a mirrored source keeps it mirrored and notes the reason."""
    manifest.record_results([mirrored()])
    manifest.record_results([failed(reason="http-410")])
    row = manifest.get(URL)
    assert row is not None
    assert ("mirrored", SHA_A, "http-410", 1) == (row.status, row.sha256, row.reason, row.failures)


def test_skipped_never_overwrites(manifest: Manifest) -> None:
    """A skipped result only creates rows that do not exist yet."""
    manifest.record_results([failed(), SourceResult("https://new.example/b.png", "skipped")])
    manifest.record_results([SourceResult(URL, "skipped", reason="not-due")])
    assert {"mirrored": 0, "failed": 1, "blocked": 0, "skipped": 1} == manifest.counts()


def test_duplicates_in_one_batch_merge_in_order(manifest: Manifest) -> None:
    """Two results for one source in a batch behave like two batches."""
    manifest.record_results([failed(), failed(), mirrored(), failed(reason="timeout")])
    row = manifest.get(URL)
    assert row is not None
    assert ("mirrored", "timeout", 1) == (row.status, row.reason, row.failures)


def test_same_object_from_many_sources(manifest: Manifest) -> None:
    """Many sources may share one object row."""
    other = "https://img.example/a-copy.jpg"
    manifest.record_results([mirrored(), mirrored(other)])
    count = manifest.conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
    assert (1, 2) == (count, manifest.counts()["mirrored"])


def test_get_many_spans_chunks(manifest: Manifest) -> None:
    """get_many finds rows past SQLite's parameter limit."""
    sources = [f"https://img.example/{i}.jpg" for i in range(1200)]
    manifest.record_results(SourceResult(s, "blocked", reason="private-address") for s in sources)
    found = manifest.get_many([*sources, "https://missing.example/"])
    assert (1200, "blocked") == (len(found), found[sources[-1]].status)


def test_mirrored_mapping(manifest: Manifest) -> None:
    """The mapping lists mirrored sources only, with their local URLs."""
    manifest.record_results([mirrored(), mirrored("https://b.example/b.png", SHA_B), failed("f")])
    assert {
        URL: f"/mirror/{SHA_A[:2]}/{SHA_A}.jpg",
        "https://b.example/b.png": f"/mirror/{SHA_B[:2]}/{SHA_B}.jpg",
    } == manifest.mirrored_mapping("/mirror/")


def test_mirrored_result_without_object_is_refused() -> None:
    """A mirrored result must name its object."""
    with pytest.raises(ValueError, match="needs sha256"):
        SourceResult(URL, "mirrored")


def test_failed_batch_keeps_nothing(manifest: Manifest) -> None:
    """A transaction that fails part-way leaves the manifest as it was."""

    def batch() -> None:
        with manifest.transaction():
            manifest.record_results([mirrored()])
            manifest.record_results([SourceResult("x", "failed")])
            raise RuntimeError("crash mid-batch")

    with pytest.raises(RuntimeError, match="mid-batch"):
        batch()
    assert {"mirrored": 0, "failed": 0, "blocked": 0, "skipped": 0} == manifest.counts()


def test_posts_state_roundtrip(manifest: Manifest, clock: Clock) -> None:
    """A post's state reads back; rewritten_at survives a later plain scan."""
    assert manifest.post_state("source/_posts/a.md") is None
    manifest.record_post("source/_posts/a.md", 10, 123, 77, SHA_A, rewritten=True)
    clock.now = 2000.0
    manifest.record_post("source/_posts/a.md", 11, 456, 77, SHA_B)
    state = manifest.post_state("source/_posts/a.md")
    assert PostState("source/_posts/a.md", 11, 456, 77, SHA_B, 2000.0, 1000.0) == state


def test_spans_roundtrip_newest_first(manifest: Manifest) -> None:
    """Rewrites read back newest first, spans in recorded order, with their sources."""
    first = [Span(10, "http://a/1.jpg", "/mirror/1.jpg"), Span(50, "http://a/2.jpg", "/m/2.jpg")]
    assert 1 == manifest.record_spans(
        "p.md", first, ["s1", "s2"], before_sha256=SHA_A, after_sha256=SHA_B
    )
    assert 2 == manifest.record_spans(
        "p.md", [Span(0, "x", "y")], [None], before_sha256=SHA_B, after_sha256="c" * 64
    )
    rewrites = manifest.spans_for("p.md")
    assert [2, 1] == [r.generation for r in rewrites]
    assert (RecordedSpan(10, "http://a/1.jpg", "/mirror/1.jpg", "s1"),) == rewrites[1].spans[:1]
    assert (SHA_A, SHA_B) == (rewrites[1].before_sha256, rewrites[1].after_sha256)
    assert [] == manifest.spans_for("other.md")


def test_rerecording_from_the_same_content_replaces_the_generation(manifest: Manifest) -> None:
    """Recording a rewrite again from the same before-hash does not stack a copy."""
    manifest.record_spans("p.md", [Span(1, "a", "b")], ["s"], before_sha256=SHA_A)
    manifest.record_spans("p.md", [Span(2, "c", "d")], ["t"], before_sha256=SHA_A)
    rewrites = manifest.spans_for("p.md")
    assert [(1, (RecordedSpan(2, "c", "d", "t"),))] == [(r.generation, r.spans) for r in rewrites]


def test_forget_rewrite_drops_its_spans(manifest: Manifest) -> None:
    """Forgetting a generation removes it and its spans."""
    manifest.record_spans("p.md", [Span(1, "a", "b")], ["s"])
    manifest.forget_rewrite("p.md", 1)
    count = manifest.conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    assert ([], 0) == (manifest.spans_for("p.md"), count)


def test_spans_and_sources_must_pair_up(manifest: Manifest) -> None:
    """Each span needs the source it was made for."""
    with pytest.raises(ValueError, match="spans"):
        manifest.record_spans("p.md", [Span(1, "a", "b")], [])


def test_concurrent_reader_sees_committed_rows(tmp_path: Path) -> None:
    """A read-only connection sees each batch once committed, not before."""
    path = manifest_path(tmp_path)
    with Manifest(path) as writer, Manifest(path, readonly=True) as reader:
        with writer.transaction():
            writer.record_results([mirrored()])
            assert reader.get(URL) is None
        row = reader.get(URL)
        assert row is not None
        assert "mirrored" == row.status


def test_readonly_on_a_missing_file_is_a_manifest_error(tmp_path: Path) -> None:
    """A reader does not create a manifest."""
    with pytest.raises(ManifestError, match="manifest"):
        Manifest(manifest_path(tmp_path), readonly=True).open()


# --- a full disk (issue #13, row 14) ------------------------------------------------------------


def _pages(limit: int) -> Callable[[sqlite3.Connection], object]:
    """An on_connect hook that lets the database grow to ``limit`` pages: a disk that fills."""

    def cap(conn: sqlite3.Connection) -> object:
        return conn.execute(f"PRAGMA max_page_count = {limit}")

    return cap


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_full_disk_while_creating_leaves_no_manifest(tmp_path: Path) -> None:
    """Creating on a full disk says so and leaves nothing under any name; with room it works."""
    path = manifest_path(tmp_path)
    with pytest.raises(ManifestError, match="the disk is full while creating it") as caught:
        Manifest(path, on_connect=_pages(3)).open()
    assert sqlite3.SQLITE_FULL == getattr(caught.value.__cause__, "sqlite_errorcode", None)
    assert [] == _files(tmp_path)
    with Manifest(path) as manifest:
        manifest.record_results([mirrored()])
        version = manifest.conn.execute("PRAGMA user_version").fetchone()[0]
    assert (SCHEMA_VERSION, ["manifest.sqlite3"]) == (version, _files(tmp_path))


def test_a_full_disk_in_a_batch_keeps_nothing_of_it_and_says_so(tmp_path: Path) -> None:
    """SQLITE_FULL in a write is "the disk is full"; the batch is rolled back, later ones work."""
    with Manifest(manifest_path(tmp_path), on_connect=_pages(26)) as manifest:
        big = [mirrored(f"{URL}?{n:05d}" + "x" * 200) for n in range(2000)]
        with pytest.raises(ManifestError, match="the disk is full while recording results"):
            manifest.record_results(big)
        assert 0 == manifest.counts()["mirrored"]
        manifest.record_results([mirrored()])
        assert 1 == manifest.counts()["mirrored"]


def test_a_full_disk_while_upgrading_keeps_the_old_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration hitting a full disk is undone whole (no "cannot rollback"); it runs later."""
    path = manifest_path(tmp_path)
    with Manifest(path) as manifest:
        manifest.record_results([mirrored()])
    filler = "INSERT INTO notes SELECT zeroblob(4000) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3)"
    extra = ("CREATE TABLE notes (blob BLOB)", filler, filler.replace("zeroblob", "randomblob"))
    monkeypatch.setattr("mirror.manifest.sqlite.MIGRATIONS", (*manifest_module.MIGRATIONS, extra))
    monkeypatch.setattr("mirror.manifest.sqlite.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    used = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    with pytest.raises(ManifestError, match="the disk is full while opening"):
        Manifest(path, on_connect=_pages(used + 2)).open()
    with sqlite3.connect(path) as conn:
        assert SCHEMA_VERSION == conn.execute("PRAGMA user_version").fetchone()[0]
    with Manifest(path) as manifest:
        assert 6 == manifest.conn.execute("SELECT COUNT(*) FROM notes").fetchone()[0]


def test_a_dead_creators_temp_manifest_is_removed(tmp_path: Path) -> None:
    """A half-built temp manifest whose creator died goes when the next one is created."""
    dead = tmp_path / temp_name(MANIFEST_NAME)
    dead.write_bytes(b"half a database")
    other = tmp_path / temp_name("cover.jpg")
    other.write_bytes(b"not a manifest")
    with Manifest(manifest_path(tmp_path)):
        pass
    assert sorted([MANIFEST_NAME, other.name]) == _files(tmp_path)


def test_a_live_creators_temp_manifest_stays(tmp_path: Path) -> None:
    """While another creator holds the folder, its temp manifest is left alone."""
    live = tmp_path / temp_name(MANIFEST_NAME)
    live.write_bytes(b"being built")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what a creator holds while it builds
        with Manifest(manifest_path(tmp_path)):
            pass
    finally:
        os.close(fd)
    assert sorted([MANIFEST_NAME, live.name]) == _files(tmp_path)


def test_a_manifest_linked_in_meanwhile_wins(tmp_path: Path) -> None:
    """When another writer creates the manifest first, its file stands and this one is dropped."""
    path = manifest_path(tmp_path)

    def race(conn: sqlite3.Connection) -> None:
        if not path.exists() and "tmp" in conn.execute("PRAGMA database_list").fetchone()[2]:
            with Manifest(path) as first:
                first.record_results([mirrored()])

    with Manifest(path, on_connect=race) as second:
        assert 1 == second.counts()["mirrored"]
    assert [MANIFEST_NAME] == _files(tmp_path)


def test_an_in_memory_manifest_makes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ ":memory:" (a dry run's stand-in) stays in memory; no file of that name appears."""
    monkeypatch.chdir(tmp_path)
    with Manifest(Path(":memory:")) as manifest:
        manifest.record_results([mirrored()])
        assert 1 == manifest.counts()["mirrored"]
    assert [] == _files(tmp_path)


def test_via_migration_moves_the_old_source_kind(tmp_path: Path) -> None:
    """Rows from before via keep their kind in via; the URL they never recorded stays NULL."""
    path = manifest_path(tmp_path)
    with sqlite3.connect(path) as conn:
        for statement in (s for migration in manifest_module.MIGRATIONS[:3] for s in migration):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")
        conn.execute("INSERT INTO objects VALUES (?, 'jpg', 10, 'JPEG', 4, 3, 1.0)", (SHA_A,))
        old = json.dumps([{"source": "origin", "url": URL, "outcome": "size-mismatch"}])
        conn.execute(
            "INSERT INTO sources (source, status, sha256, fetched_from, attempts, first_seen)"
            " VALUES (?, 'mirrored', ?, 'origin/home', ?, 1.0)",
            (URL, SHA_A, old),
        )
    conn.close()
    with Manifest(path) as manifest:
        row = manifest.get(URL)
    assert row is not None
    assert ("origin/home", None) == (row.via, row.fetched_from)
    assert (Attempt("origin", URL, "size-mismatch", None),) == row.attempts


def test_via_fetched_from_and_details_roundtrip(manifest: Manifest) -> None:
    """via, the delivering URL and each attempt's detail read back as recorded."""
    capture = "https://web.archive.org/web/20220129101500id_/https://img.example/a.jpg"
    attempts = (
        Attempt("origin", URL, "dns", "cannot resolve img.example"),
        Attempt("wayback", capture, "ok"),
    )
    result = dataclasses.replace(mirrored(), fetched_from=capture, via="wayback", attempts=attempts)
    manifest.record_results([result])
    row = manifest.get(URL)
    assert row is not None
    assert ("wayback", capture, attempts) == (row.via, row.fetched_from, row.attempts)
    manifest.record_results([failed()])
    kept = manifest.get(URL)
    assert kept is not None
    assert ("wayback", capture) == (kept.via, kept.fetched_from)
