"""
The object store: where verified images live, by content hash.

:class:`ObjectStore` (in :mod:`mirror.store.base`) is the async seam; :func:`open_store` builds
the backend that ``[store] url`` names: a local folder (:mod:`mirror.store.local`) or an
S3-compatible bucket (:mod:`mirror.store.s3`, which alone imports aiobotocore). Every caller
gets its store here and uses only the protocol; no module outside this package imports a
backend.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mirror.atomic import atomic_write
from mirror.config import Config
from mirror.errors import ConfigError
from mirror.store.base import ObjectInfo, ObjectStore, Staged, local_url
from mirror.store.local import FolderStore

__all__ = [
    "FolderStore",
    "ObjectInfo",
    "ObjectStore",
    "Staged",
    "atomic_write",
    "local_url",
    "open_store",
]


def default_staging() -> Path:
    """Return where an S3 store stages bodies when ``store.staging`` is unset."""
    # Per user: the folder is private (0700) and a shared temp dir has many users.
    return Path(tempfile.gettempdir()) / f"mirror-staging-{os.getuid()}"


def open_store(config: Config) -> ObjectStore:
    """
    Build the store ``config.store`` names; enter it (``async with``) before use.

    Args:
        config: the tree; ``store.url`` (or the deprecated ``store.path``) picks the backend.

    Returns:
        A :class:`FolderStore` for ``./folder``, ``/abs`` or ``file:///abs``, an
        :class:`~mirror.store.s3.S3Store` for ``s3://bucket/prefix``.

    Raises:
        ConfigError: the URL's scheme is not one of those.
    """
    store = config.store
    if store.scheme == "file":
        return FolderStore(Path(store.path), store.durability)
    if store.scheme == "s3":
        from mirror.store.s3 import S3Store  # aiobotocore only for s3://

        staging = Path(store.staging) if store.staging else default_staging()
        return S3Store(store.bucket, store.prefix, store.s3, staging)
    raise ConfigError("store.url", f"unknown scheme in {store.location!r}")
