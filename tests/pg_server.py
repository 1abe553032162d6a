"""
A PostgreSQL server for tests: Debian's initdb and pg_ctl in a temp folder, on 127.0.0.1.

The server is started once per session as the ``postgres`` user (initdb refuses root) with
trust authentication for the user ``mirror``, listening on 127.0.0.1 at a free port and on a
Unix socket in its own folder, with fsync off (a test database need not survive a power cut).
Each test that asks for ``pg_url`` gets a database of its own, dropped afterwards. The server
is stopped with ``pg_ctl stop`` and, should that fail, by the pid in ``postmaster.pid``. Tests
skip with a message saying so only when the binaries are missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

USER = "mirror"
_STARTUP = 60  # seconds pg_ctl may wait for the server to accept: a bound, not a wait


@dataclasses.dataclass
class PgServer:
    """The running server: where it listens and its data folder."""

    host: str
    port: int
    data: Path

    def url(self, database: str = "postgres") -> str:
        """Return the URL of ``database`` for the test user (no password: trust)."""
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"


def _bin_folder() -> Path | None:
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    for folder in sorted(versions, key=lambda p: int(p.parent.name), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run a server command as the postgres user when running as root (as CI does)."""
    command = args if os.getuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        command, stdin=subprocess.DEVNULL, capture_output=True, check=False, **kwargs
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(pg_ctl: Path, data: Path) -> None:
    result = _as_postgres([str(pg_ctl), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"])
    pid_file = data / "postmaster.pid"
    if result.returncode != 0 and pid_file.is_file():
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Debian's PostgreSQL in a temp folder on 127.0.0.1 at a free port, for the whole session."""
    folder = _bin_folder()
    if folder is None:
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin")
    # The postgres user must reach the folder: pytest's tmp folders are root's alone.
    root = Path(tempfile.mkdtemp(prefix="mirror-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.getuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    started = False
    try:
        made = _as_postgres(
            [str(folder / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8",
             "--no-sync", "--no-instructions"],
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.decode(errors='replace')}")
        for _attempt in range(3):  # another process may take the free port first
            port = _free_port()
            options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=200"
            run = _as_postgres(
                [str(folder / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
                 "-t", str(_STARTUP), "-o", options, "start"],
            )  # fmt: skip
            if run.returncode == 0:
                started = True
                break
        if not started:
            log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {run.stderr.decode()} {log[-2000:]}")
        yield PgServer("127.0.0.1", port, data)
    finally:
        if started or (data / "postmaster.pid").exists():
            _stop(folder / "pg_ctl", data)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh database on the test server, dropped (with its sessions) afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_server.url(name)
    finally:
        with psycopg.connect(pg_server.url(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
