"""
bench/fetch.py --smoke: the fetch benchmark runs end to end on loopback, mirror gets every image.

The benchmark runs in a subprocess (Debian's nginx as the origins, mirror fetch, and whichever of
aria2c, wget2 and curl are installed; a missing peer is skipped by the benchmark itself).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NGINX = Path("/usr/sbin/nginx")


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_fetch_benchmark_smoke() -> None:
    """The smoke benchmark exits 0 and mirror fetch stores all 50 images."""
    if not NGINX.is_file():
        pytest.skip("Debian's nginx is not installed (apt-get install nginx)")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fetch.py"), "--smoke"],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        cwd=REPO,
    )
    output = done.stdout + done.stderr
    assert 0 == done.returncode, output
    runs = re.findall(
        r"^\[tmpfs\] run 1 mirror fetch: [\d.]+ s, (\d+)/(\d+) images, exit 0", output, re.MULTILINE
    )
    assert [("50", "50")] == runs, output
