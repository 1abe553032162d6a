"""
Revert: put back, byte-exact, every span mirror replaced in some posts.

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
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirror.audit import open_store
from mirror.config import Config
from mirror.errors import ExitStatus
from mirror.manifest import Manifest, Rewrite
from mirror.models import Post, Span
from mirror.rewrite import undo
from mirror.scan import iter_posts, write_post

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
        done = f"{verb} {self.spans} references in {self.reverted} posts"
        return f"mirror: {self.posts} posts, {done}{alone}"


def _history(manifest: Manifest, path: Path) -> tuple[str, list[Rewrite]]:
    """Find the post's rewrites under the name it was recorded by (the path as given then)."""
    keys = [str(path), str(path.resolve())]
    keys.append(os.path.relpath(keys[1]))
    for key in dict.fromkeys(keys):
        rewrites = manifest.spans_for(key)
        if rewrites:
            return key, rewrites
    return str(path), []


def _undo(data: bytes, rewrites: list[Rewrite]) -> tuple[bytes, int] | str:
    """Return the original bytes and how many spans were put back, or why that is impossible."""
    spans = 0
    for rewrite in rewrites:
        digest = hashlib.sha256(data).hexdigest()
        if digest == rewrite.before_sha256:
            continue
        if rewrite.after_sha256 is not None and digest != rewrite.after_sha256:
            return f"it changed since generation {rewrite.generation} of its rewrites"
        try:
            data = undo(data, [Span(s.offset, s.old, s.new, s.source) for s in rewrite.spans])
        except ValueError as exc:
            return f"generation {rewrite.generation}: {exc}"
        spans += len(rewrite.spans)
    return data, spans


def revert(
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
    with open_store(config, write=show is None) as (_store, manifest):
        for post in iter_posts(paths, config.scan):
            result.posts += 1
            key, rewrites = _history(manifest, post.path)
            if not rewrites:
                continue
            undone = _undo(post.data, rewrites)
            if isinstance(undone, str):
                log.warning("left %s alone: %s", post.path, undone)
                result.left_alone.append(str(post.path))
                continue
            data, spans = undone
            if show is not None:
                if spans:
                    show(post, data)
            elif data != post.data and not write_post(post, data):
                result.left_alone.append(str(post.path))
                continue
            if show is None:
                with manifest.transaction():
                    for rewrite in rewrites:
                        manifest.forget_rewrite(key, rewrite.generation)
            if spans:
                result.reverted += 1
                result.spans += spans
    return result
