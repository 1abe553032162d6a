"""
Revert: put back, byte-exact, every span mirror replaced in some posts.

Rewrites are recorded under the post's absolute path (what ``mirror run`` and ``mirror rewrite``
hand down), so a revert from any folder finds them; journals written before that keyed a post by
the path as typed, and those keys are still found, as any tail of the absolute path.

A post's rewrites are undone newest generation first, following the protocol in
:mod:`mirror.manifest`: a generation whose ``before_sha256`` is what the post holds never landed
(or was undone already) and is only forgotten; one whose ``after_sha256`` is what the post holds
is undone with :func:`mirror.rewrite.undo`, which also checks that every span still reads what the
rewrite wrote. Anything else means the post was edited since mirror rewrote it: it is left alone,
whole (a post is either back to its original bytes or untouched), with a warning. The restored
post is written atomically and only then are its generations forgotten, so a crash in between
leaves a generation whose ``before_sha256`` matches the post, which the next revert drops.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirror.audit import care_manifest
from mirror.config import Config
from mirror.errors import ExitStatus
from mirror.manifest import Rewrite
from mirror.manifest.base import Manifest
from mirror.models import Post, Span
from mirror.rewrite import undo
from mirror.scan import iter_posts, write_post
from mirror.summary import plural

log = logging.getLogger("mirror.scan")


@dataclass
class Reverted:
    """What ``revert`` did."""

    posts: int = 0
    reverted: int = 0
    spans: int = 0
    left_alone: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        """1 when a post was left alone, else 0."""
        return ExitStatus.INCOMPLETE if self.left_alone else ExitStatus.OK

    def summary(self, dry_run: bool) -> str:
        """One line for stderr."""
        verb = "would revert" if dry_run else "reverted"
        alone = f", {len(self.left_alone)} left alone" if self.left_alone else ""
        done = f"{verb} {plural(self.spans, 'reference')} in {plural(self.reverted, 'post')}"
        return f"mirror: {plural(self.posts, 'post')}, {done}{alone}"


def post_key(path: Path) -> str:
    """A post's key in the rewrite journal: absolute, unresolved, as the posts table keys it."""
    return os.path.abspath(path)  # noqa: PTH100


async def _legacy_keys(manifest: Manifest) -> dict[str, list[str]]:
    """
    Journal keys written before keys were absolute (the path as typed, relative to wherever
    that command ran), by their tail: the key without leading ``./`` and ``../`` parts.
    """
    keys = await manifest.rewritten_posts()  # one query for the whole revert
    tails: dict[str, list[str]] = {}
    for key in keys:
        if Path(key).is_absolute():
            continue
        parts = [part for part in Path(key).parts if part not in (".", "..")]
        if parts:
            tails.setdefault("/".join(parts), []).append(key)
    return tails


async def _history(
    manifest: Manifest, path: Path, legacy: dict[str, list[str]]
) -> list[tuple[str, Rewrite]]:
    """
    The post's rewrites, newest first, each with the key it is recorded under: its absolute
    path, and any legacy relative key that is a tail of it (from any working folder).
    """
    key = post_key(path)
    groups = [[(key, rewrite) for rewrite in await manifest.spans_for(key)]]
    parts = Path(key).parts
    for start in range(1, len(parts)):
        for old in legacy.get("/".join(parts[start:]), ()):
            groups.append([(old, rewrite) for rewrite in await manifest.spans_for(old)])
    # Newest first across keys; merge keeps each key's own generation order whatever the clock.
    return list(heapq.merge(*groups, key=lambda item: -item[1].created))


def _undo(
    data: bytes, history: list[tuple[str, Rewrite]], key: str
) -> tuple[bytes, int, list[tuple[str, int]]] | str:
    """
    Return the original bytes, how many spans were put back and the generations to forget, or
    why that is impossible. A legacy generation that fits neither side of the post is another
    post's (the same relative path typed in another folder) and is left as it is.
    """
    spans = 0
    forget: list[tuple[str, int]] = []
    for owner, rewrite in history:
        digest = hashlib.sha256(data).hexdigest()
        ours = owner == key
        if digest == rewrite.before_sha256:
            if ours:
                forget.append((owner, rewrite.generation))
            continue
        if rewrite.after_sha256 is not None and digest != rewrite.after_sha256:
            if not ours:
                continue
            return f"it changed since generation {rewrite.generation} of its rewrites"
        try:
            data = undo(data, [Span(s.offset, s.old, s.new, s.source) for s in rewrite.spans])
        except ValueError as exc:
            if not ours:
                continue
            return f"generation {rewrite.generation}: {exc}"
        spans += len(rewrite.spans)
        forget.append((owner, rewrite.generation))
    return data, spans, forget


async def revert(
    config: Config,
    paths: Sequence[Path],
    *,
    show: Callable[[Post, bytes], None] | None = None,
) -> Reverted:
    """
    Undo every rewrite mirror recorded for the posts under ``paths``.

    Args:
        config: the store whose manifest holds the rewrites.
        paths: posts, or folders of posts.
        show: a dry run: nothing is written, and ``show`` gets each post and its restored bytes.

    Raises:
        UsageError: the store has no manifest.
        StoreError: a post cannot be written.
        LockedError: not a dry run, and another mirror holds the store lock.
    """
    result = Reverted()
    async with care_manifest(config, write=show is None) as manifest:
        legacy = await _legacy_keys(manifest)
        for post in iter_posts(paths, config.scan):
            result.posts += 1
            history = await _history(manifest, post.path, legacy)
            if not history:
                continue
            undone = _undo(post.data, history, post_key(post.path))
            if isinstance(undone, str):
                log.warning("left %s alone: %s", post.path, undone)
                result.left_alone.append(str(post.path))
                continue
            data, spans, forget = undone
            if show is not None:
                if spans:
                    show(post, data)
            elif data != post.data and not write_post(post, data):
                result.left_alone.append(str(post.path))
                continue
            if show is None:
                async with manifest.transaction():
                    for owner, generation in forget:
                        await manifest.forget_rewrite(owner, generation)
            if spans:
                result.reverted += 1
                result.spans += spans
    return result
