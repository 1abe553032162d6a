"""
Export: the object tree a publisher puts where ``rewrite.base_url`` points.

A rewritten post names an object as ``<base_url><ab>/<sha256>.<ext>``; ``mirror export DIR`` lays
the objects out as ``DIR/<ab>/<sha256>.<ext>``, so DIR is the folder served at the base URL's
path. In a Hexo site with the default ``/mirror/``, ``mirror export source/mirror`` puts every
object where ``hexo generate`` publishes it (``public/mirror/<ab>/...``), and ``hexo clean``,
which empties only ``public/``, loses nothing; for copies published elsewhere
(``base_url = "https://cdn.example.com/mirror/"``), upload DIR as ``mirror/``.

Objects come from any store through its protocol: a folder's files are copied (``--link``:
hard-linked, only where the store has local files), a bucket's objects streamed into a staged
file and checked against their name before they land. Each file lands by a temp name in its folder
and a rename, so an upload that runs meanwhile never sees half a file, and no symlink inside DIR is
ever written through (one planted there is refused); a file already there with the same size is
skipped, so exporting again only adds what is new. A file already there with another size is not
mirror's export (its name is the hash of bytes it does not hold): it is left alone and reported as
a conflict, never overwritten. Export only reads the store and takes no store lock; an object
removed meanwhile (by ``gc``) is reported as missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirror.atomic import atomic_copy
from mirror.audit import care_manifest, find_references, size_text
from mirror.config import Config
from mirror.errors import ExitStatus, StoreError, UsageError
from mirror.store import ObjectStore, open_store
from mirror.store.base import object_name


@dataclass
class Exported:
    """What ``export`` wrote, skipped and could not find."""

    files: int = 0
    size: int = 0
    linked: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        """1 when an object a post needs is not exported (missing, place taken, bad bytes)."""
        broken = self.missing or self.conflicts or self.corrupt
        return ExitStatus.INCOMPLETE if broken else ExitStatus.OK

    def lines(self) -> list[str]:
        """One line per missing, conflicting or corrupt object (stdout)."""
        return (
            [f"missing  {file}  (not in the store)" for file in self.missing]
            + [f"conflict {file}  (another file is there; left alone)" for file in self.conflicts]
            + [
                f"corrupt  {file}  (its bytes do not hash to its name; not exported)"
                for file in self.corrupt
            ]
        )

    def summary(self) -> list[str]:
        """What was written (stderr)."""
        how = f", {self.linked} of them hard-linked" if self.linked else ""
        taken = f"; {len(self.conflicts)} left alone (another file there)" if self.conflicts else ""
        bad = f"; {len(self.corrupt)} corrupt in the store" if self.corrupt else ""
        return [
            f"export: {self.files} files ({size_text(self.size)}) written{how}; "
            f"{self.present} already there; {len(self.missing)} missing{taken}{bad}"
        ]


async def export(
    config: Config, dest: Path, paths: Sequence[Path] = (), *, link: bool = False
) -> Exported:
    """
    Copy (or hard-link) objects into ``dest/<ab>/<sha256>.<ext>``.

    Args:
        config: the store to read.
        dest: the folder to export into (created if needed).
        paths: export what the posts under these need; empty: every object a source names.
        link: hard-link instead of copying, copying where a link is impossible.

    Raises:
        UsageError: the store has no manifest, or ``link`` and its objects are not local files.
        StoreError: a file cannot be written under ``dest``, or the store cannot be read.
    """
    async with care_manifest(config, write=False) as manifest:
        rows = await manifest.objects()
    if paths:
        refs = find_references(paths, config)
        wanted = {(r.sha256, r.ext) for r in rows if any(s in refs.sources for s in r.sources)}
        wanted |= refs.objects
    else:
        wanted = {(r.sha256, r.ext) for r in rows if r.sources}
    result = Exported()
    async with open_store(config) as store:
        if link and wanted and store.local_file(*min(wanted)) is None:
            raise UsageError(f"--link: {store.description} keeps no local files to link; copy")
        for sha, ext in sorted(wanted):
            await _export_one(store, sha, ext, dest, link, result)
    return result


async def _export_one(
    store: ObjectStore, sha: str, ext: str, dest: Path, link: bool, result: Exported
) -> None:
    name = object_name(sha, ext)
    target = dest / name
    local = store.local_file(sha, ext)
    if local is not None:
        how = await asyncio.to_thread(_copy, local, target, dest, link)
        size = how[1]
        outcome = how[0]
    else:
        outcome, size = await _fetch_copy(store, sha, ext, target, dest)
    if outcome == "missing":
        result.missing.append(name)
    elif outcome == "present":
        result.present += 1
    elif outcome == "conflict":
        # Not an earlier export of this object: never overwrite what mirror did not write.
        result.conflicts.append(name)
    elif outcome == "corrupt":
        result.corrupt.append(name)
    else:
        result.linked += outcome == "linked"
        result.files += 1
        result.size += size


def _copy(source: Path, target: Path, dest: Path, link: bool) -> tuple[str, int]:
    try:
        size = source.stat().st_size
        # No symlink inside dest is written through: one planted there is refused.
        return atomic_copy(source, target, root=dest, link=link), size
    except FileNotFoundError:
        return "missing", 0  # gc removed it meanwhile


async def _fetch_copy(
    store: ObjectStore, sha: str, ext: str, target: Path, dest: Path
) -> tuple[str, int]:
    """Stream a remote object into staging, check its hash, and copy it into place."""
    info = await store.stat(sha, ext)
    if info is None:
        return "missing", 0
    try:
        there = os.stat(target, follow_symlinks=False)  # noqa: PTH116 - not followed
    except (FileNotFoundError, NotADirectoryError):
        there = None
    except OSError as exc:
        raise StoreError(f"cannot check {target}: {exc.strerror or exc}") from exc
    if there is not None and stat.S_ISREG(there.st_mode):
        # Decided without downloading, as atomic_copy decides (which refuses anything else).
        return ("present" if there.st_size == info.size else "conflict"), 0
    async with store.staging() as staged:
        digest = hashlib.sha256()
        try:
            async for chunk in store.stream(sha, ext):
                digest.update(chunk)
                staged.file.write(chunk)
            staged.file.flush()
        except OSError as exc:
            raise StoreError(f"cannot stage {store.key(sha, ext)}: {exc}") from exc
        if digest.hexdigest() != sha:
            return "corrupt", 0
        return await asyncio.to_thread(_copy, staged.path, target, dest, False)
