"""
``mirror sync SRC DST``: copy the objects one store has and another lacks, checking every hash.

SRC and DST are store URLs or folders (``./cache``, ``file:///abs``, ``s3://bucket/prefix``), so
a store moves from a folder to a bucket and back. Both sides are reached through the store
protocol with the ``[store]`` settings of the config (``store.s3`` for any ``s3://`` side, whose
credentials come from the environment or ``~/.aws``, never from config.toml).

DST is listed once; every SRC object it lacks is streamed into DST's staging area while it is
hashed, and committed only when its bytes hash to its name. One whose bytes do not is refused
(counted, listed, exit 1) and never written; one DST holds under the same name with another size
is not mirror's to replace (its name is the hash of bytes it does not hold) and is left alone as a
conflict. ``--dry-run`` lists what would be copied. Only objects are copied, never the manifest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from dataclasses import dataclass, field

from mirror.catalog import mime_for
from mirror.config import Config
from mirror.errors import ExitStatus, StoreError
from mirror.store import ObjectInfo, ObjectStore, open_store

# Objects copied at once: enough to keep a bucket's round trips overlapped.
SYNC_JOBS = 8


@dataclass
class Synced:
    """What ``sync`` copied, found present, refused and would copy."""

    copied: int = 0
    size: int = 0
    present: int = 0
    refused: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def exit_status(self) -> ExitStatus:
        """1 when an object was refused (bad bytes) or its place in DST is taken, else 0."""
        return ExitStatus.INCOMPLETE if self.refused or self.conflicts else ExitStatus.OK

    def lines(self) -> list[str]:
        """One line per object refused, in conflict, or (dry run) to copy (stdout)."""
        return (
            [f"would copy {key}" for key in self.planned]
            + [f"refused  {key}  (its bytes do not hash to its name)" for key in self.refused]
            + [
                f"conflict {key}  (DST has another object there; left alone)"
                for key in self.conflicts
            ]
        )

    def summary(self, src: str, dst: str) -> list[str]:
        """What was done (stderr)."""
        if self.dry_run:
            head = f"sync: {src} -> {dst}: would copy {len(self.planned)} objects"
        else:
            head = f"sync: {src} -> {dst}: copied {self.copied} objects ({self.size} bytes)"
        out = [f"{head}; {self.present} already there"]
        if self.refused:
            out.append(f"  {len(self.refused)} refused: their bytes in SRC are not their name's")
        if self.conflicts:
            out.append(f"  {len(self.conflicts)} left alone: DST holds other bytes under the name")
        return out


def side(config: Config, url: str) -> Config:
    """Return ``config`` with its store at ``url`` (its other ``[store]`` settings kept)."""
    store = dataclasses.replace(config.store, url=url, path="")
    return dataclasses.replace(config, store=store)


async def sync(config: Config, src: str, dst: str, *, dry_run: bool = False) -> Synced:
    """
    Copy into the store ``dst`` every object of the store ``src`` that it lacks.

    Args:
        config: the tree whose ``[store]`` settings (s3, staging, durability) both sides use.
        src: the store to read, as a URL or a folder.
        dst: the store to fill.
        dry_run: only list what would be copied.

    Raises:
        ConfigError: ``src`` or ``dst`` is not a store URL.
        StoreError: a store cannot be listed, read or written.
    """
    result = Synced(dry_run=dry_run)
    async with open_store(side(config, src)) as source, open_store(side(config, dst)) as target:
        there = {(info.sha256, info.ext): info async for info in target.objects()}
        slots = asyncio.Semaphore(SYNC_JOBS)
        running: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None:
                errors.append(task.exception() or StoreError("copy failed"))

        try:
            async for info in source.objects():
                have = there.get((info.sha256, info.ext))
                if have is not None:
                    if have.size == info.size:
                        result.present += 1
                    else:
                        result.conflicts.append(target.key(info.sha256, info.ext))
                    continue
                if dry_run:
                    result.planned.append(source.key(info.sha256, info.ext))
                    continue
                # Bounded: the listing waits while SYNC_JOBS copies are running.
                await slots.acquire()
                if errors:
                    slots.release()
                    break
                task = asyncio.create_task(_copy(source, target, info, slots, result))
                running.add(task)
                task.add_done_callback(done)
        finally:
            # Every copy ends (or is cancelled) before the stores close.
            await asyncio.gather(*running, return_exceptions=True)
        if errors:
            raise errors[0]
    result.refused.sort()
    return result


async def _copy(
    source: ObjectStore,
    target: ObjectStore,
    info: ObjectInfo,
    slots: asyncio.Semaphore,
    result: Synced,
) -> None:
    try:
        async with target.staging() as staged:
            digest = hashlib.sha256()
            size = 0
            try:
                async for chunk in source.stream(info.sha256, info.ext):
                    digest.update(chunk)
                    staged.file.write(chunk)
                    size += len(chunk)
            except OSError as exc:
                raise StoreError(
                    f"cannot stage {target.key(info.sha256, info.ext)}: {exc}"
                ) from exc
            if digest.hexdigest() != info.sha256:
                result.refused.append(source.key(info.sha256, info.ext))
                return
            await target.commit(staged, info.sha256, info.ext, mime_for(info.ext))
        result.copied += 1
        result.size += size
    finally:
        slots.release()
