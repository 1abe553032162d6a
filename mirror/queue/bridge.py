"""
What a worker hands the downloader while it still takes the synchronous manifest.

The :class:`~mirror.downloader.Downloader` takes the async store, and still reads
``manifest.host_profile`` synchronously (and writes ``record_host_profile`` from a thread). A
worker holds the async :class:`~mirror.manifest.base.Manifest`, so :class:`ManifestFacade`
carries those two calls over: host profiles are read ahead by the task
(:meth:`ManifestFacade.load`) and written from the thread the downloader uses.
:func:`make_downloader` is the one place that builds the worker's Downloader; the facade goes
when the downloader takes the async manifest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from mirror.config import Config
from mirror.downloader import Downloader, HostGuard
from mirror.fetch import Fetcher
from mirror.manifest.base import Manifest
from mirror.manifest.sqlite import Manifest as SyncManifest
from mirror.store.base import ObjectStore


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

    The store is the worker's own (the downloader streams into its staging area); the
    per-run breaker is off: the shared one (``guard``) stands in for it.
    """
    manifest = cast(SyncManifest, profiles)
    return Downloader(config, fetcher, store, manifest, clock, breaker=False, guard=guard)
