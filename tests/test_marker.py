"""Marker files: a folder mirror did not make is never written into unasked, nor removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirror.errors import UsageError
from mirror.marker import (
    DEMO_MARKER,
    OUT_MARKER,
    STORE_MARKER,
    check_out,
    check_store,
    is_store,
    mark_out,
    mark_store,
    prepare_demo_dir,
)


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its text."""
    return {
        str(p.relative_to(root)): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_check_store_cases(tmp_path: Path) -> None:
    """Missing, empty, store, foreign and file folders get the answers a mistyped path needs."""
    missing, empty, foreign = tmp_path / "missing", tmp_path / "empty", tmp_path / "foreign"
    empty.mkdir()
    foreign.mkdir()
    (foreign / "a.md").write_text("post", encoding="utf-8")
    assert False is check_store(missing, create=False, makes_missing=True)
    assert False is check_store(empty, create=False, makes_missing=False)
    with pytest.raises(UsageError, match="no such store"):
        check_store(missing, create=False, makes_missing=False)
    with pytest.raises(UsageError, match="not a mirror store"):
        check_store(foreign, create=False, makes_missing=True)
    assert False is check_store(foreign, create=True, makes_missing=False)
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    with pytest.raises(UsageError, match="not a folder"):
        check_store(tmp_path / "afile", create=True, makes_missing=True)
    mark_store(missing)
    assert is_store(missing)
    assert True is check_store(missing, create=False, makes_missing=False)


def test_a_folder_with_a_manifest_is_a_store_and_gets_marked(tmp_path: Path) -> None:
    """An older store (manifest, no marker) counts, and marking it adds only the marker."""
    (tmp_path / "manifest.sqlite3").write_bytes(b"")
    assert is_store(tmp_path)
    mark_store(tmp_path)
    assert sorted(["manifest.sqlite3", STORE_MARKER]) == sorted(p.name for p in tmp_path.iterdir())


def test_out_folder_must_be_new_empty_or_an_earlier_out(tmp_path: Path) -> None:
    """--out refuses a folder holding files mirror did not write, and one inside a PATH."""
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a.md").write_text("post", encoding="utf-8")
    public = tmp_path / "public"
    public.mkdir()
    (public / "index.html").write_text("site", encoding="utf-8")
    with pytest.raises(UsageError, match="never overwrites"):
        check_out(public, [posts])
    with pytest.raises(UsageError, match="inside PATH"):
        check_out(posts / "public", [posts])
    out = tmp_path / "out"
    check_out(out, [posts])
    mark_out(out)
    (out / "a.md").write_text("copy", encoding="utf-8")
    check_out(out, [posts])
    assert (out / OUT_MARKER).is_file()


def test_demo_dir_that_is_not_a_demo_is_refused_untouched(tmp_path: Path) -> None:
    """A non-empty folder without the demo marker (a home folder, ``.``) is never cleared."""
    home = tmp_path / "home"
    (home / "posts").mkdir(parents=True)
    (home / "posts" / "mine.md").write_text("my post", encoding="utf-8")
    (home / "notes.txt").write_text("mine", encoding="utf-8")
    before = tree(home)
    with pytest.raises(UsageError, match=f"--dir {home}: not empty"):
        prepare_demo_dir(home)
    assert before == tree(home)


def test_demo_dir_clears_only_what_an_earlier_demo_made(tmp_path: Path) -> None:
    """A rerun removes the marker's posts/, cache/ and report.jsonl; other files stay."""
    work = tmp_path / "demo"
    prepare_demo_dir(work)
    (work / "posts").mkdir()
    (work / "posts" / "a.md").write_text("copy", encoding="utf-8")
    (work / "cache").mkdir()
    (work / "report.jsonl").write_text("{}", encoding="utf-8")
    (work / "mine.txt").write_text("keep", encoding="utf-8")
    prepare_demo_dir(work)
    assert sorted(["mine.txt", DEMO_MARKER]) == sorted(p.name for p in work.iterdir())


def test_demo_marker_cannot_point_elsewhere(tmp_path: Path) -> None:
    """A marker naming anything but the demo's own entries removes nothing else."""
    work = tmp_path / "demo"
    work.mkdir()
    (tmp_path / "precious").mkdir()
    (work / "other").mkdir()
    made = ["../precious", "other", "/", "posts"]
    (work / DEMO_MARKER).write_text(json.dumps({"made": made}), encoding="utf-8")
    prepare_demo_dir(work)
    assert (tmp_path / "precious").is_dir()
    assert (work / "other").is_dir()


def test_demo_refuses_a_symlink_it_never_made(tmp_path: Path) -> None:
    """posts/ as a symbolic link (to the user's real posts) is refused, its target untouched."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.md").write_text("mine", encoding="utf-8")
    work = tmp_path / "demo"
    prepare_demo_dir(work)
    (work / "posts").symlink_to(real)
    with pytest.raises(UsageError, match="symbolic link"):
        prepare_demo_dir(work)
    assert {"a.md": "mine"} == tree(real)


def test_demo_dir_that_is_a_file(tmp_path: Path) -> None:
    """--dir afile is a clear error."""
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    with pytest.raises(UsageError, match="not a folder"):
        prepare_demo_dir(afile)
