"""
Measure `mirror serve` hits and cold misses against nginx serving the same store on 127.0.0.1.

One command builds everything in a temporary folder: N generated JPEGs (one close to 91 KB, the
hit target) behind a local origin, a store filled the real way by `mirror fetch` through the
cors.zfour.workers.dev wrapper, nginx (2 workers, sendfile, open_file_cache) aliasing
``/mirror/`` to the store's objects, and `mirror serve --workers W` on the same store. Every URL
is checked once (200 and the right bytes), then wrk loads each scenario, peers alternating,
``--runs`` times; the table gives medians. Beside the one node on the store's SQLite manifest
behind nginx, two nodes over one PostgreSQL manifest (bench/pg.py's server; the same rows plus
fillers up to ``--catalog-sources``, bench/serve_nodes.py) behind one nginx that balances them;
with both running, ``--catalog-new`` sources are committed one at a time and timed until every
node serves them (the catalog refresh figure). Last, `mirror serve --open` on an empty store
gets every URL once (cold misses, 32 at a time).

    python bench/serve.py                          # 200 images, 3 runs of 10 s per scenario
    python bench/serve.py --smoke                  # 20 images, 1 s runs: does it all work?
    python bench/serve.py --append BENCHMARKS.md   # also append the results in Markdown
    python bench/serve.py --nginx-only             # the nginx half alone
    python bench/serve.py --no-nodes               # without PostgreSQL: no 2-node rows

Exit status 0 when every run and check succeeded, 1 otherwise (each problem is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import http.client
import math
import os
import platform
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import serve_nodes
from nginx import HOST, Nginx, free_port, stop_group
from nginx import version as nginx_version
from pg import Postgres
from pg import available as postgres_available
from run_job import connect_to_args, generate, origin, source_url
from yarl import URL

HOSTS = 20
MAIN_BYTES = 91_000
TARGET_RATIO, TARGET_P99 = 0.35, 0.020
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
CYCLE_LUA = """\
local paths, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""
COMMANDS: list[str] = []  # every external command, in order, for the report


def run(command: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run and remember a command, bounded by ``timeout``, without proxy variables."""
    COMMANDS.append(shlex.join(command))
    return subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=timeout, env=child_env()
    )


def child_env() -> dict[str, str]:
    """Return this environment without proxy variables: every request here stays on loopback."""
    return {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}


@dataclass(frozen=True, slots=True)
class Wrk:
    """What one wrk run printed (times in seconds)."""

    rps: float
    p50: float
    p99: float
    failures: int
    output: str


def parse_wrk(output: str, status: int = 0) -> Wrk:
    """
    Parse ``wrk --latency`` output.

    ``failures`` counts non-2xx/3xx responses and socket errors (connect, read, write, timeout),
    plus one when no request completed or wrk exited with a nonzero ``status``.
    """

    def find(pattern: str) -> list[str]:
        found = re.search(pattern, output, re.MULTILINE)
        return list(found.groups()) if found else []

    def seconds(pattern: str) -> float:
        value = find(pattern + r"\s+([\d.]+)(us|ms|s|m|h)$")
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
        return float(value[0]) * scale[value[1]] if value else math.nan

    errors = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    bad = sum(map(int, [*find(r"Non-2xx or 3xx responses: (\d+)"), *errors]))
    done = bool(find(r"^\s+([1-9]\d*) requests in "))
    rps = find(r"^Requests/sec:\s+([\d.]+)")
    return Wrk(
        rps=float(rps[0]) if rps else 0.0,
        p50=seconds(r"^\s+50%"),
        p99=seconds(r"^\s+99%"),
        failures=bad + (not done) + (status != 0),
        output=output,
    )


@dataclass(slots=True)
class Scenario:
    """One wrk target: a single path, or (``cycle``) round-robin over a file of paths."""

    label: str
    port: int
    path: str
    cycle: Path | None = None
    baseline: Scenario | None = None  # the nginx scenario this one is compared to
    results: list[Wrk] = field(default_factory=list)

    def load(self, args: argparse.Namespace, duration: int) -> Wrk:
        """Run wrk once (bounded) and parse it."""
        command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s"]
        command += ["--latency", f"http://{HOST}:{self.port}{self.path}"]
        if self.cycle is not None:
            command[-1:-1] = ["-s", str(self.cycle.parent / "cycle.lua")]
            command += ["--", str(self.cycle)]
        done = run(command, timeout=duration + 60)
        return parse_wrk(done.stdout + done.stderr, done.returncode)


class MirrorServe:
    """`python -m mirror serve` in its own session, logging to a file, stopped with SIGTERM."""

    def __init__(self, store: Path, name: str, options: list[str]) -> None:
        self.name = f"mirror serve ({name})"
        self.log = store.parent / f"serve-{name}.log"
        self.port = free_port()
        self.command = [sys.executable, "-m", "mirror", "serve", "--store", str(store)]
        self.command += ["--host", HOST, "--port", str(self.port), *options]
        self.process: subprocess.Popen[bytes] | None = None
        self.problems: list[str] = []

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait (bounded) until /healthz answers 200."""
        COMMANDS.append(shlex.join(self.command))
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=out, env=child_env(), start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while get(self.port, "/healthz", timeout=2)[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} did not become healthy:\n{tail}")
            time.sleep(0.1)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, bounded wait, then SIGKILL to the whole group; note anything unclean."""
        if self.process is None:
            return
        started = time.monotonic()
        self.problems += stop_group(self.process, signal.SIGTERM, grace)
        if time.monotonic() - started > 5:
            self.problems.append(f"took {time.monotonic() - started:.1f} s to stop on SIGTERM")
        if self.process.returncode not in (0, -signal.SIGTERM):
            self.problems.append(f"exited with status {self.process.returncode} on SIGTERM")
        self.process = None


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """GET http://127.0.0.1:port/path, no proxy; status 0 when the connection failed."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    except OSError:
        return 0, {}, b""
    finally:
        conn.close()


def check(port: int, paths: list[str], shas: list[str]) -> list[str]:
    """GET each path once; return a line per response that is not 200 with the right bytes."""
    bad = []
    for path, sha in zip(paths, shas, strict=True):
        status, headers, body = get(port, path)
        if status != 200 or hashlib.sha256(body).hexdigest() != sha:
            bad.append(f"GET :{port}{path}: status {status}, {len(body)} bytes, {headers}")
    return bad


def fill_store(root: Path, store: Path, origin_port: int) -> list[tuple[str, str, str]]:
    """Run `mirror fetch` on the generated posts; return (source, sha256, ext) of mirrored rows."""
    (root / "empty.toml").write_text("# defaults only: no ./config.toml may leak in\n")
    command = [sys.executable, "-m", "mirror", "fetch", "-q", "--config", str(root / "empty.toml")]
    command += ["--store", str(store), *connect_to_args(HOSTS, origin_port), str(root / "posts")]
    done = run(command, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"mirror fetch exited {done.returncode}:\n{done.stderr[-3000:]}")
    with sqlite3.connect(f"file:{store / 'manifest.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT s.source, o.sha256, o.ext FROM sources s JOIN objects o ON o.sha256 = s.sha256"
            " WHERE s.status = 'mirrored' ORDER BY s.source"
        ).fetchall()
    return [(str(s), str(h), str(e)) for s, h, e in rows]


async def cold_misses(port: int, paths: list[str], shas: list[str], limit: int) -> str:
    """Request every path once, ``limit`` at a time; describe misses/s, p99 and outcomes."""
    gate = asyncio.Semaphore(limit)

    async def one(session: aiohttp.ClientSession, path: str, sha: str) -> tuple[float, str]:
        async with gate:
            started = time.perf_counter()
            try:
                async with session.get(URL(f"http://{HOST}:{port}{path}", encoded=True)) as r:
                    body = await r.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                return time.perf_counter() - started, type(exc).__name__
            right = r.status == 200 and hashlib.sha256(body).hexdigest() == sha
            return time.perf_counter() - started, "ok" if right else f"http-{r.status}"

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        done = await asyncio.gather(*(one(session, p, s) for p, s in zip(paths, shas, strict=True)))
    wall = time.perf_counter() - started
    latencies = sorted(d[0] for d in done)
    p99 = latencies[math.ceil(0.99 * len(latencies)) - 1]  # nearest rank
    outcomes = Counter(d[1] for d in done)
    return (
        f"cold misses (--open, empty store, {limit} concurrent): {len(done) / wall:.1f} misses/s,"
        f" p99 {ms(p99)} ms, {outcomes['ok']}/{len(done)} 200 with the right bytes"
        + ("" if outcomes["ok"] == len(done) else f" - FAILED: {dict(outcomes)}")
    )


def machine() -> list[str]:
    """Describe the date, the machine and the tools' versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False, timeout=30)
    nginx = nginx_version()
    return [
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"{os.cpu_count()} CPUs, {model[1] if model else '?'}, Linux {platform.release()}",
        f"{nginx}; {wrk.stdout.partition(' Copyright')[0].strip()}",
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}",
    ]


def ms(seconds: float) -> str:
    """Format seconds as milliseconds."""
    return f"{seconds * 1000:.2f}"


def table(scenarios: list[Scenario], runs: int) -> str:
    """Return an aligned Markdown table: medians, req/s range, ratio to nginx in the same run."""
    rows = [["scenario", "req/s", "(min-max)", "p50 ms", "p99 ms", "x nginx", "failed", "targets"]]
    for sc in scenarios:
        rps = sorted(r.rps for r in sc.results) or [math.nan]
        p50 = statistics.median([r.p50 for r in sc.results] or [math.nan])
        p99 = statistics.median([r.p99 for r in sc.results] or [math.nan])
        ratio, verdict = "", ""
        if sc.baseline is not None and sc.baseline.results:
            pairs = zip(sc.results, sc.baseline.results, strict=False)
            value = statistics.median(m.rps / n.rps if n.rps else 0.0 for m, n in pairs)
            ratio = f"{value:.2f}"
            verdict = "ok" if value >= TARGET_RATIO and p99 < TARGET_P99 else "MISSED"
        failed = f"{sum(r.failures > 0 for r in sc.results)}/{runs}"
        span = f"({rps[0]:,.0f}-{rps[-1]:,.0f})"
        row = [f"{statistics.median(rps):,.0f}", span, ms(p50), ms(p99), ratio, failed, verdict]
        rows.append([sc.label, *row])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rows.insert(1, ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])])
    lines = [[row[0].ljust(widths[0])] for row in rows]
    for line, row in zip(lines, rows, strict=True):
        line += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


@dataclass(slots=True)
class Bench:
    """The generated world: folders, servers, URL lists, scenarios, and what went wrong."""

    args: argparse.Namespace
    root: Path
    problems: list[str] = field(default_factory=list)
    origin_port: int = field(default_factory=free_port)
    servers: list[MirrorServe | Nginx] = field(default_factory=list)
    scenarios: list[Scenario] = field(default_factory=list)
    cold: str = ""
    db: Postgres | None = None  # the server of the nodes' manifest, when they run
    nodes_url: str = ""  # the nodes' manifest
    nodes: list[MirrorServe] = field(default_factory=list)
    catalog: list[str] = field(default_factory=list)  # the catalog refresh figure's lines
    objects: list[str] = field(default_factory=list)  # /mirror/<ab>/<sha>.<ext>, by source
    queries: list[str] = field(default_factory=list)  # /?<source>, same order
    shas: list[str] = field(default_factory=list)
    main: int = 0  # index of the ~91 KB hit target
    load: str = field(default_factory=lambda: " ".join(f"{x:.2f}" for x in os.getloadavg()))

    def prepare(self) -> None:
        """Generate the images and posts, fill the store with `mirror fetch`, list the URLs."""
        args, root = self.args, self.root
        generate(root, args.n, HOSTS, args.seed, main_bytes=MAIN_BYTES)
        rows = fill_store(root, root / "store", self.origin_port)
        if len(rows) != args.n:
            self.problems.append(f"mirror fetch mirrored {len(rows)} of {args.n} sources")
        self.objects = [f"/mirror/{h[:2]}/{h}.{e}" for _, h, e in rows]
        self.queries, self.shas = [f"/?{src}" for src, _, _ in rows], [h for _, h, _ in rows]
        (root / "nginx-paths.txt").write_text("\n".join(self.objects) + "\n")
        (root / "mirror-paths.txt").write_text("\n".join(self.queries) + "\n")
        (root / "cycle.lua").write_text(CYCLE_LUA)
        self.main = self.queries.index(f"/?{source_url(0, HOSTS)}")

    def hits(self, serve: bool) -> None:
        """Start nginx (and mirror serve), check every URL once, run wrk on each scenario."""
        args, root, at = self.args, self.root, self.main
        obj, main = self.objects[at], self.queries[at].removeprefix("/?")
        size = (root / "store" / "objects" / obj.removeprefix("/mirror/")).stat().st_size
        print(f"store: {len(self.objects)} objects; main hit {main} -> {obj} ({size:,} bytes)")
        short, count = f"{obj[:19]}....jpg ({size // 1000} KB)", len(self.objects)
        nginx = Nginx(root / "nginx", free_port(), {"/mirror/": root / "store" / "objects"})
        self.servers.append(nginx)
        nginx.start()
        COMMANDS.append(shlex.join(nginx.command()))
        self.problems += check(nginx.port, self.objects, self.shas)
        n_one = Scenario(f"nginx  {short}", nginx.port, obj)
        n_all = Scenario(f"nginx  /mirror/... x{count}", nginx.port, "/", root / "nginx-paths.txt")
        self.scenarios = [n_one, n_all]
        if serve:
            mirror = MirrorServe(root / "store", "hits", ["--workers", str(args.workers)])
            self.servers.append(mirror)
            mirror.start()
            if (ready := get(mirror.port, "/readyz")[0]) != 200:
                self.problems.append(f"mirror serve /readyz answered {ready} (/healthz 200)")
            paths = [*self.objects, *self.queries, f"/?url={quote(main, safe='')}"]
            paths.append(f"/?{quote(main, safe='')}")
            shas = [*self.shas, *self.shas, self.shas[at], self.shas[at]]
            self.problems += check(mirror.port, paths, shas)
            m_all = root / "mirror-paths.txt"
            self.scenarios[1:1] = [
                Scenario(f"mirror {short}", mirror.port, obj, None, n_one),
                Scenario(f"mirror /?{main}", mirror.port, f"/?{main}", None, n_one),
            ]
            self.scenarios.append(
                Scenario(f"mirror /?... x{count}", mirror.port, "/", m_all, n_all)
            )
            accel = ["--accel-redirect", "/objects/"]
            one = self.node("front", ["--workers", str(args.workers), *accel])
            front = self.front("front", [one])
            self.problems += check(
                front.port, [f"/?{main}", *self.queries], [self.shas[at], *self.shas]
            )
            self.scenarios += [
                Scenario(f"nginx+mirror /?{main}", front.port, f"/?{main}", None, n_one),
                Scenario(f"nginx+mirror /?... x{count}", front.port, "/", m_all, n_all),
            ]
            nodes = self.nodes = self.start_nodes(accel) if args.nodes else []
            if nodes:
                pair = self.front("front-nodes", nodes)
                self.problems += check(
                    pair.port, [f"/?{main}", *self.queries], [self.shas[at], *self.shas]
                )
                label = f"nginx+{len(nodes)} pg nodes"
                self.scenarios += [
                    Scenario(f"{label} /?{main}", pair.port, f"/?{main}", None, n_one),
                    Scenario(f"{label} /?... x{count}", pair.port, "/", m_all, n_all),
                ]
        for sc in self.scenarios if args.warmup else []:
            sc.load(args, args.warmup)
        for number in range(args.runs):
            for sc in self.scenarios if number % 2 == 0 else self.scenarios[::-1]:
                sc.results.append(sc.load(args, args.duration))
                if sc.results[-1].failures:
                    self.problems.append(f"FAILED RUN {sc.label}:\n{sc.results[-1].output}")
        if self.nodes:
            self.catalog_refresh()
        for server in self.servers:
            server.stop()

    def node(self, name: str, options: list[str]) -> MirrorServe:
        """Start a `mirror serve` on the store with ``options``."""
        mirror = MirrorServe(self.root / "store", name, options)
        self.servers.append(mirror)
        mirror.start()
        return mirror

    def start_nodes(self, accel: list[str]) -> list[MirrorServe]:
        """
        Start PostgreSQL, copy the store's rows into a fresh database (fillers up to
        ``--catalog-sources``) and start two nodes over it, with half the workers each.
        """
        args = self.args
        if not postgres_available():
            print("PostgreSQL server binaries not found: no 2-node rows", file=sys.stderr)
            return []
        self.db = Postgres()
        self.db.start()
        url = self.nodes_url = self.db.fresh_database()
        rows = serve_nodes.store_rows(self.root / "store" / "manifest.sqlite3")
        took = asyncio.run(serve_nodes.fill(url, rows, max(args.catalog_sources, len(rows))))
        print(f"PostgreSQL manifest: {args.catalog_sources:,} sources recorded in {took:.1f} s")
        config = serve_nodes.write_config(self.root / "nodes.toml", url)
        options = ["--config", str(config), "--workers", str(max(1, args.workers // 2)), *accel]
        return [self.node(f"pg-{number}", options) for number in (1, 2)]

    def catalog_refresh(self) -> None:
        """Time ``--catalog-new`` commits until every PostgreSQL node serves them."""
        name = self.objects[self.main].rsplit("/", 1)[1]  # an object the store has
        size = (self.root / "store" / "objects" / name[:2] / name).stat().st_size
        target = serve_nodes.Object(self.shas[self.main], name.rsplit(".", 1)[1], size)
        ports = [node.port for node in self.nodes]
        figures = serve_nodes.catalog_figures(self.nodes_url, ports, self.args.catalog_new, target)
        self.catalog = asyncio.run(figures)

    def front(self, name: str, mirrors: list[MirrorServe]) -> Nginx:
        """The production layout: nginx in front, mirror serve looking /?<url> up and handing
        the file back with X-Accel-Redirect (deploy/nginx.conf's arrangement); several nodes
        share the requests round-robin."""
        objects = self.root / "store" / "objects"
        extra = f"""
        location /objects/ {{ internal; alias "{objects}/"; }}
        location = / {{
            proxy_pass http://mirror_serve;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}"""
        servers = " ".join(f"server {HOST}:{mirror.port};" for mirror in mirrors)
        upstream = f"    upstream mirror_serve {{ {servers} keepalive 64; }}"
        nginx = Nginx(self.root / name, free_port(), {}, extra=extra, http_extra=upstream)
        self.servers.append(nginx)
        nginx.start()
        COMMANDS.append(shlex.join(nginx.command()))
        return nginx

    def cold_misses(self) -> None:
        """Start `mirror serve --open` on an empty store and request every URL once."""
        config = self.root / "cold.toml"
        config.write_text(
            "[network]\nallow_private = true\n"
            f"allowed_ports = [80, 443, {self.origin_port}]\n[serve]\nopen = true\n"
        )
        options = ["--workers", str(self.args.workers), "--open", "--config", str(config)]
        options += connect_to_args(HOSTS, self.origin_port)
        mirror = MirrorServe(self.root / "cold", "cold", options)
        self.servers.append(mirror)
        mirror.start()
        misses = cold_misses(mirror.port, self.queries, self.shas, self.args.connections)
        self.cold = asyncio.run(misses)
        mirror.stop()
        if "FAILED" in self.cold:
            self.problems.append(self.cold)

    def report(self) -> list[str]:
        """Print the results; return them as Markdown lines for --append."""
        args, rows = self.args, table(self.scenarios, self.args.runs)
        wrk = f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency"
        head = [*machine(), f"load average before the run: {self.load} (other work skews results)"]
        head += [f"{args.n} JPEGs (seed {args.seed}), {wrk}, {args.runs} runs, medians"]
        tail = [
            f"targets: mirror hits >= {TARGET_RATIO}x nginx req/s in the same run, p99 < "
            f"{ms(TARGET_P99)} ms (wrk's percentiles are not corrected for coordinated omission)"
        ]
        if self.nodes:
            tail.append(
                f"nginx+mirror: one node on the store's SQLite manifest, --workers {args.workers};"
                f" nginx+{len(self.nodes)} pg nodes: {len(self.nodes)} nodes over one PostgreSQL"
                f" manifest of {args.catalog_sources:,} sources, --workers"
                f" {max(1, args.workers // 2)} each, nginx round-robin; both X-Accel-Redirect"
            )
        tail += self.catalog
        tail += [self.cold] if self.cold else []
        commands = list(dict.fromkeys(COMMANDS))
        print("\n".join([*head, "", rows, "", *tail, "", "commands:"]))
        print("\n".join(f"  {c}" for c in commands))
        markdown = [f"\n## mirror serve vs nginx, {head[0]}\n", *[f"- {h}" for h in head[1:]]]
        markdown += ["", rows, "", *[f"- {t}" for t in tail]]
        if self.problems:
            markdown.append(f"- **{len(self.problems)} problems (see the run's stderr)**")
        return [*markdown, "", "```sh", *commands, "```", ""]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line (``--smoke``: N=20, 1-second runs without warm-up, a small
    PostgreSQL manifest)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=200, help="generated images (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded wrk first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--smoke", action="store_true", help="N=20, 1-second runs, 2,000 sources, 5 new"
    )
    parser.add_argument("--nginx-only", action="store_true", help="skip mirror serve")
    parser.add_argument(
        "--no-nodes", dest="nodes", action="store_false", help="skip the PostgreSQL nodes"
    )
    parser.add_argument(
        "--catalog-sources", type=int, default=200_000, help="the nodes' manifest's size"
    )
    parser.add_argument("--catalog-new", type=int, default=100, help="sources timed to visible")
    parser.add_argument("--append", type=Path, help="append the results in Markdown to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.duration, args.warmup = 20, 1, 0
        args.catalog_sources, args.catalog_new = 2000, 5
    return args


def main(argv: list[str] | None = None) -> int:
    """Build, measure, report; return 0 when nothing failed."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop servers
    bench = Bench(args, Path(tempfile.mkdtemp(prefix="mirror-bench-serve-")))
    serve = not args.nginx_only
    if serve and run([sys.executable, "-m", "mirror", "serve", "--help"]).returncode != 0:
        bench.problems.append("`python -m mirror serve --help` fails: mirror serve is missing")
        serve = False
    try:
        with origin(bench.root / "origin", bench.origin_port):
            COMMANDS.append(f"python -c <run_job.SERVER> {bench.root}/origin {bench.origin_port}")
            bench.prepare()
            bench.hits(serve)
            if serve:
                bench.cold_misses()
    except (RuntimeError, OSError, subprocess.SubprocessError, *serve_nodes.FAILURES) as exc:
        bench.problems.append(f"stopped early: {exc}")
    finally:
        for server in bench.servers:
            server.stop()
            bench.problems += [f"{server.name}: {p}" for p in server.problems]
        if bench.db is not None:
            bench.db.stop()
        if not args.keep:
            shutil.rmtree(bench.root, ignore_errors=True)
    markdown = bench.report()
    for problem in bench.problems:
        print(f"\n*** PROBLEM: {problem}", file=sys.stderr)
    if args.append:
        with args.append.open("a", encoding="utf-8") as out:
            out.write("\n".join(markdown))
    return 1 if bench.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
