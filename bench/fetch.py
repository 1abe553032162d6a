"""
Measure `mirror fetch` against aria2c, wget2 and curl downloading the same images on 127.0.0.1.

One command, deterministic from a seed: N generated images (cached under /tmp, see corpus.py)
over 20 origin hosts, served by one Debian nginx listening on one loopback port per host. mirror
reads Hexo posts that name every image once through the cors.zfour.workers.dev wrapper and
reaches ``hostNN.example`` through ``network.connect_to``; the peers get the plain list of
``http://127.0.0.1:PORT/img/...`` URLs. Every tool runs 32 downloads at a time. Tools alternate,
``--runs`` each, each run into an empty destination, first on tmpfs (the figure for the ratio),
then on the real disk. After each run every image must be there with the right size (mirror:
exit 0 and one store object per image, named by its sha256); a run that lost one is FAILED.

    python bench/fetch.py                          # 2000 images, 3 runs per tool and destination
    python bench/fetch.py -n 10000 --runs 5
    python bench/fetch.py --smoke                  # 50 images, 1 run, tmpfs only
    python bench/fetch.py --append BENCHMARKS.md   # also append the results in Markdown
    python bench/fetch.py --profile prof.txt       # then one mirror run under py-spy (raw)
    python bench/fetch.py --tools mirror,mirror-w2,aria2c   # add `mirror run --workers 2`

Exit status 0 when every run succeeded, 1 otherwise (each problem is printed). A peer that is not
installed is skipped with a note; the target (mirror's median wall time <= aria2c's on tmpfs) is
reported against the numbers, not enforced.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import PIL
from corpus import Origins, Picture, images, write_posts
from nginx import version as nginx_version
from peers import (
    JOBS,
    PEERS,
    Run,
    Tool,
    installed,
    make_tools,
    mirror_command,
    queue_tools,
    timed,
    version,
    write_inputs,
)
from pg import Postgres
from pyspy import profile_mirror

HOSTS = 20
BASELINE = "aria2c"
TARGET = 1.0  # mirror's median wall time / aria2c's, on tmpfs
QUEUED = ("mirror-w1", "mirror-w2")  # `mirror run --workers N`: need PostgreSQL, never default
MIRRORS = ("mirror", *QUEUED)


@dataclass(slots=True)
class Bench:
    """The generated world (images, posts, inputs, origins) and the tools measured in it."""

    args: argparse.Namespace
    root: Path
    pictures: list[Picture]
    origins: Origins
    tools: list[Tool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    db: Postgres | None = None  # started by prepare() for the mirror-wN rows only

    @property
    def megabytes(self) -> float:
        """Return the archive's size in MB (10^6 bytes)."""
        return sum(p.size for p in self.pictures) / 1e6

    def prepare(self) -> None:
        """Write the posts and every tool's input; keep the wanted tools that are installed."""
        write_posts(self.root / "posts", self.pictures, HOSTS)
        write_inputs(self.root, self.pictures, self.origins)
        posts, wanted = self.root / "posts", self.args.tools.split(",")
        every = make_tools(self.root, self.pictures, posts)
        if any(key in QUEUED for key in wanted):
            self.db = Postgres()
            self.db.start()  # RuntimeError (binaries missing, initdb failed) stops the bench
            every[1:1] = queue_tools(self.root, self.pictures, posts, self.db)
        self.tools, skipped = installed(every, wanted)
        self.notes += skipped

    def measure(self, tool: Tool, where: str, base: Path, number: int) -> None:
        """Run ``tool`` once into an empty ``base/dest``; check it, print it, record it."""
        dest, n = base / "dest", len(self.pictures)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        if tool.setup is not None:
            tool.setup(dest)
        command = tool.argv(dest)
        self.commands.setdefault(tool.key, shlex.join(command))
        log = self.root / f"{tool.key}-{where}-{number}.log"
        before, db_before = self.origins.cpu_seconds(), self.db_cpu()
        started = time.time()  # the clock file mtimes use
        done = timed(command, log, self.args.timeout)
        origin_cpu = self.origins.cpu_seconds() - before
        db_cpu = self.db_cpu() - db_before
        arrived = tool.arrived(dest)
        objects = object_times(dest, started) if tool.key.startswith("mirror") else None
        shutil.rmtree(dest, ignore_errors=True)
        run, status = Run(done, origin_cpu, arrived, db_cpu, objects), done.status
        tag = f"[{where}] {f'run {number}' if number else 'warm-up'} {tool.label}:"
        extra = f", PostgreSQL CPU {db_cpu:.2f} s" if tool.key in QUEUED else ""
        if objects:
            extra += f", objects written {objects[0]:.2f}-{objects[1]:.2f} s after start"
        print(
            f"{tag} {done.wall:.2f} s, {arrived}/{n} images, exit {status}, CPU {done.cpu:.2f} s "
            f"(user {done.user:.2f} + sys {done.sys:.2f}), max RSS {mb(done.maxrss_mb)} MB, "
            f"nginx CPU {origin_cpu:.2f} s{extra}",
            flush=True,
        )
        if status != 0 or arrived != n:
            tail = log.read_text(errors="replace")[-2000:]
            problem = f"FAILED RUN {tag} only {arrived}/{n} images arrived, exit {status}\n{tail}"
            print(f"\n*** {problem}\n", file=sys.stderr, flush=True)
            self.problems.append(problem)
            if number:
                tool.failures[where] = tool.failures.get(where, 0) + 1
        elif number:
            tool.runs.setdefault(where, []).append(run)

    def db_cpu(self) -> float:
        """Return PostgreSQL's CPU seconds so far (0 when the bench runs none)."""
        return 0.0 if self.db is None else self.db.cpu_seconds()

    def run_all(self, destinations: list[tuple[str, Path]]) -> None:
        """Warm up (tmpfs, untimed), then alternate the tools ``--runs`` times per destination."""
        for _ in range(self.args.warmup):
            for tool in self.tools:
                self.measure(tool, *destinations[0], 0)
        for where, base in destinations:
            for number in range(1, self.args.runs + 1):
                for tool in self.tools if number % 2 else self.tools[::-1]:
                    self.measure(tool, where, base, number)

    def startup(self) -> str:
        """Time `mirror fetch` with no posts on tmpfs: what a run pays before its first image."""
        if not any(t.key == "mirror" for t in self.tools):
            return ""
        (self.root / "no-posts").mkdir(exist_ok=True)
        walls, cpus = [], []
        for number in range(1, self.args.runs + 1):
            store = self.root / "dest"
            shutil.rmtree(store, ignore_errors=True)
            command = mirror_command(self.root, store, self.root / "no-posts")
            done = timed(command, self.root / f"startup-{number}.log", self.args.timeout)
            shutil.rmtree(store, ignore_errors=True)
            if done.status != 0:
                self.problems.append(f"mirror fetch with no posts exited {done.status}")
            walls.append(done.wall)
            cpus.append(done.cpu)
        return (
            f"mirror fetch with no posts (interpreter, imports, new store and manifest): "
            f"{statistics.median(walls):.2f} s wall, {statistics.median(cpus):.2f} CPU s "
            f"(median of {len(walls)}, tmpfs)"
        )

    def medians(self, where: str) -> dict[str, float]:
        """Return each tool's median wall time at ``where`` (tools with a successful run)."""
        return {
            t.key: statistics.median(r.timed.wall for r in t.runs[where])
            for t in self.tools
            if t.runs.get(where)
        }

    def table(self, where: str) -> str:
        """Return an aligned Markdown table of ``where``'s runs: medians, ratio to aria2c."""
        n, size, medians = len(self.pictures), self.megabytes, self.medians(where)
        base = medians.get(BASELINE)
        head = ["tool", "median s", "min s", "max s", "images/s", "MB/s", f"x {BASELINE}"]
        rows = [[*head, "CPU s", "CPU ms/image", "PostgreSQL CPU s", "max RSS MB"]]
        rows[0] += ["nginx CPU s", "objects at s", "failed"]
        for tool in self.tools:
            runs = tool.runs.get(where, [])
            failed = f"{tool.failures.get(where, 0)}/{self.args.runs}"
            if not runs:
                rows.append([tool.label, *["-"] * 12, failed])
                continue
            wall, walls = medians[tool.key], [r.timed.wall for r in runs]
            cpu = statistics.median(r.timed.cpu for r in runs)
            db = statistics.median(r.db_cpu for r in runs)
            rss = statistics.median(r.timed.maxrss_mb or math.nan for r in runs)
            origin = statistics.median(r.origin_cpu for r in runs)
            spans = [r.objects for r in runs if r.objects]
            at = "-"
            if spans:
                first, last = (statistics.median(s[i] for s in spans) for i in (0, 1))
                at = f"{first:.2f}-{last:.2f}"
            rows.append(
                [
                    *(tool.label, f"{wall:.2f}", f"{min(walls):.2f}", f"{max(walls):.2f}"),
                    *(f"{n / wall:,.0f}", f"{size / wall:.1f}"),
                    f"{wall / base:.2f}" if base else "-",
                    *(f"{cpu:.2f}", f"{1000 * (cpu + db) / n:.2f}"),
                    f"{db:.2f}" if tool.key in QUEUED else "-",
                    *(mb(rss), f"{origin:.2f}", at, failed),
                ]
            )
        return markdown_table(rows)

    def verdict(self, where: str) -> list[str]:
        """Return the target line of each mirror row at ``where``, against the measured ratio."""
        medians, lines = self.medians(where), []
        for tool in self.tools:
            if tool.key not in MIRRORS:
                continue
            target = f"target: {tool.label} median wall <= {BASELINE}'s (ratio <= {TARGET:.2f})"
            if tool.key not in medians or BASELINE not in medians:
                lines.append(f"{target}: not measured")
                continue
            ratio = medians[tool.key] / medians[BASELINE]
            met = "met" if ratio <= TARGET else "MISSED"
            count = f"{len(self.pictures):,} images ({where})"
            lines.append(f"{target}: {ratio:.2f} on {count} - {met}")
        return lines


def object_times(store: Path, started: float) -> tuple[float, float] | None:
    """Return when the first and last store objects were written, in seconds after ``started``."""
    times = [f.stat().st_mtime for f in (store / "objects").glob("*/*")]
    return (min(times) - started, max(times) - started) if times else None


def mb(value: float | None) -> str:
    """Format megabytes, ``-`` when unknown."""
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def markdown_table(rows: list[list[str]]) -> str:
    """Align ``rows`` (the first is the header) as a Markdown table, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]
    lines = []
    for row in [rows[0], rule, *rows[1:]]:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fs_type(path: Path) -> str:
    """Return the type of the file system holding ``path`` (the longest mount point in it)."""
    best, kind, resolved = "", "?", str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        point, fstype = line.split()[1:3]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def machine(tools: list[Tool]) -> list[str]:
    """Describe the date, the machine and every program's version."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    lines = [
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"{os.cpu_count()} CPUs, {model[1] if model else '?'}, Linux {platform.release()}; "
        f"load average before the run {os.getloadavg()[0]:.2f} (other work skews results)",
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"Pillow {PIL.__version__}; {nginx_version()}",
    ]
    return lines + [version(t.key) for t in tools if t.key in PEERS]


def report(
    bench: Bench, destinations: list[tuple[str, Path]], startup: str, profile: list[str]
) -> list[str]:
    """Print the results; return them as Markdown lines for ``--append``."""
    args, pics = bench.args, bench.pictures
    mix = ", ".join(f"{c} {f}" for f, c in Counter(p.format for p in pics).most_common())
    head = [*machine(bench.tools), *bench.notes]
    head.append(
        f"{len(pics):,} images (seed {args.seed}: {mix}), {bench.megabytes:.1f} MB, "
        f"{HOSTS} origin hosts = {HOSTS} ports of one nginx ({args.workers} workers); "
        f"{JOBS} downloads at a time per tool (mirror: fetch.jobs = {JOBS}, which binds before "
        f"per_host 6 x {HOSTS} hosts = 120); {args.runs} runs per tool and destination, "
        f"tools alternating, after {args.warmup} untimed warm-up round(s); medians"
    )
    print("\n" + "\n".join(head))
    markdown = [f"\n## mirror fetch vs aria2c, wget2, curl, {head[0]}\n"]
    markdown += [f"- {h}" for h in head[1:]]
    for where, base in destinations:
        kind = fs_type(base)
        why = "the figure for the ratio" if where == "tmpfs" else "file creation is erratic here"
        title = f"Destination {where} ({base}, {kind}; {why})"
        table, verdict = bench.table(where), bench.verdict(where)
        print(f"\n{title}:\n{table}\n" + "\n".join(verdict))
        markdown += ["", f"{title}:", "", table, "", *[f"- {v}" for v in verdict]]
    notes = [
        "CPU s: user+sys of the tool's process and its children (os.wait4; for run --workers "
        "the workers it reaps are included); PostgreSQL CPU s: the postmaster's, its reaped "
        "backends' and live children's (/proc) during the run; CPU ms/image: (CPU s + "
        "PostgreSQL CPU s) / images; nginx CPU s: what the origins' master and workers used "
        "during the run; objects at s: when the first and last store object were written "
        "(mtime), seconds after the command started; all medians",
        "aria2c gets one `out=<name>` line per URL, curl a `url`/`output` pair per URL with "
        "--output-dir, wget2 writes basenames; names are unique and every DEST starts empty",
        'mirror.toml: fetch.jobs = 32, fetch.sources = ["origin"] (a failure never falls back '
        "to the real proxy), network.connect_to hostNN.example:80 -> 127.0.0.1:PORT; all else "
        "default (structure verification, durability crash, the manifest)",
        "aiohttp, bare script: bench/aiohttp_get.py, one session, 32 at a time, bodies written "
        "as they come; no hashing, verification, store or manifest (the one-process floor)",
        *([startup] if startup else []),
    ]
    if bench.db is not None:
        notes.append(
            "mirror run --workers N: the same mirror.toml plus [manifest] url = a fresh database "
            "per run on one local PostgreSQL (tests/pg_server.py's: fsync off, 127.0.0.1), a "
            "fresh copy of the posts per run (run rewrites them in place), both made before the "
            "timed command; queue.* defaults (poll_interval 1 s); each worker runs fetch.jobs "
            "= 32 sources at once"
        )
    again = shlex.join(["python", "bench/fetch.py", *args.argv])
    commands = [again, *bench.commands.values(), shlex.join(bench.origins.nginx.command())]
    print("\n" + "\n".join([*notes, *profile]))
    print("\ncommands:\n" + "\n".join(f"  {c}" for c in commands))
    markdown += ["", *[f"- {n}" for n in notes]]
    if profile:
        markdown += ["", "```text", *profile, "```"]
    if bench.problems:
        markdown.append(f"\n**{len(bench.problems)} problems (see the run's stderr)**")
    return [*markdown, "", "```sh", *commands, "```", ""]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (``--smoke``: N=50, 1 run, no warm-up, tmpfs only)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=2000, help="generated images (default 2000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool and destination")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument(
        "--tools", default="mirror,aria2c,wget2,curl,aiohttp", help="comma-separated subset"
    )
    parser.add_argument("--tmpfs", type=Path, default=Path("/dev/shm"), help="a tmpfs folder")
    parser.add_argument("--disk", type=Path, default=Path("/var/tmp"), help="an on-disk folder")
    parser.add_argument("--no-disk", action="store_true", help="the tmpfs destination only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="nginx workers")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run at most")
    parser.add_argument("--smoke", action="store_true", help="50 images, 1 run, tmpfs only")
    parser.add_argument("--profile", type=Path, help="then profile one mirror run (py-spy raw)")
    parser.add_argument("--append", type=Path, help="append the results in Markdown to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.n, args.runs, args.warmup, args.no_disk = 50, 1, 0, True
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Generate, serve, measure, report; return 0 when every run succeeded."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks run
    started = time.monotonic()
    folder, pictures = images(args.n, args.seed)
    print(f"{len(pictures)} images in {folder} ({time.monotonic() - started:.1f} s)", flush=True)
    notes = []
    if not args.tmpfs.is_dir():  # a container without /dev/shm: the figure is not tmpfs's
        notes.append(f"{args.tmpfs} does not exist: the 'tmpfs' destination is the temp folder")
        args.tmpfs = Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="mirror-bench-fetch-", dir=args.tmpfs))
    destinations = [("tmpfs", root)]
    if not args.no_disk:
        disk = Path(tempfile.mkdtemp(prefix="mirror-bench-fetch-", dir=args.disk))
        destinations.append(("disk", disk))
    origins = Origins(root / "nginx", folder, HOSTS, workers=args.workers)
    bench = Bench(args, root, pictures, origins, notes=notes)
    profile: list[str] = []
    startup, status = "", 0
    try:
        origins.start()
        bench.prepare()
        bench.run_all(destinations)
        startup = bench.startup()
        if args.profile and bench.tools and bench.tools[0].key == "mirror":
            command = bench.tools[0].argv(root / "profiled")
            profile = profile_mirror(command, args.profile, root / "py-spy.log", args.timeout)
    except KeyboardInterrupt:
        bench.problems.append("interrupted")
        status = 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        bench.problems.append(f"stopped early: {exc}")
    finally:
        origins.stop()
        if bench.db is not None:
            bench.db.stop()  # by the postmaster's pid
        bench.problems += [f"nginx: {p}" for p in origins.problems]
        for _, path in [] if args.keep else destinations:
            shutil.rmtree(path, ignore_errors=True)
    markdown = report(bench, destinations, startup, profile)
    for problem in bench.problems:
        print(f"*** PROBLEM: {problem.splitlines()[0]}", file=sys.stderr)
    if args.append:
        with args.append.open("a", encoding="utf-8") as out:
            out.write("\n".join(markdown))
    return status or (1 if bench.problems else 0)


if __name__ == "__main__":
    raise SystemExit(main())
