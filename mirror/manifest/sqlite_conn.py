"""
What the SQLite manifest's query mixins need from the class that owns the connection.

:class:`~mirror.manifest.sqlite.Manifest` composes the mixins of ``sqlite_sources``,
``sqlite_posts`` and ``sqlite_serve`` and owns the connection, its lock and its error mapping;
:class:`Connected` names that part, so each mixin type-checks on its own.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

_CHUNK = 500  # under SQLite's oldest host-parameter limit (999)


class Connected(Protocol):
    """The connection side of the SQLite manifest, as the query mixins use it."""

    path: Path
    _clock: Callable[[], float]
    _lock: threading.RLock

    @property
    def conn(self) -> sqlite3.Connection:
        """Return the open connection."""
        ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """Group writes into one transaction."""
        ...

    def _errors(self, doing: str) -> AbstractContextManager[None]: ...

    def _snapshot(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...


# The mixins inherit the protocol only for the type checker: at run time the composed class
# supplies all of it, and a Protocol base would bring its machinery into the manifest class.
if TYPE_CHECKING:
    Base = Connected
else:
    Base = object
