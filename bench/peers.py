"""
The downloaders bench/fetch.py compares, how each is run, timed and checked.

``mirror fetch`` reads the posts and fills a store; aria2c, wget2 and curl read plain lists of the
same images' loopback URLs. Each :class:`Tool` knows its command line for a destination folder and
how to count the images that arrived there intact (right name, right size).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from corpus import EXT, Origins, Picture
from nginx import stop_group

if TYPE_CHECKING:
    from pg import Postgres

JOBS = 32
BENCH = Path(__file__).resolve().parent
GNU_TIME = "/usr/bin/time"
PEERS = {"aria2c": "aria2", "wget2": "wget2", "curl": "curl"}  # binary: Debian package
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@dataclass(frozen=True, slots=True)
class Timed:
    """How one command ran: exit status, wall seconds, CPU seconds, peak RSS (None: unknown)."""

    status: int
    wall: float
    user: float
    sys: float
    maxrss_mb: float | None

    @property
    def cpu(self) -> float:
        """Return user + sys CPU seconds (the tool's own, reaped children included)."""
        return self.user + self.sys


@dataclass(frozen=True, slots=True)
class Run:
    """One checked run of one tool: how it ran, nginx's CPU meanwhile, the images that arrived."""

    timed: Timed
    origin_cpu: float
    arrived: int
    db_cpu: float = 0.0  # PostgreSQL's user+sys meanwhile (the queue rows only)
    objects: tuple[float, float] | None = None  # first, last store object's mtime after start


@dataclass(slots=True)
class Tool:
    """A downloader: how to run it into a destination, how to count what arrived there."""

    key: str
    label: str
    argv: Callable[[Path], list[str]]
    arrived: Callable[[Path], int]
    setup: Callable[[Path], None] | None = None  # before each run, untimed
    runs: dict[str, list[Run]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


def child_env() -> dict[str, str]:
    """Return this environment without proxy variables: every request here stays on loopback."""
    return {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}


def timed(command: list[str], log: Path, timeout: float) -> Timed:
    """
    Run ``command`` in its own session, output to ``log``; return its status, wall and CPU time.

    ``os.wait4`` gives the rusage of this child alone (its reaped descendants included). Its
    ``ru_maxrss`` would be this Python's size (Linux keeps the high-water mark across the fork
    and exec), so the peak RSS comes from GNU time (``%M``) when /usr/bin/time exists. A timer
    kills the group after ``timeout`` seconds; on Ctrl-C the group is stopped before re-raising.
    """
    rss = log.with_suffix(".rss")
    gnu_time = Path(GNU_TIME).is_file()
    argv = [GNU_TIME, "-f", "%M", "-o", str(rss), *command] if gnu_time else command
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
    timer = threading.Timer(timeout, _kill_group, (process.pid,))
    timer.start()
    try:
        _pid, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        stop_group(process, signal.SIGTERM, 5.0)
        raise
    finally:
        timer.cancel()
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        peak = int(rss.read_text().split()[-1]) / 1024 if gnu_time else None
    return Timed(process.returncode, wall, usage.ru_utime, usage.ru_stime, peak)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def count_files(pictures: Sequence[Picture]) -> Callable[[Path], int]:
    """Count pictures present as DEST/<name> with the right size (what the peers write)."""
    sizes = {p.name: p.size for p in pictures}

    def arrived(dest: Path) -> int:
        found = {f.name: f.stat().st_size for f in dest.iterdir() if f.is_file()}
        return sum(found.get(name) == size for name, size in sizes.items())

    return arrived


def count_objects(pictures: Sequence[Picture]) -> Callable[[Path], int]:
    """Count pictures present as store objects ``objects/<ab>/<sha256>.<ext>`` of the right size."""
    sizes = {f"{p.sha256[:2]}/{p.sha256}.{EXT[p.format]}": p.size for p in pictures}

    def arrived(store: Path) -> int:
        found = {
            f"{f.parent.name}/{f.name}": f.stat().st_size
            for f in (store / "objects").glob("*/*")
            if not f.name.startswith(".")  # a leftover temp file is not an object
        }
        return sum(found.get(name) == size for name, size in sizes.items())

    return arrived


def write_inputs(root: Path, pictures: Sequence[Picture], origins: Origins) -> None:
    """Write mirror.toml and the peers' inputs: urls.txt, aria2c.txt (out=), curl.cfg."""
    mappings = "".join(f'  "{m}",\n' for m in origins.connect_to())
    (root / "mirror.toml").write_text(
        "# Defaults except: 32 jobs like the peers, the loopback origins, and only the origin\n"
        "# source, so a failed image can never fall back to the real cors.zfour.workers.dev.\n"
        f'[fetch]\njobs = {JOBS}\nsources = ["origin"]\n\n[network]\nconnect_to = [\n{mappings}]\n',
        encoding="utf-8",
    )
    urls = [origins.url(p) for p in pictures]
    pairs = list(zip(urls, pictures, strict=True))
    (root / "urls.txt").write_text("".join(f"{u}\n" for u in urls), encoding="utf-8")
    aria = "".join(f"{u}\n  out={p.name}\n" for u, p in pairs)
    (root / "aria2c.txt").write_text(aria, encoding="utf-8")
    curl = "".join(f'url = "{u}"\noutput = "{p.name}"\n' for u, p in pairs)
    (root / "curl.cfg").write_text(curl, encoding="utf-8")


def mirror_command(root: Path, store: Path, posts: Path) -> list[str]:
    """Return the `mirror fetch` command line (config from :func:`write_inputs`)."""
    config = str(root / "mirror.toml")
    return [
        *(sys.executable, "-m", "mirror", "fetch", "--config", config),
        *("--store", str(store), "-q", str(posts)),
    ]


def queue_tools(root: Path, pictures: Sequence[Picture], posts: Path, db: Postgres) -> list[Tool]:
    """
    Return `mirror run --workers 1` and `--workers 2`: a fresh database and posts copy per run.

    ``run`` rewrites the posts in place and its queue lives in the manifest's database, so each
    run starts from a copy of the pristine posts under DEST's parent and an empty database.
    """

    def setup(dest: Path) -> None:
        work = dest.parent / "queue"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(posts, work / "posts")
        config = (root / "mirror.toml").read_text(encoding="utf-8")
        url = db.fresh_database()
        (work / "mirror.toml").write_text(f'{config}\n[manifest]\nurl = "{url}"\n', "utf-8")

    def command(workers: int) -> Callable[[Path], list[str]]:
        def argv(dest: Path) -> list[str]:
            work = dest.parent / "queue"
            return [
                *(sys.executable, "-m", "mirror", "run", "--workers", str(workers)),
                *("--config", str(work / "mirror.toml"), "--store", str(dest), "-q"),
                str(work / "posts"),
            ]

        return argv

    objects = count_objects(pictures)
    return [
        Tool(f"mirror-w{n}", f"mirror run --workers {n}", command(n), objects, setup)
        for n in (1, 2)
    ]


def make_tools(root: Path, pictures: Sequence[Picture], posts: Path) -> list[Tool]:
    """
    Return mirror, the three peers and the bare aiohttp script (inputs from :func:`write_inputs`).
    """
    files = count_files(pictures)

    def aria2c(dest: Path) -> list[str]:
        return [
            *("aria2c", "--no-conf=true", "-i", str(root / "aria2c.txt"), "-j", str(JOBS)),
            *("-x", "1", "--file-allocation=none", "--auto-file-renaming=false"),
            *("--allow-overwrite=true", "--max-tries=1", "--summary-interval=0"),
            "--download-result=hide",
            *("--deferred-input=true", "-d", str(dest)),
        ]

    def wget2(dest: Path) -> list[str]:
        return [
            *("wget2", "--no-config", "-i", str(root / "urls.txt"), f"--max-threads={JOBS}"),
            *("-P", str(dest), "-q", "--robots=off", "--no-hsts", "--no-hpkp"),
        ]

    def curl(dest: Path) -> list[str]:
        return [
            *("curl", "--disable", "--parallel", "--parallel-max", str(JOBS), "-s", "-S"),
            *("--fail", "--output-dir", str(dest), "--config", str(root / "curl.cfg")),
        ]

    def bare(dest: Path) -> list[str]:
        script = str(BENCH / "aiohttp_get.py")
        return [sys.executable, script, str(root / "urls.txt"), str(dest), str(JOBS)]

    return [
        Tool(
            "mirror",
            "mirror fetch",
            lambda dest: mirror_command(root, dest, posts),
            count_objects(pictures),
        ),
        Tool("aria2c", "aria2c", aria2c, files),
        Tool("wget2", "wget2", wget2, files),
        Tool("curl", "curl", curl, files),
        Tool("aiohttp", "aiohttp, bare script", bare, files),
    ]


def installed(tools: list[Tool], wanted: Sequence[str]) -> tuple[list[Tool], list[str]]:
    """Keep the ``wanted`` tools that are installed; return them and a note per skipped peer."""
    kept, notes = [], []
    for tool in tools:
        if tool.key not in wanted:
            continue
        if tool.key in PEERS and shutil.which(tool.key) is None:
            notes.append(
                f"{tool.key} is not installed: skipped (apt-get install {PEERS[tool.key]})"
            )
            continue
        kept.append(tool)
    return kept, notes


def version(binary: str) -> str:
    """Return the first line of ``binary --version``."""
    done = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    lines = (done.stdout or done.stderr).splitlines()
    return lines[0].strip() if lines else f"{binary}: no version"
