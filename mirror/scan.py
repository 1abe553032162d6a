"""
The post files' edge: find them under the PATH arguments, read them, and write them back safely.

Posts are streamed one at a time so memory stays flat however large the archive is.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mirror.atomic import TEMP_NAME, atomic_write
from mirror.config import ScanConfig
from mirror.errors import StoreError, UsageError
from mirror.manifest import Manifest
from mirror.models import Post, Span

log = logging.getLogger("mirror.scan")


_STALE_SECONDS = 60.0


def _remove_stale(path: Path) -> None:
    # Old enough that no writer of this moment owns it, whatever holds which lock.
    with contextlib.suppress(OSError):
        if time.time() - path.stat().st_mtime > _STALE_SECONDS:
            path.unlink()
            log.info("removed %s, left by an interrupted mirror", path)


@functools.lru_cache(maxsize=8)
def _include(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """The include globs as one compiled regex (fnmatchcase's semantics, one match a name)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


def find_posts(
    paths: Sequence[Path], config: ScanConfig, *, sweep: bool = False
) -> Iterator[tuple[Path, str]]:
    """
    Yield (file, name relative to its PATH argument, '/'-separated) in a stable order.

    A file argument is taken whatever its name; folders are walked for ``config.include``.
    Hidden folders (``.git``) are skipped and symlinked folders are not followed, so a loop of
    links cannot make the walk endless. With ``sweep`` (the caller holds the store lock, so no
    mirror is writing), temp files a killed mirror left beside posts are removed on the way.

    Raises:
        UsageError: a PATH does not exist (a mistyped path in a crontab must not read as success).
    """
    for root in paths:
        if root.is_file():
            yield root, root.name
            continue
        if not root.is_dir():
            raise UsageError(f"no such file or folder: {root}")
        include = _include(config.include).match
        # Strings inside the walk: Path arithmetic per file cost more than the walk itself
        # on a 100,000-post archive (the no-op re-run's budget).
        top = os.fspath(root)
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            inner = os.path.relpath(folder, top)
            prefix = "" if inner == "." else inner.replace(os.sep, "/") + "/"
            for name in sorted(files):
                if sweep and TEMP_NAME.fullmatch(name):
                    _remove_stale(Path(folder, name))
                elif include(name):
                    yield Path(folder, name), prefix + name


def read_post(path: Path, rel: str, config: ScanConfig) -> Post | None:
    """Read one post; on trouble, warn naming the file and return None."""
    try:
        size = path.stat().st_size
        if size > config.max_post_bytes:
            log.warning(
                "skipped %s: %d bytes is over scan.max_post_bytes (%d)",
                path,
                size,
                config.max_post_bytes,
            )
            return None
        data = path.read_bytes()
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


def write_post(post: Post, data: bytes, out: Path | None = None, *, durable: bool = True) -> bool:
    """
    Write a post's new bytes atomically, in place or under ``out`` at its relative path.

    ``durable`` also fsyncs the file and its folder (survives a power cut); without it the
    rename alone keeps the post whole through a killed process, at a fraction of the cost.

    In place, the file is read again right before the replace: when a generator rewrote it
    meanwhile, it is left alone (the next run takes it) and False is returned.

    Raises:
        StoreError: the file cannot be written (a full disk, no permission).
    """
    if out is not None:
        target = out.joinpath(*post.rel.split("/"))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {target.parent}: {exc.strerror or exc}") from exc
        atomic_write(target, data, fsync=durable)
        return True
    try:
        current = post.path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {post.path} again: {exc.strerror or exc}") from exc
    if current != post.data:
        log.warning("left %s alone: it changed on disk while mirror worked on it", post.path)
        return False
    atomic_write(post.path, data, fsync=durable)
    return True


def write_recorded(
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
        generation = manifest.record_spans(
            str(post.path),
            spans,
            [span.source for span in spans],
            before_sha256=hashlib.sha256(post.data).hexdigest(),
            after_sha256=hashlib.sha256(data).hexdigest(),
        )
    if write_post(post, data, out, durable=durable):
        return True
    if manifest is not None and generation is not None:
        manifest.forget_rewrite(str(post.path), generation)
    return False
