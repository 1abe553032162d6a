"""
bench/serve.py --smoke: the serve benchmark runs end to end on loopback and every check passes.

It starts Debian's nginx and wrk, fills a store with `mirror fetch`, and compares `mirror serve`
(alone and behind nginx with X-Accel-Redirect; with PostgreSQL installed, two nodes over one
PostgreSQL manifest behind nginx too, and the catalog refresh figure) with nginx on a few
one-second wrk runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bench_run import smoke
from pg_server import _bin_folder

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_benchmark_smoke() -> None:
    """The smoke benchmark exits 0: every URL checked, no failed wrk run, every server stopped."""
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").is_file():
            pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    output = smoke("serve.py", "--smoke", cwd=REPO, timeout=280)
    assert "nginx+mirror /?" in output
    assert "cold misses" in output
    assert "FAILED" not in output
    if _bin_folder() is not None:
        assert "nginx+2 pg nodes /?" in output
        assert "visible on all 2 nodes" in output
