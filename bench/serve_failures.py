"""
Measure the memory of `mirror serve --open` fed N distinct failing URLs (issue #13, row 5).

One command builds everything in a temporary folder: an origin on 127.0.0.1 in its own process
that answers 404 to every request and counts them, `mirror serve --open` on an empty store
reaching it through ``network.connect_to`` for every host name, and a client in this process
sending N distinct URLs of about --url-bytes characters over --hosts host names, --concurrency
at a time. The server's resident set size is read from /proc twice a second; the report gives
its peak (VmHWM, summed over the owner and its workers), the RSS after each quarter of the URLs,
the request rate, and every outcome. Each answer must be 404 with reason http-404, and the origin
must have seen each URL exactly once.

    python bench/serve_failures.py                 # 200,000 URLs of 8,000 bytes, limit 200 MB
    python bench/serve_failures.py --smoke         # 3,000 URLs: does it all work?
    python bench/serve_failures.py --append BENCHMARKS.md

It runs whatever `python -m mirror` imports, so PYTHONPATH=<another checkout> measures that one.
Exit status 0 when every answer was right and the peak RSS stayed under --limit-mb, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from nginx import HOST, free_port, stop_group
from yarl import URL

MB = 1_000_000
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
# The origin: one 404 per request, keep-alive, and the number of requests on SIGTERM.
ORIGIN = r"""
import asyncio, signal, sys

seen = 0

async def answer(reader, writer):
    global seen
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            seen += 1
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 5\r\n\r\ngone\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]), limit=1 << 16)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("listening", flush=True)
    await stop.wait()
    server.close()
    print(seen, flush=True)

asyncio.run(main())
"""
COMMANDS: list[str] = []


def child_env() -> dict[str, str]:
    """Return this environment without proxy variables: every request here stays on loopback."""
    return {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}


def status_kb(pid: int, field_name: str) -> int:
    """Read one ``kB`` field (VmRSS, VmHWM) of /proc/<pid>/status; 0 when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def family(pid: int) -> list[int]:
    """The process and its live children (the owner and its workers)."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return pids


@dataclass(slots=True)
class Sampler:
    """Samples the summed RSS of a process family twice a second in a thread, until stopped."""

    pid: int
    peak_kb: int = 0
    hwm_kb: dict[int, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def now_kb(self) -> int:
        """Return the family's RSS now, remembering every member's own peak (VmHWM)."""
        total = 0
        for pid in family(self.pid):
            total += status_kb(pid, "VmRSS")
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), status_kb(pid, "VmHWM"))
        self.peak_kb = max(self.peak_kb, total)
        return total

    def run(self) -> None:
        """Sample until :attr:`stop` is set (bounded by the caller setting it)."""
        while not self.stop.wait(0.5):
            self.now_kb()


class Process:
    """A child in its own session with its output in a file, stopped with SIGTERM."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name, self.command, self.log = name, command, log
        COMMANDS.append(shlex.join(command))
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                command, stdout=out, stderr=out, env=child_env(), start_new_session=True
            )

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        """Wait (bounded) until ``text`` appears in the output."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> list[str]:
        """SIGTERM, bounded wait, SIGKILL of the group if needed; return what went wrong."""
        problems = [f"{self.name}: {p}" for p in stop_group(self.popen, signal.SIGTERM, 30.0)]
        if self.popen.returncode not in (0, -signal.SIGTERM):
            problems.append(f"{self.name} exited with status {self.popen.returncode}")
        return problems


def until_ready(serve: Process, port: int, workers: int, timeout: float = 60.0) -> None:
    """Wait (bounded) until /healthz answers and, with workers, all of them have started."""
    processes = 1 + workers if workers > 1 else 1
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
        except OSError:
            ok = False
        finally:
            conn.close()
        # The banner comes before the workers listen; a worker may still be starting.
        if ok and len(family(serve.popen.pid)) == processes:
            return
        if serve.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{serve.name} did not become healthy")
        time.sleep(0.1)


def source(index: int, hosts: int, length: int) -> str:
    """The index-th distinct URL, padded to about ``length`` characters."""
    head = f"http://h{index % hosts}.fail.example/missing/{index}/"
    return head + "p" * max(0, length - len(head) - 4) + ".jpg"


async def load(
    args: argparse.Namespace, port: int, sampler: Sampler
) -> tuple[Counter[str], list[str], float]:
    """Send every URL once, ``args.concurrency`` at a time; return outcomes, RSS marks, seconds."""
    outcomes: Counter[str] = Counter()
    marks: list[str] = []
    quarters = {args.n * q // 4: f"{25 * q}%" for q in (1, 2, 3, 4)}
    next_index = 0
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(index: int) -> None:
            url = URL(
                f"http://{HOST}:{port}/?{source(index, args.hosts, args.url_bytes)}", encoded=True
            )
            try:
                async with session.get(url) as response:
                    await response.read()
                    outcomes[
                        f"{response.status} {response.headers.get('X-Mirror-Reason', '-')}"
                    ] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1

        async def worker() -> None:
            nonlocal next_index
            # Bounded: each pass takes the next of the N URLs.
            while next_index < args.n:
                index = next_index
                next_index += 1
                await one(index)
                done = sum(outcomes.values())
                if quarters and done >= min(quarters):
                    label = quarters.pop(min(quarters))
                    rss = await asyncio.to_thread(sampler.now_kb)
                    marks.append(f"{label} {rss / 1000:.0f} MB")

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return outcomes, marks, time.perf_counter() - started


def machine() -> list[str]:
    """Describe the date, the machine and the versions."""
    return [
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
        f"aiohttp {aiohttp.__version__}",
        "load average before the run: " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]


def run(args: argparse.Namespace, root: Path) -> tuple[list[str], list[str]]:
    """Start the origin and the server, load them, stop them; return (report lines, problems)."""
    problems: list[str] = []
    origin_port, serve_port = free_port(), free_port()
    origin = Process(
        "origin", [sys.executable, "-c", ORIGIN, str(origin_port)], root / "origin.log"
    )
    COMMANDS[-1] = f"{sys.executable} -c <bench/serve_failures.py's ORIGIN> {origin_port}"
    config = root / "serve.toml"
    config.write_text(
        "[fetch]\nattempts = 1\n"
        f'[network]\nconnect_to = ["::{HOST}:{origin_port}"]\n'
        "[serve]\nopen = true\n"
    )
    command = [sys.executable, "-m", "mirror", "serve", "--config", str(config)]
    command += ["--store", str(root / "store"), "--host", HOST, "--port", str(serve_port)]
    command += ["--workers", str(args.workers)]
    serve: Process | None = None
    sampler: Sampler | None = None
    lines: list[str] = []
    try:
        origin.wait_for("listening")
        serve = Process("mirror serve", command, root / "serve.log")
        serve.wait_for("serving on")
        until_ready(serve, serve_port, args.workers)
        sampler = Sampler(serve.popen.pid)
        idle = sampler.now_kb()
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        outcomes, marks, seconds = asyncio.run(load(args, serve_port, sampler))
        sampler.now_kb()
        sampler.stop.set()
        thread.join(timeout=10)
        hwm = sum(sampler.hwm_kb.values())
        right = outcomes["404 http-404"]
        lines += [
            f"{args.n:,} distinct URLs of {args.url_bytes:,} bytes over {args.hosts} hosts, "
            f"{args.concurrency} at a time, --workers {args.workers}: {seconds:.1f} s "
            f"({args.n / seconds:,.0f} req/s)",
            f"RSS idle {idle / 1000:.0f} MB; after " + ", ".join(marks),
            f"peak RSS {sampler.peak_kb / 1000:.0f} MB sampled, {hwm / 1000:.0f} MB VmHWM "
            f"(limit {args.limit_mb} MB)",
            f"answers: {dict(outcomes)}",
        ]
        if right != args.n:
            problems.append(f"{args.n - right} answers were not 404 http-404: {dict(outcomes)}")
        if hwm / 1000 >= args.limit_mb:
            problems.append(f"peak RSS {hwm / 1000:.0f} MB is over the {args.limit_mb} MB limit")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        problems.append(f"stopped early: {exc}")
    finally:
        if sampler is not None:
            sampler.stop.set()
        if serve is not None:
            problems += serve.stop()
        problems += origin.stop()
    seen = origin.log.read_text().split()
    fetched = int(seen[-1]) if seen and seen[-1].isdigit() else -1
    lines.append(f"the origin answered {fetched:,} requests")
    if fetched != args.n and not problems:
        problems.append(f"the origin saw {fetched} requests for {args.n} distinct URLs")
    return lines, problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line (``--smoke`` means N=3,000)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=200_000, help="distinct URLs (default 200,000)")
    parser.add_argument("--url-bytes", type=int, default=8000, help="URL length (default 8000)")
    parser.add_argument("--hosts", type=int, default=100, help="host names (default 100)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--limit-mb", type=int, default=200, help="peak RSS allowed (200)")
    parser.add_argument("--smoke", action="store_true", help="N=3,000")
    parser.add_argument("--append", type=Path, help="append the results in Markdown to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n = 3000
    return args


def main(argv: list[str] | None = None) -> int:
    """Build, measure, report; return 0 when nothing failed."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop servers
    root = Path(tempfile.mkdtemp(prefix="mirror-bench-failures-"))
    head = machine()
    try:
        lines, problems = run(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\n".join([*head, "", *lines, "", "commands:", *(f"  {c}" for c in COMMANDS)]))
    for problem in problems:
        print(f"\n*** PROBLEM: {problem}", file=sys.stderr)
    if args.append:
        markdown = [f"\n## mirror serve --open under distinct failing URLs, {head[0]}\n"]
        markdown += [f"- {line}" for line in [*head[1:], *lines]]
        if problems:
            markdown.append(f"- **{len(problems)} problems (see the run's stderr)**")
        markdown += ["", "```sh", *COMMANDS, "```", ""]
        with args.append.open("a", encoding="utf-8") as out:
            out.write("\n".join(markdown))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
