"""Run a ``bench/`` script as the smoke tests do: a bounded subprocess that must exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def smoke(script: str, *args: str, cwd: Path, timeout: float = 180) -> str:
    """Run ``bench/<script> ARGS`` in ``cwd``; assert it exits 0; return its stdout and stderr."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=cwd,
    )
    output = done.stdout + done.stderr
    assert 0 == done.returncode, output
    return output
