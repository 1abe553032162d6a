"""
Export: the object tree a publisher uploads next to the posts.

Posts written with ``mirror run --out`` and ``[rewrite] base_url = "https://cdn.example.com/mirror/"``
point at ``https://cdn.example.com/mirror/<ab>/<sha256>.<ext>``; ``mirror export DIR`` lays the
objects they need out as ``DIR/objects/<ab>/<sha256>.<ext>`` (upload ``DIR/objects/`` as
``mirror/``). Each file is copied (or hard-linked) to a temp name in its folder and renamed into
place, so an upload that runs meanwhile never sees half a file, and no symlink inside DIR is ever
written through (one planted there is refused); a file already there with the same size is
skipped, so exporting again only adds what is new. A file already there with another
size is not mirror's export (its name is the hash of bytes it does not hold): it is left alone and
reported as a conflict, never overwritten. Export only reads the store and takes no store
lock; an object removed meanwhile (by ``gc``) is reported as missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirror.atomic import atomic_copy
from mirror.audit import find_references, open_store, size_text
from mirror.config import Config
from mirror.errors import ExitStatus


@dataclass
class Exported:
    """What ``export`` wrote, skipped and could not find."""

    files: int = 0
    size: int = 0
    linked: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        """1 when an object a post needs is not in the store or its place is taken, else 0."""
        return ExitStatus.INCOMPLETE if self.missing or self.conflicts else ExitStatus.OK

    def lines(self) -> list[str]:
        """One line per missing object and per conflict (stdout)."""
        return [f"missing  {file}  (not in the store)" for file in self.missing] + [
            f"conflict {file}  (another file is there; left alone)" for file in self.conflicts
        ]

    def summary(self) -> list[str]:
        """What was written (stderr)."""
        how = f", {self.linked} of them hard-linked" if self.linked else ""
        taken = f"; {len(self.conflicts)} left alone (another file there)" if self.conflicts else ""
        return [
            f"export: {self.files} files ({size_text(self.size)}) written{how}; "
            f"{self.present} already there; {len(self.missing)} missing{taken}"
        ]


def export(
    config: Config, dest: Path, paths: Sequence[Path] = (), *, link: bool = False
) -> Exported:
    """
    Copy (or hard-link) objects into ``dest/objects/<ab>/<sha256>.<ext>``.

    Args:
        config: the store to read.
        dest: the folder to export into (created if needed).
        paths: export what the posts under these need; empty: every object a source names.
        link: hard-link instead of copying, copying where a link is impossible.

    Raises:
        UsageError: the store has no manifest.
        StoreError: a file cannot be written under ``dest``.
    """
    with open_store(config, write=False) as (store, manifest):
        rows = manifest.objects()
    if paths:
        refs = find_references(paths, config)
        wanted = {(r.sha256, r.ext) for r in rows if any(s in refs.sources for s in r.sources)}
        wanted |= refs.objects
    else:
        wanted = {(r.sha256, r.ext) for r in rows if r.sources}
    result = Exported()
    for sha, ext in sorted(wanted):
        rel = store.relpath(sha, ext)
        source, target = store.path(sha, ext), dest / rel
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            result.missing.append(rel)
            continue
        try:
            # No symlink inside dest is written through: one planted there is refused.
            how = atomic_copy(source, target, root=dest, link=link)
        except FileNotFoundError:
            # gc removed it between the stat and the copy.
            result.missing.append(rel)
            continue
        if how == "present":
            result.present += 1
            continue
        if how == "conflict":
            # Not an earlier export of this object: never overwrite what mirror did not write.
            result.conflicts.append(rel)
            continue
        result.linked += how == "linked"
        result.files += 1
        result.size += size
    return result
