"""The post files' edge: walking, reading and writing back safely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirror.atomic import TEMP_NAME, temp_name
from mirror.config import ScanConfig
from mirror.scan import find_posts, iter_posts, read_post, write_post


def test_write_post_leaves_a_post_changed_meanwhile(tmp_path: Path) -> None:
    """A post rewritten by someone else since it was read is not overwritten."""
    path = tmp_path / "a.md"
    path.write_bytes(b"old")
    (post,) = iter_posts([tmp_path], ScanConfig())
    path.write_bytes(b"changed by the blog generator")
    assert not write_post(post, b"mirror's version")
    assert b"changed by the blog generator" == path.read_bytes()


def test_write_post_replaces_an_unchanged_post(tmp_path: Path) -> None:
    """An unchanged post is replaced atomically, keeping its mode, with no temp file left."""
    path = tmp_path / "a.md"
    path.write_bytes(b"old")
    path.chmod(0o600)
    (post,) = iter_posts([tmp_path], ScanConfig())
    assert write_post(post, b"new")
    assert (b"new", 0o600) == (path.read_bytes(), path.stat().st_mode & 0o777)
    assert ["a.md"] == [p.name for p in tmp_path.iterdir()]


def test_write_post_out_keeps_relative_path(tmp_path: Path) -> None:
    """With an out folder the post lands at its path relative to the PATH argument."""
    src = tmp_path / "src" / "deep er"
    src.mkdir(parents=True)
    (src / "p.md").write_bytes(b"x")
    (post,) = iter_posts([tmp_path / "src"], ScanConfig())
    assert write_post(post, b"y", tmp_path / "out")
    assert b"y" == (tmp_path / "out" / "deep er" / "p.md").read_bytes()
    assert b"x" == (src / "p.md").read_bytes()


def _rels(paths: list[Path], **sweep: bool) -> list[str]:
    return [rel for _path, rel in find_posts(paths, ScanConfig(), **sweep)]


def test_walk_yields_a_folders_posts_then_each_subfolder_whole(tmp_path: Path) -> None:
    """The order is stable: files by name, then subfolders by name, depth first; hidden skipped."""
    for rel in ["b.md", "a.md", "z/c.md", "a/d.md", "a/b/e.md", ".git/x.md", "a.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x", encoding="utf-8")
    assert ["a.md", "b.md", "a/d.md", "a/b/e.md", "z/c.md"] == _rels([tmp_path])


def test_walk_follows_file_links_inside_the_path_but_not_folder_links(tmp_path: Path) -> None:
    """A link to a post inside the PATH is read; a folder link is not walked (no loops)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "d.md").write_text("x", encoding="utf-8")
    (tmp_path / "latest.md").symlink_to(Path("a") / "d.md")
    (tmp_path / "loop").symlink_to(tmp_path)
    assert ["latest.md", "a/d.md"] == _rels([tmp_path])


def test_walk_skips_file_links_out_of_the_path_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A post symlinked from outside the PATH is skipped, and the warning names both ends."""
    (tmp_path / "posts").mkdir()
    (tmp_path / "secret.md").write_text("x", encoding="utf-8")
    (tmp_path / "posts" / "a.md").symlink_to(tmp_path / "secret.md")
    assert [] == _rels([tmp_path / "posts"])
    assert f"it is a symlink to {tmp_path / 'secret.md'}, outside" in caplog.text


def test_read_post_refuses_a_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder given as a post is skipped with a warning saying what it is."""
    assert None is read_post(tmp_path, "x", ScanConfig())
    assert f"skipped {tmp_path}: it is a folder, not a regular file" in caplog.text


def test_a_post_with_a_255_byte_name_is_rewritten(tmp_path: Path) -> None:
    """Temp names are cut by bytes, so a long CJK name (255 bytes) can still be replaced."""
    name = "标" * 84 + ".md"
    assert 255 == len(os.fsencode(name))
    (tmp_path / name).write_bytes(b"old")
    (post,) = iter_posts([tmp_path], ScanConfig())
    assert write_post(post, b"new")
    assert b"new" == (tmp_path / name).read_bytes()
    temp = TEMP_NAME.fullmatch(temp_name(name))
    assert temp is not None
    assert temp["name"].endswith(".md")
    assert temp["name"].startswith("标")


def test_sweep_removes_only_regular_temp_files_of_posts(tmp_path: Path) -> None:
    """Only with sweep, and only regular files named like a post's temp file, are removed."""
    (tmp_path / "a.md").write_text("x", encoding="utf-8")
    temp = tmp_path / temp_name("a.md")
    temp.write_bytes(b"half")
    link = tmp_path / temp_name("b.md")
    link.symlink_to(tmp_path / "a.md")
    other = tmp_path / temp_name("photo.jpg")
    other.write_bytes(b"not a post")
    assert ["a.md"] == _rels([tmp_path])
    assert temp.exists()
    assert ["a.md"] == _rels([tmp_path], sweep=True)
    assert (False, True, True) == (temp.exists(), link.is_symlink(), other.exists())
