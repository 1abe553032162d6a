"""
The manifest: what every source URL became, which objects exist, and how posts were rewritten.

Today one backend, a SQLite file (:mod:`mirror.manifest.sqlite`).
"""

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

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "STATUSES",
    "Attempt",
    "CatalogRow",
    "Manifest",
    "ObjectRow",
    "PostState",
    "RecordedSpan",
    "Rewrite",
    "SourceResult",
    "SourceRow",
    "load_attempts",
    "manifest_path",
]
