"""
The post files' edge: find them under the PATH arguments, read them, and write them back safely.

Posts are streamed one at a time so memory stays flat however large the archive is. Only regular
files are read, at most ``scan.max_post_bytes`` of each: a FIFO, socket, device or folder named
like a post is skipped with a warning naming it and what it is, and is never opened (its type is
checked first, and again on the descriptor, opened non-blocking). Posts are written back in place
by :func:`mirror.swap.replace_unchanged`, which never loses an edit made meanwhile, or under an
``--out`` folder, where no symlink is ever written through.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mirror.atomic import READ_FLAGS, TEMP_NAME, atomic_write, describe_kind, read_at_most
from mirror.config import ScanConfig
from mirror.errors import UsageError
from mirror.manifest.base import Manifest
from mirror.models import Post, Span
from mirror.swap import replace_unchanged

log = logging.getLogger("mirror.scan")


@functools.lru_cache(maxsize=8)
def _include(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """The include globs as one compiled regex (fnmatchcase's semantics, one match a name)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


def find_posts(
    paths: Sequence[Path], config: ScanConfig, *, sweep: bool = False
) -> Iterator[tuple[Path, str]]:
    """
    Yield (file, name relative to its PATH argument, '/'-separated) in a stable order.

    A file argument is taken whatever its name and type (:func:`read_post` refuses what is not a
    regular file); folders are walked for ``config.include``. The walk looks only at each
    folder's entry types and opens nothing. Hidden folders (``.git``) are skipped and symlinked
    folders are not followed, so a loop of links cannot make the walk endless; a symlinked file
    is taken only when it resolves inside the PATH argument, else it is skipped with a warning.
    With ``sweep`` (the caller holds the store lock, so no other mirror is writing posts), every
    temp file a killed mirror left beside posts (:data:`TEMP_NAME` of a name ``config.include``
    matches) is removed at once, whatever its age.

    Raises:
        UsageError: a PATH does not exist (a mistyped path in a crontab must not read as success).
    """
    include = _include(config.include).match
    for root in paths:
        if root.exists() and not root.is_dir():
            yield root, root.name
            continue
        if not root.is_dir():
            raise UsageError(f"no such file or folder: {root}")
        yield from _walk(root, include, sweep)


def _walk(root: Path, include: Callable[[str], object], sweep: bool) -> Iterator[tuple[Path, str]]:
    # Strings inside the walk: Path arithmetic per file cost more than the walk itself
    # on a 100,000-post archive (the no-op re-run's budget).
    top = os.fspath(root)
    real_top = ""  # resolved only once a symlinked file needs it
    folders = [(top, "")]
    while folders:
        folder, prefix = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            log.warning("skipped folder %s: cannot list it: %s", folder, exc.strerror or exc)
            continue
        inner: list[os.DirEntry[str]] = []
        for entry in entries:
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                if not name.startswith("."):
                    inner.append(entry)
                continue
            temp = TEMP_NAME.fullmatch(name) if sweep else None
            if temp is not None and include(temp["name"]):
                if entry.is_file(follow_symlinks=False):
                    _remove_temp(entry.path)
            elif include(name):
                if entry.is_symlink():
                    real_top = real_top or os.path.realpath(top)
                    real = os.path.realpath(entry.path)
                    if os.path.commonpath([real, real_top]) != real_top:
                        log.warning(
                            "skipped %s: it is a symlink to %s, outside %s", entry.path, real, top
                        )
                        continue
                yield Path(entry.path), prefix + name
        # Reversed onto the stack, so subfolders come out in name order, each one whole.
        folders.extend((d.path, f"{prefix}{d.name}/") for d in reversed(inner))


def _remove_temp(path: str) -> None:
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot remove %s, left by an interrupted mirror: %s", path, exc.strerror)
        return
    log.info("removed %s, left by an interrupted mirror", path)


class _Skipped(Exception):
    """Why a file is not read as a post."""


def _read_regular(path: Path, limit: int) -> bytes:
    """Return the bytes of the regular file ``path``, refusing any other file and >``limit``."""
    before = path.stat()
    if not stat.S_ISREG(before.st_mode):
        raise _Skipped(f"it is {describe_kind(before.st_mode)}, not a regular file")
    if before.st_size > limit:
        raise _Skipped(f"{before.st_size} bytes is over scan.max_post_bytes ({limit})")
    fd = os.open(path, READ_FLAGS)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise _Skipped("it was replaced while being opened")
        data = read_at_most(fd, limit + 1, opened.st_size)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _Skipped(f"it grew over scan.max_post_bytes ({limit}) while being read")
    return data


def read_post(path: Path, rel: str, config: ScanConfig) -> Post | None:
    """
    Read one post; on trouble, warn naming the file and return None.

    Only a regular file of at most ``config.max_post_bytes`` is read, so a FIFO, a device or a
    socket named like a post can neither hang the run nor fill its memory.
    """
    try:
        data = _read_regular(path, config.max_post_bytes)
    except _Skipped as why:
        log.warning("skipped %s: %s", path, why)
        return None
    except OSError as exc:
        log.warning("skipped %s: cannot read it: %s", path, exc.strerror or exc)
        return None
    if b"\0" in data:
        log.warning("skipped %s: it holds NUL bytes, so it is not a text post", path)
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        log.warning(
            "%s is not valid UTF-8 (byte %d); its undecodable bytes are kept as they are",
            path,
            exc.start,
        )
    return Post(path, rel, data)


def iter_posts(paths: Sequence[Path], config: ScanConfig) -> Iterator[Post]:
    """Yield every readable post under ``paths``."""
    for path, rel in find_posts(paths, config):
        post = read_post(path, rel, config)
        if post is not None:
            yield post


def write_post(
    post: Post,
    data: bytes,
    out: Path | None = None,
    *,
    durable: bool = True,
    before_replace: Callable[[], object] | None = None,
) -> bool:
    """
    Write a post's new bytes atomically, in place or under ``out`` at its relative path.

    ``durable`` also fsyncs the file and its folder (survives a power cut); without it the
    rename alone keeps the post whole through a killed process, at a fraction of the cost.

    In place, the post is replaced only while it still holds what was read, checked right
    before and right after the swap (:func:`mirror.swap.replace_unchanged`, whose
    ``before_replace`` hook this passes on): when a generator or a person changed it, it is left
    alone (the next run takes it), or their edit is put back, with a warning naming the post,
    and False is returned. Under ``out`` no symlink inside ``out`` is written through.

    Raises:
        StoreError: the file cannot be written (a full disk, no permission, a symlink in
            ``out``).
    """
    if out is not None:
        atomic_write(out.joinpath(*post.rel.split("/")), data, fsync=durable, root=out)
        return True
    replaced = replace_unchanged(
        post.path, post.data, data, fsync=durable, before_replace=before_replace
    )
    if not replaced.done:
        log.warning("left %s alone: %s", post.path, replaced.why)
    return replaced.done


async def write_recorded(
    post: Post,
    data: bytes,
    spans: Sequence[Span],
    manifest: Manifest | None,
    out: Path | None = None,
    *,
    durable: bool = True,
) -> bool:
    """
    :func:`write_post`, recording the spans in ``manifest`` first (its revert protocol): a
    generation that did not land (the post changed meanwhile) is forgotten again.

    Raises:
        StoreError: the file cannot be written.
        ManifestError: the spans cannot be recorded.
    """
    generation = None
    if manifest is not None and spans:
        generation = await manifest.record_spans(
            str(post.path),
            spans,
            [span.source for span in spans],
            before_sha256=hashlib.sha256(post.data).hexdigest(),
            after_sha256=hashlib.sha256(data).hexdigest(),
        )
    if write_post(post, data, out, durable=durable):
        return True
    if manifest is not None and generation is not None:
        await manifest.forget_rewrite(str(post.path), generation)
    return False
