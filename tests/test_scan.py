"""The post files' edge: walking, reading and writing back safely."""

from __future__ import annotations

from pathlib import Path

from mirror.config import ScanConfig
from mirror.scan import iter_posts, write_post


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
