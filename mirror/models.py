"""Frozen records passed between the pipeline's stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Post:
    """One post file as read from disk: its bytes and the names it is known by."""

    path: Path
    rel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ImageRef:
    """
    One image reference in a post.

    ``start``/``end`` index the post's decoded text (see :func:`mirror.rewrite.decode`);
    ``syntax`` and ``quote`` say how a replacement URL must be encoded there. ``element``
    numbers the tag or Markdown construct the reference belongs to, so alternates of one image
    (``src``, ``data-original``, ``srcset`` candidates) share it.
    """

    post: str
    line: int
    start: int
    end: int
    url: str
    decoded: str
    source: str
    where: str
    declared: tuple[int, int] | None
    declared_kind: str | None
    proxied: bool
    syntax: str
    quote: str
    element: int


@dataclass(frozen=True, slots=True)
class Span:
    """One replacement the rewriter made: ``offset`` is a byte offset into the original post."""

    offset: int
    old: str
    new: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What verification proved about some bytes."""

    format: str
    ext: str
    mime: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Download:
    """A complete response body, hashed while it streamed."""

    url: str
    final_url: str
    data: bytes
    sha256: str
    status: int
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A verified object in the content-addressed store."""

    sha256: str
    ext: str
    size: int
    file: str
