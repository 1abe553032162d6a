"""
The SQLite manifest's row records, and the rules that merge a result into a sources row.

PostgreSQL's backend shares them: the same records, the same merge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

STATUSES = ("mirrored", "failed", "blocked", "skipped")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one URL: which source (origin, proxy...), how it ended, and what happened."""

    source: str
    url: str
    outcome: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SourceResult:
    """What one run learned about one source URL; a mirrored result names its object."""

    source: str
    status: str
    reason: str | None = None
    sha256: str | None = None
    ext: str | None = None
    size: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    fetched_from: str | None = None
    attempts: tuple[Attempt, ...] = ()
    etag: str | None = None
    last_modified: str | None = None
    attempted_at: float | None = None
    via: str | None = None
    next_attempt: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.status == "mirrored" and (
            self.sha256 is None or self.ext is None or self.size is None
        ):
            raise ValueError(f"a mirrored result needs sha256, ext and size: {self.source}")


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A ``sources`` row joined with its object."""

    source: str
    status: str
    reason: str | None
    sha256: str | None
    ext: str | None
    size: int | None
    format: str | None
    width: int | None
    height: int | None
    fetched_from: str | None
    attempts: tuple[Attempt, ...]
    etag: str | None
    last_modified: str | None
    first_seen: float
    last_attempt: float | None
    next_attempt: float | None
    failures: int
    via: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """One source URL as ``serve`` sees it: ``status`` is ``served`` for an open-mode row."""

    source: str
    status: str
    sha256: str | None
    ext: str | None
    size: int | None
    format: str | None


@dataclass(frozen=True, slots=True)
class PostState:
    """What a post looked like when last scanned or rewritten."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str
    scanned_at: float
    rewritten_at: float | None
    next_check: float | None = None
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedSpan:
    """One replacement of a rewrite, with the source URL it was made for."""

    offset: int
    old: str
    new: str
    source: str | None


@dataclass(frozen=True, slots=True)
class Rewrite:
    """One generation of rewriting a post, spans in the order they were recorded."""

    post: str
    generation: int
    before_sha256: str | None
    after_sha256: str | None
    created: float
    spans: tuple[RecordedSpan, ...]


@dataclass(frozen=True, slots=True)
class ObjectRow:
    """An ``objects`` row with the ``sources`` and ``served`` rows that name it."""

    sha256: str
    ext: str
    size: int
    sources: tuple[str, ...]
    served: tuple[str, ...]


def attempt_json(attempt: Attempt) -> dict[str, str | None]:
    """Return one attempt as the manifest and the JSON report write it."""
    return {
        "source": attempt.source,
        "url": attempt.url,
        "outcome": attempt.outcome,
        "detail": attempt.detail,
    }


def load_attempts(text: str) -> tuple[Attempt, ...]:
    """Read the manifest's ``attempts`` JSON (rows from before details have none)."""
    return tuple(
        Attempt(a["source"], a["url"], a["outcome"], a.get("detail")) for a in json.loads(text)
    )


def _dump_attempts(attempts: Iterable[Attempt]) -> str:
    items = [attempt_json(a) for a in attempts]
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def _row(values: Sequence[Any]) -> SourceRow:
    attempts = load_attempts(values[10])
    fields = list(values)
    fields[10] = attempts
    return SourceRow(*fields)


# On a failed refresh of a mirrored source, these stay as they were: the object still stands.
_KEPT: tuple[str, ...] = ("status", "sha256", "ext", "size", "format", "width", "height")
_KEPT += ("fetched_from", "via", "etag", "last_modified")
_COLUMNS: tuple[str, ...] = ("source", "status", "reason", "sha256", "fetched_from", "via")
_COLUMNS += ("attempts",)
_COLUMNS += ("etag", "last_modified", "first_seen", "last_attempt", "next_attempt", "failures")
# _merge has already folded in the stored row, so replacing it whole is correct.
_MARKS = ", ".join("?" * len(_COLUMNS))
_UPSERT_SQL = f"INSERT OR REPLACE INTO sources ({', '.join(_COLUMNS)}) VALUES ({_MARKS})"


def _merge(old: SourceRow | None, new: SourceResult, now: float) -> SourceRow | None:
    """Return the row that results from ``new`` landing on ``old``, or None to keep ``old``."""
    if old is not None and new.status == "skipped":
        return None
    failures = old.failures if old is not None else 0
    if new.status == "mirrored":
        failures = 0
    elif new.status == "failed":
        failures += 1
    keep = old is not None and old.status == "mirrored" and new.status != "mirrored"
    base: SourceRow | SourceResult = old if keep and old is not None else new
    return SourceRow(
        source=new.source,
        reason=new.reason,
        attempts=new.attempts,
        first_seen=old.first_seen if old is not None else now,
        last_attempt=None if new.status == "skipped" else (new.attempted_at or now),
        next_attempt=new.next_attempt,
        failures=failures,
        **{name: getattr(base, name) for name in _KEPT},
    )


def _upsert_values(row: SourceRow) -> tuple[Any, ...]:
    values = {name: getattr(row, name) for name in _COLUMNS}
    values["attempts"] = _dump_attempts(row.attempts)
    return tuple(values.values())
