"""
The PostgreSQL server bench/fetch.py's `mirror run --workers N` rows need, started and measured.

The server is the test suite's (tests/pg_server.py, imported, not copied): Debian's initdb and
pg_ctl in a temp folder, as the postgres user, trust authentication for ``mirror``, 127.0.0.1 on a
free port, fsync off. The benchmark stops it itself by the pid in ``postmaster.pid`` (SIGINT,
PostgreSQL's fast shutdown, then SIGKILL past a bounded wait) before the suite's own cleanup runs.
Every measured run gets a database of its own (:meth:`Postgres.fresh_database`, untimed).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Generator
from pathlib import Path

import psycopg

sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))  # last: shadows nothing
import pg_server  # tests/ is no package: found through the path above

STOP_SECONDS = 30.0


def available() -> bool:
    """Return whether Debian's PostgreSQL server binaries are installed."""
    return pg_server._bin_folder() is not None


class Postgres:
    """One PostgreSQL server for the benchmark's life: fresh databases, its CPU seconds, stop."""

    def __init__(self) -> None:
        """Prepare (nothing runs until :meth:`start`)."""
        self._fixture: Generator[pg_server.PgServer] | None = None
        self.server: pg_server.PgServer | None = None
        self.databases = 0

    def start(self) -> None:
        """
        Initialise and start the server (the suite's fixture, driven by hand).

        Raises:
            RuntimeError: the binaries are missing, or initdb or pg_ctl failed.
        """
        if not available():
            raise RuntimeError("PostgreSQL server binaries not found in /usr/lib/postgresql")
        self._fixture = pg_server.pg_server.__wrapped__()  # type: ignore[attr-defined]
        self.server = next(self._fixture)

    @property
    def pid(self) -> int | None:
        """Return the postmaster's pid (None when it is not running)."""
        if self.server is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.server.data / "postmaster.pid").read_text().split()[0])
        return None

    def fresh_database(self) -> str:
        """Create an empty database; return its URL (for ``[manifest] url``)."""
        assert self.server is not None
        self.databases += 1
        name = f"bench_{self.databases}_{secrets.token_hex(4)}"
        with psycopg.connect(self.server.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.server.url(name)

    def cpu_seconds(self) -> float:
        """
        Return the user+sys CPU seconds the server has used so far (Linux /proc).

        The postmaster's own time, its reaped backends' (cutime, cstime: a run's sessions end
        with it) and its live children's; a backend still ending when this is read may be
        missed once.
        """
        pid = self.pid
        if pid is None:
            return 0.0
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue  # it ended meanwhile
            # fields[1] is ppid; utime, stime, cutime, cstime are fields[11:15]
            if int(stat.parent.name) == pid:
                ticks += sum(int(f) for f in fields[11:15])
            elif int(fields[1]) == pid:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Stop the server by its pid (fast shutdown, then SIGKILL); safe to call twice."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + STOP_SECONDS
            while _alive(pid) and time.monotonic() < deadline:  # bounded by the deadline
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._fixture is not None:
            self._fixture.close()  # the suite's cleanup: its folder goes
            self._fixture, self.server = None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes (the postmaster is no child of ours: pg_ctl forked it).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    return False
