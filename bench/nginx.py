"""
Run Debian's nginx as a production-style static server on loopback, for benchmarks.

Everything nginx writes (config, pid file, error log, temp folders) lives under its own prefix
folder, so it never touches /etc/nginx or /var/log/nginx and runs as any user::

    with Nginx(Path(tmp) / "nginx", port, {"/mirror/": store / "objects"}) as server:
        subprocess.run(["wrk", f"{server.url}/mirror/ab/ab12....jpg"])

The master runs in the foreground (``daemon off``) in its own session, so stopping it (SIGQUIT,
then SIGKILL to its process group after a bounded wait) also ends its workers. The helpers
:func:`free_port`, :func:`wait_listening` and :func:`stop_group` serve other loopback servers too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

NGINX = "/usr/sbin/nginx"
HOST = "127.0.0.1"
TYPES = {
    "image/jpeg": "jpg jpeg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/avif": "avif",
    "image/heif": "heif heic",
}
CONFIG = """\
{user}worker_processes {workers};
daemon off;
pid "{prefix}/nginx.pid";
error_log "{prefix}/logs/error.log" warn;
events {{
    worker_connections {connections};
}}
http {{
    types {{
{types}
    }}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    # One connection lasts the whole run for every peer (aiohttp sets no request limit either).
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    open_file_cache max=10000 inactive=60s;
    open_file_cache_valid 60s;
    open_file_cache_errors on;
    server_tokens off;
    client_body_temp_path "{prefix}/temp/body";
    proxy_temp_path "{prefix}/temp/proxy";
    fastcgi_temp_path "{prefix}/temp/fastcgi";
    uwsgi_temp_path "{prefix}/temp/uwsgi";
    scgi_temp_path "{prefix}/temp/scgi";
{http_extra}
    server {{
        listen {host}:{port} reuseport;
        server_name localhost;
        location = /healthz {{
            return 200 "ok\\n";
        }}
{locations}
{extra}
    }}
}}
"""


def version(binary: str = NGINX) -> str:
    """Return ``nginx -v``'s line, e.g. ``nginx version: nginx/1.22.1``."""
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False, timeout=30)
    return (done.stderr or done.stdout).strip()


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """
    Wait until something accepts connections on 127.0.0.1:``port``.

    Raises:
        RuntimeError: ``process`` exited first, or ``timeout`` seconds went by.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with status {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listened on port {port} within {timeout} s") from None
            time.sleep(0.05)


def stop_group(process: subprocess.Popen[bytes], sig: int, grace: float = 10.0) -> list[str]:
    """
    Stop a process started with ``start_new_session=True``, and whatever it left behind.

    Sends ``sig`` to the process and waits up to ``grace`` seconds; then SIGKILLs its whole
    process group. Returns what went wrong (empty when the process and its group ended cleanly).
    """
    problems: list[str] = []
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            problems.append(f"pid {process.pid} ignored {signal.Signals(sig).name} for {grace} s")
    deadline = time.monotonic() + grace
    # Children of a process that exited may still be finishing; give them the same grace.
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(process.pid):
        problems.append(f"process group {process.pid} outlived its leader; SIGKILLed")
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait(timeout=grace)
    return problems


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Nginx:
    """
    A foreground nginx master with ``workers`` workers serving ``aliases`` on 127.0.0.1:``port``.

    ``aliases`` maps a URL prefix ending in ``/`` to a folder (``location P { alias F/; }``);
    ``connections`` is per worker (over ``ulimit -n`` nginx warns); ``extra`` is inserted verbatim
    into the ``server`` block (more locations, proxy_pass...), ``http_extra`` into ``http``
    (an ``upstream`` block).
    """

    name = "nginx"

    def __init__(
        self,
        prefix: Path,
        port: int,
        aliases: Mapping[str, Path],
        *,
        workers: int = 2,
        connections: int = 1024,
        extra: str = "",
        http_extra: str = "",
        binary: str = NGINX,
        start_timeout: float = 10.0,
    ) -> None:
        self.prefix = prefix
        self.port = port
        self.aliases = dict(aliases)
        self.workers = workers
        self.connections = connections
        self.extra = extra
        self.http_extra = http_extra
        self.binary = binary
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.problems: list[str] = []

    @property
    def url(self) -> str:
        """Return ``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        """Return where the generated nginx.conf is written."""
        return self.prefix / "nginx.conf"

    @property
    def error_log(self) -> Path:
        """Return nginx's own error log."""
        return self.prefix / "logs" / "error.log"

    def command(self) -> list[str]:
        """Return the command line that starts the master (``-e`` covers startup messages)."""
        return [
            self.binary,
            *("-p", str(self.prefix), "-c", str(self.config_path), "-e", str(self.error_log)),
        ]

    def render(self) -> str:
        """Return the nginx.conf text."""
        if any(c in str(p) for p in (self.prefix, *self.aliases.values()) for c in '"\\;{}'):
            raise ValueError("nginx paths must not contain quotes, backslashes, ';' or braces")
        locations = []
        for url_prefix, folder in self.aliases.items():
            if not url_prefix.startswith("/") or not url_prefix.endswith("/"):
                raise ValueError(f"an alias prefix must start and end with '/': {url_prefix!r}")
            locations.append(f'        location {url_prefix} {{ alias "{folder}/"; }}')
        types = "\n".join(f"        {mime} {exts};" for mime, exts in TYPES.items())
        # As root, workers would drop to Debian's www-data, which cannot read a private temp
        # folder; on a loopback benchmark keeping the invoking user is the safer choice.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return CONFIG.format(
            user=user,
            workers=self.workers,
            connections=self.connections,
            prefix=self.prefix,
            types=types,
            host=HOST,
            port=self.port,
            locations="\n".join(locations),
            extra=self.extra,
            http_extra=self.http_extra,
        )

    def start(self) -> None:
        """
        Write the config, test it, start the master and wait until it listens.

        Raises:
            RuntimeError: the config test failed or nginx did not come up; the log says why.
        """
        for sub in ("logs", "temp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render(), encoding="utf-8")
        test = subprocess.run(
            [*self.command(), "-t", "-q"], capture_output=True, text=True, check=False, timeout=30
        )
        if test.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{test.stderr.strip()}")
        self.process = subprocess.Popen(self.command(), start_new_session=True)
        try:
            wait_listening(self.port, self.process, self.start_timeout)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"nginx did not start: {exc}\n{self.log_tail()}") from exc

    def stop(self, grace: float = 10.0) -> None:
        """Stop gracefully (SIGQUIT lets workers finish), then force; safe to call twice."""
        if self.process is not None:
            self.problems += stop_group(self.process, signal.SIGQUIT, grace)
            self.process = None

    def log_tail(self, lines: int = 20) -> str:
        """Return the end of the error log (empty when there is none)."""
        try:
            text = self.error_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
