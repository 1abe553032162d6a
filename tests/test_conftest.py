"""The session-end check: what tests leave in the checkout is found, and only that."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import checkout_status


def test_checkout_status_sees_new_files_ignored_ones_included(tmp_path: Path) -> None:
    """New files show up, ignored ones too (cache/manifest.sqlite3 is ignored); caches do not."""
    git = shutil.which("git")
    assert git is not None, "the check needs git; CI has it"
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True, timeout=60)
    (tmp_path / ".gitignore").write_text("cache/*\n!cache/.gitignore\n", encoding="utf-8")
    (tmp_path / "cache").mkdir()
    before = checkout_status(tmp_path)
    assert before is not None
    (tmp_path / "cache" / "manifest.sqlite3").write_bytes(b"")
    (tmp_path / "mirror.lock").write_bytes(b"")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"")
    (tmp_path / ".hypothesis").mkdir()
    (tmp_path / ".hypothesis" / "db").write_bytes(b"")
    after = checkout_status(tmp_path)
    assert after is not None
    assert ["!! cache/manifest.sqlite3", "?? mirror.lock"] == sorted(after - before)


def test_checkout_status_outside_a_checkout_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a git checkout (an unpacked sdist) the check is skipped, not failed."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert checkout_status(tmp_path) is None
