"""
Profile one `mirror fetch` run with py-spy and summarize where its time goes, thread by thread.

``py-spy record --idle --threads -f raw`` samples every thread of the process whether it runs or
waits, and starts each stack with its thread (``thread (TID): NAME``). So for the event loop's
thread (MainThread) the samples add up to the wall time, and the share spent in the selector is
the time the loop had nothing to do; everything else there is the loop running Python or waiting
for the GIL after a C call released it (a ``socket.send``, a ``sha256.update``). The raw file is
kept for flame graphs; the summary lists the loop's top frames by self time (the leaf), mirror's
own functions by inclusive time on the loop, and what the other threads (``asyncio.to_thread``'s
workers) were doing when they were not idle.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

from peers import timed

RATE = 200  # samples per second
TOP = 12
_LINE = re.compile(r":\d+\)$")
_THREAD = re.compile(r"thread \((\d+)\)(?::\s*(.*))?$")
# Leaf frames of a thread with nothing to do (matched as suffixes: EpollSelector.select...).
IDLE = ("select (selectors.py)", "_worker (concurrent/futures/thread.py)", "wait (threading.py)")


def _short(frame: str) -> str:
    """``name (/long/path/site-packages/pkg/mod.py:12)`` -> ``name (pkg/mod.py)``."""
    name, _, where = _LINE.sub(")", frame).partition(" (")
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/", "lib/python3.13/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    where = re.sub(r"^.*/(mirror|bench)/", r"\1/", where)
    return f"{name} ({where}" if where else name


def _stacks(raw: Path) -> tuple[list[tuple[str, list[str], int]], dict[str, str]]:
    """Return (thread id, frames, samples) per raw line, and thread id -> name."""
    stacks, names = [], {}
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        found = _THREAD.match(frames[0]) if frames else None
        if found is None or not count.isdigit():
            continue
        if found[2]:
            names[found[1]] = found[2]
        stacks.append((found[1], [_short(f) for f in frames[1:]], int(count)))
    return stacks, names


def summarize(raw: Path, top: int = TOP) -> list[str]:
    """Return the summary lines of a ``py-spy record --idle --threads -f raw`` file."""
    stacks, names = _stacks(raw)
    main = {tid for tid, name in names.items() if name == "MainThread"}
    loop = [(frames, n) for tid, frames, n in stacks if tid in main and frames]
    total = sum(n for _, n in loop)
    if not total:
        return [f"py-spy: no MainThread samples in {raw}"]
    idle = sum(n for frames, n in loop if frames[-1].endswith(IDLE))
    busy = total - idle
    own: Counter[str] = Counter()
    mine: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for frames, n in loop:
        if not frames[-1].endswith(IDLE):
            own[frames[-1]] += n
            for frame in set(frames):
                mine[frame] += n if "(mirror/" in frame else 0
    for tid, frames, n in stacks:
        if tid not in main and frames and not frames[-1].endswith(IDLE):
            others[frames[-1]] += n
    lines = [
        f"py-spy ({RATE} Hz, --idle --threads): the event loop's thread ran {total / RATE:.2f} s, "
        f"idle in the selector {100 * idle / total:.1f} % of it; other threads were busy "
        f"{sum(others.values()) / RATE:.2f} thread-s ({raw})",
        "event loop, self time (% of its wall time):",
    ]
    lines += [f"  {100 * n / total:5.1f} %  {f}" for f, n in own.most_common(top)]
    lines.append(f"event loop, mirror's functions, inclusive (% of its busy {busy / RATE:.2f} s):")
    lines += [f"  {100 * n / busy:5.1f} %  {f}" for f, n in mine.most_common(top) if n]
    lines.append("other threads (to_thread workers), self time when not idle (thread-s):")
    lines += [f"  {n / RATE:6.2f} s  {f}" for f, n in others.most_common(top // 2)]
    return lines


def profile_mirror(command: list[str], output: Path, log: Path, timeout: float) -> list[str]:
    """Run ``command`` (a mirror fetch) under ``py-spy record``; return the summary lines."""
    spy = shutil.which("py-spy")
    if spy is None:
        return ["py-spy is not installed: no profile (pip install py-spy)"]
    argv = [spy, "record", "--idle", "--threads", "-f", "raw", "-r", str(RATE)]
    done = timed([*argv, "-o", str(output), "--", *command], log, timeout)
    if done.status != 0 or not output.is_file():
        tail = log.read_text(errors="replace")[-1500:]
        return [f"py-spy record exited {done.status}: {tail}"]
    return [f"profiled run: {done.wall:.2f} s wall under py-spy", *summarize(output)]
