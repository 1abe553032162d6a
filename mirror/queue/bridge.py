"""
What a worker hands the downloader while it still takes the synchronous store and manifest.

The :class:`~mirror.downloader.Downloader` calls ``store.put`` and ``manifest.host_profile``
synchronously (the seam's callers are being switched to the async protocols). A worker holds
the async :class:`~mirror.store.base.ObjectStore` and :class:`~mirror.manifest.base.Manifest`,
so these two facades carry the calls over: ``put`` runs on a thread (the downloader hops to
one when ``durability`` is ``"power"``, which the facade reports) and waits there for the async
store on the worker's loop; host profiles are read ahead by the task (:meth:`ManifestFacade.load`)
and written from the thread the downloader uses. Once the downloader takes the async protocols
this module goes.
"""

from __future__ import annotations

import asyncio

from mirror.manifest.base import Manifest
from mirror.models import StoredObject
from mirror.store.base import ObjectStore
from mirror.verify.formats import KINDS

MIME = {ext: mime for ext, mime in KINDS.values()}


class StoreFacade:
    """``put`` of the synchronous store over an async one (called from a thread only)."""

    # Makes the downloader call put() from a thread, where waiting on the loop is allowed.
    durability = "power"

    def __init__(self, store: ObjectStore, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop

    def put(self, data: bytes, sha256: str, ext: str) -> StoredObject:
        """Store ``data`` through the async store; an object already there is not written."""
        mime = MIME.get(ext, "application/octet-stream")
        future = asyncio.run_coroutine_threadsafe(
            self.store.put(data, sha256, ext, mime), self.loop
        )
        return future.result()


class ManifestFacade:
    """The synchronous manifest's host-profile calls, over an async manifest."""

    def __init__(self, manifest: Manifest, loop: asyncio.AbstractEventLoop) -> None:
        self.manifest = manifest
        self.loop = loop
        self._profiles: dict[str, str | None] = {}

    async def load(self, host: str) -> None:
        """Read the profile that last worked for ``host``, before the downloader asks."""
        if host not in self._profiles:
            self._profiles[host] = await self.manifest.host_profile(host)

    def host_profile(self, host: str) -> str | None:
        """Return what :meth:`load` read."""
        return self._profiles.get(host)

    def record_host_profile(self, host: str, profile: str | None) -> None:
        """Remember the profile that worked (called from a thread, as the downloader does)."""
        self._profiles[host] = profile
        asyncio.run_coroutine_threadsafe(
            self.manifest.record_host_profile(host, profile), self.loop
        ).result()
