"""
Child processes for the benchmarks: run and reap them with their own rusage, and a local origin.

Every child gets this environment without proxy variables and its own process group, so a timeout
or an interrupted benchmark kills whatever it started; every command run is remembered in
:data:`COMMANDS` for the report.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nginx import HOST, free_port, stop_group, wait_listening

PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
ORIGIN = r"""
import sys
from pathlib import Path
from aiohttp import web
root = Path(sys.argv[1])
counts = {"requests": 0, "found": 0}
async def handle(request):
    if request.path == "/__bench__/count":
        return web.json_response(counts)
    counts["requests"] += 1
    host = request.host.partition(":")[0].lower()
    path = root / host / request.path.lstrip("/")
    if ".." in request.path or not path.is_file():
        return web.Response(status=404)
    counts["found"] += 1
    return web.Response(body=path.read_bytes(), content_type="application/octet-stream")
app = web.Application()
app.router.add_get("/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
"""
COMMANDS: list[list[str]] = []  # every command run, in order, for the report
SCRIPTS = {ORIGIN: "<children.ORIGIN>"}  # inline scripts, shown by name in the report


def child_env() -> dict[str, str]:
    """This environment without proxy variables: every request here stays on loopback."""
    return {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}


# Runs one command and reports its own rusage. A child's ru_maxrss starts at the RSS of the
# process that spawned it (the kernel carries the parent's high-water mark over fork and exec),
# so a big parent would inflate it; this small interpreter is the parent instead.
RUSAGE = r"""
import resource, subprocess, sys, time
started = time.perf_counter()
status = subprocess.run(sys.argv[2:], check=False).returncode
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime} {wall}")
sys.exit(status if status >= 0 else 128 - status)
"""


@dataclass(slots=True)
class Child:
    """One finished command: its wall time, peak RSS and CPU time, exit status and stderr."""

    wall: float
    rss_mb: float
    cpu: float
    status: int
    stderr: str


def run_children(commands: list[list[str]], cwd: Path, timeout: float) -> tuple[float, list[Child]]:
    """
    Run commands at once, stdout to /dev/null; return the longest wall time, and each child.

    Each runs under :data:`RUSAGE` in its own process group; a group still running after
    ``timeout`` seconds is SIGKILLed, and its child reported with status -9 and NaN figures.
    """
    COMMANDS.extend(commands)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        errs = [
            stack.enter_context(Path(tmp, f"{i}.err").open("w+b")) for i in range(len(commands))
        ]
        procs = [
            subprocess.Popen([sys.executable, "-c", RUSAGE, f"{tmp}/{i}.usage", *command],
                             cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL, stderr=errs[i],
                             start_new_session=True)
            for i, command in enumerate(commands)
        ]  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            for proc in procs:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass  # the stragglers are killed below
        finally:
            for proc in procs:
                if proc.poll() is None:
                    _killpg(proc)
                    proc.wait(timeout=30)
        children = []
        for i, (proc, err) in enumerate(zip(procs, errs, strict=True)):
            usage = Path(tmp, f"{i}.usage")
            maxrss, cpu, wall = (
                map(float, usage.read_text().split()) if usage.exists() else [math.nan] * 3
            )
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
            children.append(Child(wall, maxrss / 1024, cpu, proc.returncode, stderr))
    return max(c.wall for c in children), children


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def show(command: list[str], root: Path) -> str:
    """A command as a shell line, with ``$ARCHIVE`` for ``root`` and inline scripts by name."""
    parts = []
    for arg in command:
        if arg == sys.executable or arg in SCRIPTS:
            parts.append("python" if arg == sys.executable else SCRIPTS[arg])
        elif str(root) in arg:  # archive paths hold no quote, $ or backtick
            parts.append('"' + arg.replace(str(root), "$ARCHIVE") + '"')
        else:
            parts.append(shlex.quote(arg))
    return " ".join(parts)


@contextmanager
def origin(folder: Path) -> Iterator[int]:
    """Serve ``folder/<host>/<path>`` on 127.0.0.1 while the block runs; yield the port."""
    port = free_port()
    command = [sys.executable, "-c", ORIGIN, str(folder), str(port)]
    COMMANDS.append(command)
    server = subprocess.Popen(command, env=child_env(), start_new_session=True)
    try:
        wait_listening(port, server, timeout=30)
        yield port
    finally:
        for problem in stop_group(server, signal.SIGTERM):
            print(f"origin: {problem}", file=sys.stderr)


def origin_count(port: int) -> int:
    """How many image requests the origin has answered so far."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/__bench__/count")
        return int(json.loads(conn.getresponse().read())["requests"])
    finally:
        conn.close()
