"""
bench/fetch.py --smoke: the fetch benchmark runs end to end on loopback, mirror gets every image.

The benchmark runs in a subprocess (Debian's nginx as the origins, mirror fetch, and whichever of
aria2c, wget2 and curl are installed; a missing peer is skipped by the benchmark itself); with
PostgreSQL installed, also `mirror run --workers 2` (the benchmark starts its own server).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench_run import smoke

REPO = Path(__file__).resolve().parent.parent
NGINX = Path("/usr/sbin/nginx")


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_fetch_benchmark_smoke() -> None:
    """The smoke benchmark exits 0 and mirror fetch stores all 50 images."""
    if not NGINX.is_file():
        pytest.skip("Debian's nginx is not installed (apt-get install nginx)")
    output = smoke("fetch.py", "--smoke", cwd=REPO)
    runs = re.findall(
        r"^\[tmpfs\] run 1 mirror fetch: [\d.]+ s, (\d+)/(\d+) images, exit 0", output, re.MULTILINE
    )
    assert [("50", "50")] == runs, output


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_fetch_benchmark_smoke_workers() -> None:
    """The smoke benchmark with --tools mirror-w2 gets all 50 images through two queue workers."""
    if not NGINX.is_file():
        pytest.skip("Debian's nginx is not installed (apt-get install nginx)")
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin")
    output = smoke("fetch.py", "--smoke", "--tools", "mirror-w2", cwd=REPO)
    runs = re.findall(
        r"^\[tmpfs\] run 1 mirror run --workers 2: [\d.]+ s, (\d+)/(\d+) images, exit 0, .*"
        r"PostgreSQL CPU [\d.]+ s",
        output,
        re.MULTILINE,
    )
    assert [("50", "50")] == runs, output
