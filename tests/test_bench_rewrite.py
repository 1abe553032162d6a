"""
bench/rewrite.py --smoke: the rewrite benchmark runs end to end, on SQLite and (where Debian's
PostgreSQL is installed, as in CI) on PostgreSQL, and every run rewrites every post.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pg_server import _bin_folder

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_rewrite_benchmark_smoke(tmp_path: Path) -> None:
    """The smoke benchmark exits 0 and prints a row per backend."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "rewrite.py"), "--smoke"],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert 0 == done.returncode, output
    assert "| SQLite     |" in output
    if _bin_folder() is not None:
        assert "| PostgreSQL |" in output
