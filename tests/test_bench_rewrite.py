"""
bench/rewrite.py --smoke: the rewrite benchmark runs end to end, on SQLite and (where Debian's
PostgreSQL is installed, as in CI) on PostgreSQL, and every run rewrites every post.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_run import smoke
from pg_server import _bin_folder


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_rewrite_benchmark_smoke(tmp_path: Path) -> None:
    """The smoke benchmark exits 0 and prints a row per backend."""
    output = smoke("rewrite.py", "--smoke", cwd=tmp_path)
    assert "| SQLite     |" in output
    if _bin_folder() is not None:
        assert "| PostgreSQL |" in output
