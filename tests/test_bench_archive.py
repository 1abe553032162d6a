"""
bench/archive.py --smoke: the archive benchmark runs end to end on loopback; the re-run is a no-op.

The benchmark runs in a subprocess: it generates (or reuses) 300 posts in /tmp, scans them, runs
`mirror run` against its own origin on 127.0.0.1, then re-runs on the unchanged posts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_run import smoke


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_archive_benchmark_smoke(tmp_path: Path) -> None:
    """The smoke benchmark exits 0, mirrors every image once, and its re-runs fetch nothing."""
    summary = tmp_path / "summary.json"
    output = smoke("archive.py", "--smoke", "--json", str(summary), cwd=tmp_path)
    facts = json.loads(summary.read_text(encoding="utf-8"))
    assert [] == facts["problems"], output
    assert facts["archive"]["distinct_images"] == facts["first_run"]["requests"], output
    assert 0 == facts["rerun"]["fetched"], output
    assert facts["rerun"]["posts_unchanged_on_disk"], output
    assert [300, 300, 300] == facts["rerun"]["summary_unchanged"], output
