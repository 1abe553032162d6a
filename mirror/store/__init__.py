"""
The object store: where verified images live, by content hash.

Today one backend, a local folder (:mod:`mirror.store.local`).
"""

from mirror.atomic import atomic_write
from mirror.store.local import LocalStore, ObjectStore, local_url

__all__ = ["LocalStore", "ObjectStore", "atomic_write", "local_url"]
