"""
Store care: check the object files against the manifest (``verify``) and collect the objects no
post needs any more (``gc``).

``verify`` re-hashes every object file and compares the files with the ``objects`` rows (which
every ``sources`` and ``served`` row naming an object joins): *missing* (a row names a file that
is not there), *corrupt* (the bytes do not hash to the name) and *stray* (a file no row names;
reported only, ``gc`` removes it). ``--repair`` deletes the corrupt files a manifest row names,
forgets the missing and corrupt objects' rows (:meth:`Manifest.forget_objects`), then fetches
each such object again at once from the sources the manifest knew produced it: a rewritten post
names the object by its hash and no longer names the source, so no later run would. An object
whose new bytes hash to its name is restored with its rows; any other is listed, its sources left
marked for re-fetch (the post then needs a revert and a run). A corrupt file no row names is
only reported, since nothing proves mirror wrote it.

``gc`` keeps an object when any of these holds, and collects everything else:

- a source that a post under the PATHs names (any reference, wrapped or raw) has a row naming it;
- its ``<ab>/<sha256>.<ext>`` appears in a post under the PATHs (a rewritten post points at it).
  Whatever URL precedes it counts, not only ``rewrite.base_url``: a changed base URL must never
  lose an object a post still shows;
- a ``served`` row names it (``serve``'s open-mode cache evicts on its own budget).

A collected object's ``objects`` row goes; the ``sources`` rows naming it (URLs no post under the
PATHs names) stay, as ``failed`` with reason ``collected`` and no object, so a post that names one
again gets it fetched again and ``serve``'s closed world still knows it. A file no row names goes
too unless a post names it, once it is an hour old (``serve``, which takes no store lock, may be
between writing a file and recording its row), and only when its bytes hash to its name: that
proves mirror wrote it; any other file is left alone and counted. Rows are committed before files
are unlinked, so no row ever names a missing file.

Both work on any store through its protocol (:class:`~mirror.store.ObjectStore`): objects are
listed with ``objects()``, re-hashed by streaming them (never held whole), deleted with
``delete()``; ``gc --apply`` ends with ``cleanup()``, which also aborts a bucket's stale
multipart uploads.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirror.config import Config
from mirror.downloader import Context, Downloader
from mirror.errors import ExitStatus, StoreError, UsageError
from mirror.extract import Extractor
from mirror.fetch import Fetcher
from mirror.lock import command_line
from mirror.manifest import ObjectRow, manifest_exists, manifest_name, open_manifest
from mirror.manifest import base as seam
from mirror.marker import mark_store
from mirror.rewrite import decode
from mirror.scan import iter_posts
from mirror.store import ObjectInfo, ObjectStore, open_store
from mirror.summary import plural

# A file no row names is left alone this long: a writer without the store lock (serve) may be
# between the object's rename and its row's commit.
STRAY_AGE = 3600.0
# How many objects ``verify --repair`` names when it cannot restore them.
LOST_SHOWN = 20
# `<ab>/<sha256>.<ext>` as local_url writes it, after any base URL.
_LOCAL_URL = re.compile(r"(?<![0-9a-f])([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,10})(?![a-z0-9])")


def size_text(size: int) -> str:
    """Format a byte count the way the run summary does (MB, 10**6)."""
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} bytes"


@contextlib.asynccontextmanager
async def care_manifest(config: Config, *, write: bool) -> AsyncIterator[seam.Manifest]:
    """
    Open an existing store's manifest, SQLite or PostgreSQL; with ``write``, under the store lock.

    Raises:
        UsageError: the store has no manifest (most likely a wrong ``--store``).
        LockedError: ``write`` and another mirror holds the store lock.
        ManifestError: the manifest cannot be opened.
    """
    if not await manifest_exists(config):
        raise UsageError(f"no manifest at {manifest_name(config)}: is --store (store.url) right?")
    async with open_manifest(config, readonly=not write) as manifest:
        if not write:
            yield manifest
            return
        if config.store.scheme == "file":
            # A store known by its manifest gets the marker on its next write.
            mark_store(Path(config.store.path))
        async with manifest.lock(command_line()):
            yield manifest


async def object_hash(store: ObjectStore, sha256: str, ext: str) -> str | None:
    """
    Return the sha256 of the object's bytes, streamed; None when it is not there (any more).

    Raises:
        StoreError: it exists but cannot be read.
    """
    digest = hashlib.sha256()
    try:
        async for chunk in store.stream(sha256, ext):
            digest.update(chunk)
    except StoreError:
        if await store.stat(sha256, ext) is None:
            return None  # removed meanwhile (serve's eviction, a gc)
        raise
    return digest.hexdigest()


async def listing(store: ObjectStore) -> dict[tuple[str, str], ObjectInfo]:
    """Return every object in the store by ``(sha256, ext)``, from one walk or listing."""
    return {(info.sha256, info.ext): info async for info in store.objects()}


@dataclass(frozen=True, slots=True)
class References:
    """What the posts under some PATHs name: source URLs, and objects by local URL."""

    posts: int
    sources: frozenset[str]
    objects: frozenset[tuple[str, str]]
    shas: frozenset[str]

    def needs(self, row: ObjectRow) -> bool:
        """Tell whether a post names this object, directly or through one of its sources."""
        return row.sha256 in self.shas or any(s in self.sources for s in row.sources)


def find_references(paths: Sequence[Path], config: Config) -> References:
    """Scan the posts under ``paths`` for every source URL and local object URL they hold."""
    extractor = Extractor(config.scan)
    posts = 0
    sources: set[str] = set()
    objects: set[tuple[str, str]] = set()
    for post in iter_posts(paths, config.scan):
        posts += 1
        text = decode(post.data)
        sources.update(ref.source for ref in extractor(text, post.rel))
        objects.update((m[2], m[3]) for m in _LOCAL_URL.finditer(text) if m[2].startswith(m[1]))
    shas = frozenset(sha for sha, _ext in objects)
    return References(posts, frozenset(sources), frozenset(objects), shas)


def _named_by(row: ObjectRow) -> str:
    names = [*row.sources, *(f"{s} (served)" for s in row.served)]
    if not names:
        return "no source names it"
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"named by {names[0]}{more}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the store: ``kind`` is missing, corrupt or stray."""

    kind: str
    file: str
    detail: str


@dataclass
class Audit:
    """What ``verify`` found and, with ``--repair``, did."""

    files: int = 0
    size: int = 0
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: bool = False
    removed: int = 0
    refetch: int = 0
    restored: int = 0
    # Objects whose sources now give other bytes (or none): only a re-run of the post helps.
    lost: list[str] = field(default_factory=list)

    def count(self, kind: str) -> int:
        """How many problems of ``kind`` were found."""
        return sum(p.kind == kind for p in self.problems)

    @property
    def exit_status(self) -> ExitStatus:
        """1 when an object was missing or corrupt (repaired or not), else 0."""
        broken = self.count("missing") + self.count("corrupt")
        return ExitStatus.INCOMPLETE if broken else ExitStatus.OK

    def lines(self) -> list[str]:
        """One line per problem (stdout)."""
        return [f"{p.kind:<8} {p.file}  ({p.detail})" for p in self.problems]

    def summary(self) -> list[str]:
        """What was checked and done (stderr)."""
        counts = ", ".join(f"{self.count(k)} {k}" for k in ("missing", "corrupt", "stray"))
        out = [
            f"verify: {self.files} files ({size_text(self.size)}) against {self.rows} manifest "
            f"rows: {counts}"
        ]
        if self.repaired:
            restored = plural(self.restored, "object")
            out.append(
                f"  repaired: {self.removed} corrupt files deleted, {restored} fetched again "
                "from their sources and restored"
            )
            if self.lost:
                out.append(
                    f"  {plural(len(self.lost), 'object')} could not be restored (their sources "
                    "are down or now give other bytes): their sources are marked for re-fetch; "
                    "posts that name them by hash need `mirror rewrite --revert` on those posts, "
                    "then `mirror run`"
                )
                out.extend(f"    {key}" for key in self.lost[:LOST_SHOWN])
                if len(self.lost) > LOST_SHOWN:
                    out.append(f"    and {len(self.lost) - LOST_SHOWN} more")
        elif self.exit_status:
            out.append("  `mirror verify --repair` drops them and marks their sources for re-fetch")
        if self.count("stray"):
            out.append("  stray files are left alone; `mirror gc` removes them")
        return out


async def verify(config: Config, *, repair: bool = False) -> Audit:
    """
    Re-hash every object and check it against the manifest; with ``repair``, fix what can be.

    Raises:
        StoreError: an object cannot be read or removed.
        LockedError: ``repair`` and another mirror holds the store lock.
    """
    async with care_manifest(config, write=repair) as manifest, open_store(config) as store:
        return await _verify(config, store, manifest, repair)


async def _verify(
    config: Config, store: ObjectStore, manifest: seam.Manifest, repair: bool
) -> Audit:
    rows = {row.sha256: row for row in await manifest.objects()}
    audit = Audit(rows=len(rows))
    found: set[tuple[str, str]] = set()
    reasons: dict[str, str] = {}
    corrupt: list[tuple[str, str]] = []
    async for info in store.objects():
        sha, ext = info.sha256, info.ext
        digest = await object_hash(store, sha, ext)
        if digest is None:
            continue
        found.add((sha, ext))
        audit.files += 1
        audit.size += info.size
        row = rows.get(sha)
        named = row is not None and row.ext == ext
        if digest != sha:
            why = _named_by(row) if row is not None and named else "no manifest row names it"
            detail = f"its bytes hash to {digest[:16]}...; {why}"
            if named:
                # Only an object a row names is provably mirror's to delete.
                corrupt.append((sha, ext))
                reasons[sha] = "corrupt-object"
            else:
                detail += "; left alone: nothing proves mirror wrote it"
            audit.problems.append(Problem("corrupt", store.key(sha, ext), detail))
        elif not named:
            detail = "no manifest row names it"
            audit.problems.append(Problem("stray", store.key(sha, ext), detail))
    for row in rows.values():
        if (row.sha256, row.ext) not in found:
            reasons[row.sha256] = "missing-object"
            file = store.key(row.sha256, row.ext)
            audit.problems.append(Problem("missing", file, _named_by(row)))
    audit.problems.sort(key=lambda p: (p.file, p.kind))
    if repair:
        audit.repaired = True
        # Rows first, then objects: no row may name an object that is gone.
        audit.refetch = await manifest.forget_objects(reasons)
        audit.removed = sum([await store.delete(sha, ext) for sha, ext in corrupt])
        # A post that names an object by hash no longer names its source, so no later run would
        # fetch it: fetch it now, from the sources the manifest knew produced it.
        damaged = {sha: rows[sha] for sha in reasons}
        restored = await _refetch(config, store, manifest, damaged)
        audit.restored = len(restored)
        audit.lost = sorted(
            store.key(sha, row.ext) for sha, row in damaged.items() if sha not in restored
        )
    return audit


async def _refetch(
    config: Config, store: ObjectStore, manifest: seam.Manifest, damaged: dict[str, ObjectRow]
) -> set[str]:
    """
    Fetch each damaged object again from its sources; return the sha256s restored.

    Restored means the new bytes hash to the same name, and only then is the source's row
    written back as mirrored. Bytes of another hash are left as an unnamed object (``gc``'s to
    collect) and the source stays marked for re-fetch.
    """
    restored: set[str] = set()
    wanted = {sha: row for sha, row in damaged.items() if row.sources}
    if not wanted:
        return restored
    async with Fetcher(config) as fetcher:
        downloader = Downloader(config, fetcher, store, manifest, breaker=False)
        for sha, row in wanted.items():
            for source in row.sources:
                outcome = await downloader.download(source, [], Context(), {})
                if outcome.obj is not None and outcome.obj.sha256 == sha:
                    await manifest.record_results([outcome.result(source, time.time())])
                    restored.add(sha)
                    break
    return restored


@dataclass(frozen=True, slots=True)
class Garbage:
    """An object ``gc`` collects; ``row`` tells whether the manifest knew it."""

    sha256: str
    ext: str
    file: str
    size: int
    row: bool
    sources: tuple[str, ...]


@dataclass
class Collection:
    """What ``gc`` found and, with ``--apply``, did."""

    posts: int = 0
    kept: int = 0
    garbage: list[Garbage] = field(default_factory=list)
    applied: bool = False
    unmirrored: int = 0
    temp_removed: int = 0
    foreign: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes the collected files take (or took)."""
        return sum(g.size for g in self.garbage)

    def lines(self) -> list[str]:
        """One line per collected object (stdout)."""
        verb = "removed" if self.applied else "would remove"
        out = []
        for g in self.garbage:
            why = f"{len(g.sources)} sources no post names" if g.row else "no manifest row"
            out.append(f"{verb} {g.file}  {g.size} bytes  ({why})")
        return out

    def summary(self) -> list[str]:
        """What was kept and freed (stderr)."""
        out: list[str] = []
        total = f"{len(self.garbage)} unneeded ({size_text(self.size)})"
        head = f"gc: {self.posts} posts; {self.kept} objects kept, {total}"
        if not self.applied:
            out.append(f"{head}; run with --apply to delete them" if self.garbage else head)
            return out + self.foreign_note()
        out.append(f"{head} removed")
        out += self.foreign_note()
        if self.unmirrored:
            out.append(
                f"  {self.unmirrored} sources kept without object (reason `collected`): "
                "fetched again if a post names them again"
            )
        if self.temp_removed:
            out.append(f"  {self.temp_removed} stale temp files removed")
        return out

    def foreign_note(self) -> list[str]:
        """The files under objects/ gc left alone because their bytes do not match their name."""
        if not self.foreign:
            return []
        return [
            f"  {len(self.foreign)} files under objects/ were left alone: their bytes do not hash "
            "to their name, so nothing proves mirror wrote them (`mirror verify` lists them)"
        ]


async def collect(
    config: Config, paths: Sequence[Path], *, apply: bool = False, stray_age: float = STRAY_AGE
) -> Collection:
    """
    Find the objects no post under ``paths`` needs; with ``apply``, delete them.

    Args:
        config: the store and the scan settings.
        paths: every folder of posts; what none of them needs is garbage.
        apply: delete the garbage (rows first), then clean up what interrupted writers left.
        stray_age: seconds before an object no row names, a staged file or a multipart upload
            counts as abandoned rather than in progress (:data:`STRAY_AGE`).

    Returns:
        What was found and, with ``apply``, done.

    Raises:
        UsageError: a PATH does not exist, or there is no post under them (which would make
            every object garbage).
        StoreError: an object cannot be removed.
        LockedError: ``apply`` and another mirror holds the store lock.
    """
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder; give gc every folder of posts")
    refs = find_references(paths, config)
    if refs.posts == 0:
        raise UsageError("no posts under the given PATHs: refusing to call every object garbage")
    async with care_manifest(config, write=apply) as manifest, open_store(config) as store:
        return await _collect(store, manifest, refs, apply, stray_age)


async def _collect(
    store: ObjectStore, manifest: seam.Manifest, refs: References, apply: bool, stray_age: float
) -> Collection:
    rows = await manifest.objects()
    needed = set(refs.shas)
    needed.update(row.sha256 for row in rows if row.served or refs.needs(row))
    result = Collection(posts=refs.posts, kept=len(needed & {r.sha256 for r in rows}))
    stored = await listing(store)
    for row in rows:
        if row.sha256 not in needed:
            info = stored.get((row.sha256, row.ext))
            size = info.size if info is not None else 0
            file = store.key(row.sha256, row.ext)
            result.garbage.append(Garbage(row.sha256, row.ext, file, size, True, row.sources))
    named = {(row.sha256, row.ext) for row in rows}
    cutoff = time.time() - stray_age
    for (sha, ext), info in stored.items():
        if (sha, ext) in named or sha in needed or info.modified > cutoff:
            continue
        file = store.key(sha, ext)
        if not await _named_for_its_bytes(store, sha, ext):
            result.foreign.append(file)
            continue
        result.garbage.append(Garbage(sha, ext, file, info.size, False, ()))
    result.garbage.sort(key=lambda g: g.file)
    if apply:
        result.applied = True
        doomed = {g.sha256: "collected" for g in result.garbage if g.row}
        # Rows first, then objects: no row may name an object that is gone.
        result.unmirrored = await manifest.forget_objects(doomed)
        for g in result.garbage:
            await store.delete(g.sha256, g.ext)
        result.temp_removed = await store.cleanup(older_than=stray_age)
    return result


async def _named_for_its_bytes(store: ObjectStore, sha256: str, ext: str) -> bool:
    """Tell whether its bytes hash to its name (so mirror wrote it); False when unreadable."""
    try:
        return await object_hash(store, sha256, ext) == sha256
    except StoreError:
        return False
