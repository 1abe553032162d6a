"""
Measure mirror on a generated 100,000-post archive: scan speed, the first run, the no-op re-run.

One command, everything on 127.0.0.1, deterministic from ``--seed``. The archive (posts in the
aggregator's shapes, see bench/posts.py, and their images) is generated once into
``/tmp/mirror-bench-archive-<seed>-<posts>/`` and reused while its posts are intact. Then:

- scan: ``mirror scan --json`` over every post on one core, and over disjoint folders in one
  process per core at once (mirror scan has no --jobs), MB/s and posts/s; BeautifulSoup's
  html.parser tree builder and ``mirror scan`` over the same sample of posts, for a ratio;
- first run: ``mirror run`` on a hard-linked copy of the posts against a local origin serving
  every image under its real host name (``--connect-to``): wall time, images/s, peak RSS;
- re-run: ``mirror run`` on the unchanged posts, ``--reruns`` times: median wall time, peak RSS,
  and proof that nothing was fetched (the origin's request count) or written (posts' bytes,
  sizes, mtimes and inodes; the summary's unchanged count).

    python bench/archive.py                          # 100,000 posts, 20,000 images
    python bench/archive.py --smoke                  # 300 posts: does it all work?
    python bench/archive.py --append BENCHMARKS.md --json summary.json

Exit status 0 when every run and check succeeded (a missed speed target is reported, not an
error), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from children import COMMANDS, SCRIPTS, Child, origin, origin_count, run_children, show
from nginx import HOST
from posts import CORPUS_MEAN, CORPUS_MEDIAN, HOSTS

from cache import Corpus, corpus, fingerprint, hardlink_tree, shards

TARGET_SCAN, TARGET_RERUN, TARGET_RSS = 20.0, 10.0, 250.0  # MB/s per core, s, MB
PEER = r"""
import sys
from pathlib import Path
from bs4 import BeautifulSoup
for path in sorted(p for p in Path(sys.argv[1]).rglob("*.md") if p.is_file()):
    BeautifulSoup(path.read_bytes().decode("utf-8", "surrogateescape"), "html.parser")
"""
SCRIPTS[PEER] = "<archive.PEER>"
SUMMARY = re.compile(
    r"mirror: (?P<posts>\d+) posts(?: \((?P<unchanged>\d+) unchanged since the last run\))?, "
    r"(?P<refs>\d+) references: (?P<statuses>[^;]*); (?P<rewritten>\d+) posts rewritten; "
    r"(?P<mb>[\d.]+) MB fetched"
)


@dataclass(slots=True)
class Row:
    """One line of the results table."""

    metric: str
    value: str
    target: str = ""
    ok: bool | None = None


class Bench:
    """The measurements, in order; rows for the table, problems for the exit status."""

    def __init__(self, args: argparse.Namespace, data: Corpus) -> None:
        self.args, self.data = args, data
        self.load = os.getloadavg()[0]
        self.digest = mirror_sources()[1]
        self.work = Path(tempfile.mkdtemp(prefix="work-", dir=data.root))
        self.rows: list[Row] = []
        self.problems: list[str] = []
        self.facts: dict[str, Any] = {}
        self.mirror = [sys.executable, "-m", "mirror"]
        self.config = ""

    def row(self, metric: str, value: str, target: str = "", ok: bool | None = None) -> None:
        self.rows.append(Row(metric, value, target, ok))

    def check(self, child: Child, what: str) -> None:
        if child.status != 0:
            self.problems.append(f"{what} exited {child.status}: {child.stderr.strip()[-2000:]}")

    def scan(self) -> None:
        """One core, then one process per core over disjoint folders; MB/s and posts/s."""
        meta, mb = self.data.meta, self.data.meta["bytes"] / 1e6
        wall, (child,) = run_children(
            [[*self.mirror, "scan", "--json", str(self.data.posts)]], self.work, 3600
        )
        self.check(child, "mirror scan")
        self.facts["scan_1"] = {"seconds": wall, "mb_per_s": mb / wall}
        self.row("scan, 1 core: MB/s", f"{mb / wall:.1f}", f">= {TARGET_SCAN:.0f}",
                 mb / wall >= TARGET_SCAN)  # fmt: skip
        self.row("scan, 1 core: posts/s", f"{meta['posts'] / wall:,.0f}")
        self.row("scan, 1 core: wall s / peak RSS MB", f"{wall:.1f} / {child.rss_mb:.0f}")
        cores = os.cpu_count() or 1
        groups = shards(meta["folders"], cores)
        commands = [
            [*self.mirror, "scan", "--json", *(str(self.data.posts / f) for f in group)]
            for group in groups
        ]
        wall, children = run_children(commands, self.work, 3600)
        for child in children:
            self.check(child, "mirror scan (one of the parallel ones)")
        per_core = mb / wall / len(groups)
        self.facts["scan_all"] = {"processes": len(groups), "seconds": wall, "mb_per_s": mb / wall}
        self.row(f"scan, {len(groups)} processes: MB/s (sum)", f"{mb / wall:.1f}")
        self.row(f"scan, {len(groups)} processes: MB/s per core", f"{per_core:.1f}",
                 f">= {TARGET_SCAN:.0f}", per_core >= TARGET_SCAN)  # fmt: skip
        self.row(f"scan, {len(groups)} processes: posts/s", f"{meta['posts'] / wall:,.0f}")

    def peer(self) -> None:
        """
        BeautifulSoup(html.parser) and mirror scan, each in its own process, on one sample.

        Each process's startup (imports; measured on an empty folder) is also taken off its
        wall time, so the ratio compares parsing alone.
        """
        sample, empty = self.data.root / "sample", self.work / "empty"
        empty.mkdir()
        files, total, _digest = fingerprint(sample, content=False)
        mb = total / 1e6
        walls = {}
        for name, command in (
            ("bs4", [sys.executable, "-c", PEER]),
            ("mirror", [*self.mirror, "scan", "--json"]),
        ):
            start, (child,) = run_children([[*command, str(empty)]], self.work, 600)
            self.check(child, f"{name} on an empty folder")
            wall, (child,) = run_children([[*command, str(sample)]], self.work, 3600)
            self.check(child, f"{name} on the sample")
            walls[name] = (wall, max(wall - start, 1e-9), start)
        self.facts["peer"] = {"posts": files, "mb": mb, "walls": walls}
        label = f"sample of {files:,} posts ({mb:.1f} MB)"
        for name, title in (("bs4", "bs4 html.parser"), ("mirror", "mirror scan")):
            wall, net, start = walls[name]
            self.row(f"{label}: {title} MB/s (without {start:.2f} s startup)",
                     f"{mb / wall:.1f} ({mb / net:.1f})")  # fmt: skip
        ratio, net_ratio = (walls["bs4"][i] / walls["mirror"][i] for i in (0, 1))
        self.row("mirror scan speed / bs4 tree builder's (without startup)",
                 f"{ratio:.2f}x ({net_ratio:.2f}x)")  # fmt: skip

    def jobs(self) -> None:
        """The first run against the local origin, then the no-op re-runs."""
        posts, store = self.work / "posts", self.work / "store"
        hardlink_tree(self.data.posts, posts)
        config = self.work / "config.toml"
        with origin(self.data.root / "origin") as port:
            connect = ", ".join(f'"{h}:80:{HOST}:{port}"' for h in HOSTS)
            # Only the origin: a reference it lacked must fail here, not go to the internet.
            self.config = (f'[fetch]\nsources = ["origin"]\n[store]\npath = "{store}"\n'
                           f"[network]\nconnect_to = [{connect}]\n")  # fmt: skip
            config.write_text(self.config, encoding="utf-8")
            run = [*self.mirror, "run", "--config", str(config), str(posts)]
            wall, (first,) = run_children([run], self.work, 7200)
            self.check(first, "the first mirror run")
            requests = origin_count(port)
            summary = self.summary(first, "the first mirror run")
            images = self.data.meta["distinct_images"]
            self.facts["first_run"] = {"seconds": wall, "rss_mb": first.rss_mb,
                                       "requests": requests, **summary}  # fmt: skip
            self.row("first run: wall s", f"{wall:.1f}")
            refs = f"{summary.get('refs', '?')} ({summary.get('statuses', '?')})"
            self.row("first run: references (statuses)", refs, "all mirrored",
                     summary.get("statuses") == f"{summary.get('refs')} mirrored")  # fmt: skip
            self.row("first run: posts rewritten", str(summary.get("rewritten", "?")))
            self.row("first run: images/s (distinct images / wall)", f"{images / wall:,.0f}")
            self.row("first run: posts/s", f"{self.data.meta['posts'] / wall:,.0f}")
            self.row("first run: origin requests / distinct images", f"{requests} / {images}",
                     "equal", requests == images)  # fmt: skip
            self.row("first run: peak RSS MB", f"{first.rss_mb:.0f}", f"< {TARGET_RSS:.0f}",
                     first.rss_mb < TARGET_RSS)  # fmt: skip
            before = fingerprint(posts, content=True)
            reruns = []
            for n in range(self.args.reruns):
                wall, (child,) = run_children([run], self.work, 600)
                self.check(child, f"re-run {n + 1}")
                reruns.append((wall, child, self.summary(child, f"re-run {n + 1}")))
            fetched = origin_count(port) - requests
        after = fingerprint(posts, content=True)
        self.rerun_rows(reruns, fetched, before == after)

    def rerun_rows(self, reruns: list[tuple[float, Child, dict[str, Any]]], fetched: int,
                   same: bool) -> None:  # fmt: skip
        walls = [w for w, _c, _s in reruns]
        median, rss = statistics.median(walls), max(c.rss_mb for _w, c, _s in reruns)
        unchanged = [int(s.get("unchanged") or 0) for _w, _c, s in reruns]
        posts = self.data.meta["posts"]
        self.facts["rerun"] = {"seconds": walls, "median": median, "rss_mb": rss,
                               "fetched": fetched, "posts_unchanged_on_disk": same,
                               "summary_unchanged": unchanged}  # fmt: skip
        self.row(f"re-run x{len(walls)}: median wall s", f"{median:.2f}",
                 f"< {TARGET_RERUN:.0f}", median < TARGET_RERUN)  # fmt: skip
        self.row("re-run: all walls s", " / ".join(f"{w:.2f}" for w in walls))
        self.row("re-run: peak RSS MB", f"{rss:.0f}", f"< {TARGET_RSS:.0f}", rss < TARGET_RSS)
        self.row("re-run: origin requests", str(fetched), "0", fetched == 0)
        self.row("re-run: posts bytes/size/mtime/inode unchanged", "yes" if same else "NO",
                 "yes", same)  # fmt: skip
        self.row("re-run: summary's unchanged posts", " / ".join(map(str, unchanged)),
                 str(posts), all(u == posts for u in unchanged))  # fmt: skip
        if fetched:
            self.problems.append(f"the re-runs made {fetched} requests to the origin")
        if not same:
            self.problems.append("the re-runs changed posts on disk")
        if any(u != posts for u in unchanged):
            self.problems.append(f"the re-runs' summaries say {unchanged} unchanged, not {posts}")

    def summary(self, child: Child, what: str) -> dict[str, Any]:
        """The closing summary line of a mirror run, as numbers where they are."""
        found = SUMMARY.search(child.stderr)
        if found is None:
            self.problems.append(f"{what}: no summary line in: {child.stderr.strip()[-500:]}")
            return {}
        fields = {k: v for k, v in found.groupdict().items() if v is not None}
        return {k: int(v) if v.isdigit() else v for k, v in fields.items()}


def mirror_sources() -> tuple[Path | None, str]:
    """Where the mirror package is, and a digest of its ``*.py`` (which code was measured)."""
    spec = importlib.util.find_spec("mirror")
    package = Path(spec.origin).parent if spec and spec.origin else None
    digest = hashlib.sha256()
    for source in sorted(package.glob("*.py")) if package else []:
        digest.update(source.read_bytes())
    return package, digest.hexdigest()[:12]


def machine(folder: Path, digest: str) -> list[str]:
    """Describe the date, the machine, the disk holding ``folder`` and the tools' versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    df = subprocess.run(["df", "-h", str(folder)], capture_output=True, text=True, timeout=30)
    disk = " ".join(df.stdout.splitlines()[-1].split()) if df.returncode == 0 else "?"
    package, now = mirror_sources()
    if now != digest:
        now = f"{digest} at the start, {now} at the end: mirror changed during the run"
    version = subprocess.run([sys.executable, "-m", "mirror", "--version"], capture_output=True,
                             text=True, timeout=60).stdout.strip()  # fmt: skip
    return [
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"{os.cpu_count()} CPUs, {model[1] if model else '?'}, Linux {platform.release()}",
        f"disk (df -h {folder}): {disk}",
        f"Python {platform.python_version()}, {version} ({package}, *.py sha256 {now})",
    ]


def table(rows: list[Row]) -> str:
    """An aligned Markdown table: metric, value, target, ok?"""
    cells = [["metric", "value", "target", "ok?"]]
    for r in rows:
        cells.append(
            [r.metric, r.value, r.target, "" if r.ok is None else "ok" if r.ok else "MISSED"]
        )
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    cells.insert(
        1, ["-" * widths[0], "-" * (widths[1] - 1) + ":", "-" * widths[2], "-" * widths[3]]
    )
    return "\n".join(
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line (``--smoke``: 300 posts, 150 images, a sample of 100)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--images", type=int, help="distinct images (default: posts / 5)")
    parser.add_argument("--sample", type=int, default=5000, help="posts for the bs4 comparison")
    parser.add_argument("--reruns", type=int, default=3, help="no-op re-runs (median)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="300 posts, everything small")
    parser.add_argument("--append", type=Path, help="append the results in Markdown to FILE")
    parser.add_argument("--json", type=Path, help="write a JSON summary to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.smoke:
        args.posts, args.sample = 300, 100
    if args.images is None:
        args.images = max(50, args.posts // 5)
    if args.posts < 1 or args.images < 1 or args.sample < 1 or args.reruns < 1:
        parser.error("--posts, --images, --sample and --reruns must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Generate or reuse the archive, measure, report; return 0 when nothing failed."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop servers
    data, generated = corpus(args.posts, args.images, args.sample, args.seed)
    bench = Bench(args, data)
    meta = data.meta
    gen = f"generated in {generated:.1f} s" if generated is not None else "reused from the cache"
    bench.row(f"archive: posts ({gen})", f"{meta['posts']:,}")
    bench.row("archive: MB of posts", f"{meta['bytes'] / 1e6:.1f}")
    bench.row("archive: median / mean post bytes", f"{meta['median']:,.0f} / {meta['mean']:,.0f}",
              f"~ {CORPUS_MEDIAN:,} / {CORPUS_MEAN:,} (real corpus)")  # fmt: skip
    images = f"{meta['distinct_images']:,} ({meta['image_bytes'] / 1e6:.1f})"
    bench.row("archive: distinct images (MB) on hosts", f"{images} on {len(HOSTS)}")
    try:
        bench.scan()
        bench.peer()
        bench.jobs()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        bench.problems.append(f"stopped early: {exc}")
    finally:
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
    head = machine(data.root, bench.digest)
    head.append(
        f"load average (1 min) at the start {bench.load:.2f}, at the end {os.getloadavg()[0]:.2f}"
        " (other work on the machine skews results)"
    )
    head.append(
        f"archive: {data.root} (seed {args.seed}, {args.posts} posts, {args.images} images)"
    )
    rows = table(bench.rows)
    invoked = shlex.join(sys.argv[1:] if argv is None else argv)
    commands = [f"python bench/archive.py {invoked}".rstrip(), f"ARCHIVE={data.root}"]
    commands += dict.fromkeys(show(c, data.root) for c in COMMANDS)
    if bench.config:
        config = bench.config.replace(str(data.root), "$ARCHIVE")
        commands += [
            "# config.toml (a new port each run):",
            *(f"#   {c}" for c in config.splitlines()),
        ]
    print("\n".join([*head, "", rows, "", "commands:", *(f"  {c}" for c in commands)]))
    for problem in bench.problems:
        print(f"\n*** PROBLEM: {problem}", file=sys.stderr)
    if args.append:
        markdown = [f"\n## mirror on a {args.posts:,}-post archive, {head[0]}\n"]
        markdown += [*(f"- {h}" for h in head[1:]), "", rows, ""]
        if bench.problems:
            markdown.append(f"- **{len(bench.problems)} problems (see the run's stderr)**")
        markdown += ["```sh", *commands, "```", ""]
        with args.append.open("a", encoding="utf-8") as out:
            out.write("\n".join(markdown))
    if args.json:
        facts = {"archive": {k: v for k, v in meta.items() if k != "folders"}, **bench.facts}
        facts["problems"] = bench.problems
        args.json.write_text(json.dumps(facts, indent=2, ensure_ascii=False), encoding="utf-8")
    return 1 if bench.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
