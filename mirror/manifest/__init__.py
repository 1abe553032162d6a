"""
The manifest: what every source URL became, which objects exist, and how posts were rewritten.

:class:`~mirror.manifest.base.Manifest` (in :mod:`mirror.manifest.base`) is the async seam;
:func:`open_manifest` builds the backend ``[manifest] url`` names: the embedded SQLite file
(:mod:`mirror.manifest.sqlite_async` over :mod:`mirror.manifest.sqlite`) or a PostgreSQL
database (:mod:`mirror.manifest.postgres` and its ``postgres_*`` parts, which alone import
psycopg). Each backend's class is composed of mixins by job (``*_sources``, ``*_posts``,
``*_serve``); its schema and migrations stay in the backend's main module. The synchronous
:class:`Manifest` of :mod:`mirror.manifest.sqlite` is what the commands not moved yet use.
:func:`dry_run_manifest` is what a command that must write nothing reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mirror.config import Config
from mirror.manifest import base
from mirror.manifest.base import (
    CursorExpired,
    GalleryObject,
    NegativeEntry,
    ReportRows,
    ReportSource,
)
from mirror.manifest.sqlite import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    STATUSES,
    Attempt,
    CatalogRow,
    Manifest,
    ObjectRow,
    PostState,
    RecordedSpan,
    Rewrite,
    SourceResult,
    SourceRow,
    load_attempts,
    manifest_path,
)
from mirror.manifest.sqlite_async import SQLiteManifest

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "STATUSES",
    "Attempt",
    "CatalogRow",
    "CursorExpired",
    "GalleryObject",
    "Manifest",
    "NegativeEntry",
    "ObjectRow",
    "PostState",
    "RecordedSpan",
    "ReportRows",
    "ReportSource",
    "Rewrite",
    "SQLiteManifest",
    "SourceResult",
    "SourceRow",
    "dry_run_manifest",
    "load_attempts",
    "manifest_exists",
    "manifest_name",
    "manifest_path",
    "open_manifest",
]


def open_manifest(
    config: Config, *, readonly: bool = False, clock: Callable[[], float] = time.time
) -> base.Manifest:
    """
    Build the manifest ``config.manifest.url`` names; enter it (``async with``) before use.

    Args:
        config: the tree; ``manifest.url`` picks the backend, ``store`` the default file.
        readonly: open for reading only (no migration, no writes).
        clock: what "now" is, for timestamps, pins and leases.

    Returns:
        A :class:`SQLiteManifest` for "" (``<store folder>/manifest.sqlite3``), a plain path or
        ``sqlite:///abs/path``; a :class:`~mirror.manifest.postgres.PostgresManifest` for
        ``postgresql://`` or ``postgres://``.
    """
    settings = config.manifest
    if settings.scheme == "postgresql":
        from mirror.manifest.postgres import PostgresManifest  # psycopg only for PostgreSQL

        return PostgresManifest(settings.url, readonly=readonly, clock=clock)
    path = config.manifest_file
    assert path is not None  # None only for PostgreSQL, handled above
    return SQLiteManifest(path, durability=config.store.durability, readonly=readonly, clock=clock)


def manifest_name(config: Config) -> str:
    """Return the manifest ``config`` names, for messages: its path, or its URL sans password."""
    if config.manifest.scheme == "postgresql":
        from mirror.manifest.postgres_conn import redact

        return redact(config.manifest.url)
    return str(config.manifest_file)


async def manifest_exists(config: Config) -> bool:
    """
    Tell whether the manifest ``config`` names was ever created, without creating it.

    A SQLite manifest exists when its file does; a PostgreSQL one when its database holds the
    schema (an unreachable server raises, as opening would).

    Raises:
        ManifestError: the PostgreSQL server cannot be reached.
    """
    if config.manifest.scheme == "postgresql":
        from mirror.manifest.postgres import schema_exists

        return await schema_exists(config.manifest.url)
    path = config.manifest_file
    return path is not None and path.is_file()


async def dry_run_manifest(
    config: Config, *, clock: Callable[[], float] = time.time
) -> base.Manifest:
    """
    Build the manifest a dry run reads: ``config``'s, read-only, when it exists; else an empty
    in-memory SQLite one, so that nothing is created on either backend (not even a file).

    Enter it (``async with``) before use. The in-memory one takes writes and forgets them.

    Raises:
        ManifestError: the PostgreSQL server cannot be reached.
    """
    if await manifest_exists(config):
        return open_manifest(config, readonly=True, clock=clock)
    # ":memory:" is SQLite's name for no file at all.
    return SQLiteManifest(Path(":memory:"), clock=clock)
