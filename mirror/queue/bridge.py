"""
What a worker hands the downloader while it still takes the synchronous store and manifest.

The :class:`~mirror.downloader.Downloader` calls ``store.put`` and ``manifest.host_profile``
synchronously (the seam's callers are being switched to the async protocols). A worker holds
the async :class:`~mirror.store.base.ObjectStore` and :class:`~mirror.manifest.base.Manifest`,
so these two facades carry the calls over: ``put`` runs on a thread (the downloader hops to
one when ``durability`` is ``"power"``, which the facade reports) and waits there for the async
store on the worker's loop; host profiles are read ahead by the task (:meth:`ManifestFacade.load`)
and written from the thread the downloader uses. :func:`make_downloader` is the one place that
builds the worker's Downloader. When the downloader takes the async store (h-spine2), it passes
``store`` itself, and ``StoreFacade`` and the ``LocalStore`` branch go; ``ManifestFacade`` stays
while the downloader takes the synchronous manifest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from mirror.config import Config
from mirror.downloader import Downloader, HostGuard
from mirror.fetch import Fetcher
from mirror.manifest.base import Manifest
from mirror.manifest.sqlite import Manifest as SyncManifest
from mirror.models import StoredObject
from mirror.store import LocalStore
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


def make_downloader(
    config: Config,
    fetcher: Fetcher,
    store: ObjectStore,
    profiles: ManifestFacade,
    guard: HostGuard,
    clock: Callable[[], float] = time.time,
) -> Downloader:
    """
    Build the worker's downloader over the async store and manifest (the one place that knows
    which store and manifest types the Downloader takes).

    A local folder is written as ``mirror run`` writes it (the synchronous store, on the loop
    or a thread as its durability says); another store through :class:`StoreFacade`. The
    per-run breaker is off: the shared one (``guard``) stands in for it.
    """
    loop = asyncio.get_running_loop()
    local: Any = (
        LocalStore(Path(config.store.path), config.store.durability)
        if config.store.scheme == "file"
        else StoreFacade(store, loop)
    )
    manifest = cast(SyncManifest, profiles)
    return Downloader(
        config, fetcher, cast(LocalStore, local), manifest, clock, breaker=False, guard=guard
    )
