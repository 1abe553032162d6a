"""
Pure: a post's text → every image reference in it (:class:`~mirror.models.ImageRef`).

What counts, and the ``where`` vocabulary the reports use:

- front matter keys from ``[scan] front_matter_keys`` (front matter with or without its opening
  ``---``, or JSON between ``;;;`` lines; see :mod:`mirror.frontmatter`), as a scalar or as each
  scalar item of a block (``- url``) or flow (``[a, b]``) list, e.g. Hexo's ``photos``:
  ``front-matter:<key>``;
- ``<img>`` ``src``, ``data-src``, ``data-original``, ``data-original-src``, ``data-lazy-src``,
  ``data-gif-url``, ``srcset``/``data-srcset`` (each candidate); ``<source srcset>``;
  ``<video poster>``; ``data-avatar`` on any tag: ``<tag>@<attribute>``;
- ``url(...)`` inside any ``style`` attribute: ``style``;
- ``<a href>`` that names an image file, or the same source as an image in the post (lightbox):
  ``a@href``;
- any other attribute whose whole value is a proxy wrapper: ``<tag>@<attribute>``;
- Markdown ``![alt](url)``: ``markdown``; reference definitions that are wrapped, name an image
  file or are used by an image: ``markdown-ref``;
- a Markdown link's destination, ``[text](url)`` (``[![alt](thumb)](full)`` above all), by the
  rule ``a@href`` follows: ``markdown-link``;
- a proxy wrapper URL in Markdown text, which GFM turns into a link (bare, or ``<url>``), never in
  code, HTML blocks or .html posts: ``text``. A relative URL in prose is no longer a link, so these
  are rewritten only to absolute URLs (see :func:`mirror.rewrite.text_url`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import NamedTuple

from mirror.config import ScanConfig
from mirror.frontmatter import front_matter_span
from mirror.frontmatter import values as front_matter_values
from mirror.markup import Attr, Lexer, MdLink, Tag
from mirror.models import ImageRef
from mirror.source import Classifier, looks_like_image

_IMG_URL_ATTRS = frozenset(
    {"src", "data-src", "data-original", "data-original-src", "data-lazy-src", "data-gif-url"}
)
# The declared size describes these; srcset candidates, GIF twins, links and styles may differ.
_SIZED_ATTRS = frozenset({"src", "data-src", "data-original", "data-original-src", "data-lazy-src"})
# Hexo renders these through Markdown; .html and anything else is taken as plain HTML.
_MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdown", ".mkd")
_SRCSET_ATTRS = frozenset({"srcset", "data-srcset"})
# Links: kept when they name an image file or the same source as an image in the post.
_LINKS = frozenset({"a@href", "markdown-link"})
_CSS_URL = re.compile(
    r"url\(\s*(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|&quot;(?P<eq>.*?)&quot;|(?P<bare>[^)\s'\"]*))\s*\)",
    re.IGNORECASE,
)
_BACKSLASH_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


# A NamedTuple, not a frozen dataclass: built once per URL span, its C-level constructor counts.
class _Found(NamedTuple):
    """A URL span before classification."""

    start: int
    end: int
    decoded: str
    where: str
    syntax: str
    quote: str
    element: int
    declared: tuple[int, int] | None = None
    declared_kind: str | None = None
    wrapped_only: bool = False


_DATE = re.compile(
    r"^date:[ \t]*['\"]?(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?",
    re.MULTILINE,
)


def post_date(text: str) -> str | None:
    """Return the front matter's ``date:`` as ``YYYYMMDDhhmmss`` (Wayback's form), or None."""
    span = front_matter_span(text)
    if span is None:
        return None
    found = _DATE.search(text, span[0], span[1])
    if found is None:
        return None
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in found.groups())
    return f"{year:04d}{month:02d}{day:02d}{hour:02d}{minute:02d}{second:02d}"


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip().removesuffix("px").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _pair(width: str | None, height: str | None) -> tuple[int, int] | None:
    w, h = _int(width), _int(height)
    return (w, h) if w is not None and h is not None else None


class Extractor:
    """Finds image references; built once from the scan config, then pure per post."""

    def __init__(self, config: ScanConfig) -> None:
        self._keys = frozenset(config.front_matter_keys)
        self.classifier = Classifier(config.wrappers)

    def __call__(self, text: str, post: str) -> list[ImageRef]:
        """
        Return the references in ``text``, in document order.

        Args:
            text: the post decoded as by :func:`mirror.scan.decode_post`.
            post: the name reports use for it; its suffix says whether Markdown rules apply.
        """
        span = front_matter_span(text)
        found = [] if span is None else list(self._front_matter(text, span))
        lexer = Lexer(text)
        element = len(found)
        markdown = post.lower().endswith(_MARKDOWN_SUFFIXES)
        for event in lexer.events(0 if span is None else span[2], markdown):
            element += 1
            if isinstance(event, Tag):
                found.extend(self._tag(text, event, element))
            else:
                found.append(self._md(text, event, element, lexer.image_labels))
        return self._classify(text, post, found)

    def _front_matter(self, text: str, span: tuple[int, int, int]) -> Iterator[_Found]:
        for element, value in enumerate(front_matter_values(text, span, self._keys)):
            where = f"front-matter:{value.key}"
            yield _Found(
                value.start, value.end, value.decoded, where, value.syntax, value.quote, element
            )

    def _tag(self, text: str, tag: Tag, element: int) -> Iterator[_Found]:
        values = {a.name: a for a in tag.attrs}
        declared, kind = (None, None)
        if tag.name == "img":
            declared, kind = self._declared(text, values)
        for attr in tag.attrs:
            if attr.start < 0:
                continue
            name = attr.name
            where = f"{tag.name}@{name}"
            if name == "style":
                yield from self._style(text, attr, element)
            elif name in _SRCSET_ATTRS and tag.name in ("img", "source"):
                yield from self._srcset(text, attr, where, element)
            elif (
                (tag.name == "img" and name in _IMG_URL_ATTRS)
                or name == "data-avatar"
                or (tag.name == "video" and name == "poster")
                or (tag.name == "a" and name == "href")
            ):
                sized = tag.name == "img" and name in _SIZED_ATTRS
                yield _Found(
                    attr.start,
                    attr.end,
                    html.unescape(text[attr.start : attr.end]),
                    where,
                    "attr",
                    attr.quote,
                    element,
                    declared if sized else None,
                    kind if sized else None,
                )
            elif "//" in text[attr.start : attr.end]:
                decoded = html.unescape(text[attr.start : attr.end])
                yield _Found(
                    attr.start, attr.end, decoded, where, "attr", attr.quote, element,
                    wrapped_only=True,
                )  # fmt: skip

    @staticmethod
    def _declared(text: str, attrs: dict[str, Attr]) -> tuple[tuple[int, int] | None, str | None]:
        def value(name: str) -> str | None:
            attr = attrs.get(name)
            if attr is None or attr.start < 0:
                return None
            return html.unescape(text[attr.start : attr.end])

        size = value("data-size")
        if size is not None and size.count(",") == 1:
            pair = _pair(*size.split(","))
            if pair is not None:
                return pair, "data-size"
        for names, kind in (
            (("data-width", "data-height"), "data-wh"),
            (("coffee-w", "coffee-h"), "coffee"),
            (("width", "height"), "display"),
        ):
            pair = _pair(value(names[0]), value(names[1]))
            if pair is not None:
                return pair, kind
        return None, None

    @staticmethod
    def _srcset(text: str, attr: Attr, where: str, element: int) -> Iterator[_Found]:
        """Split candidates the way the HTML standard's srcset parser does."""
        i, end = attr.start, attr.end
        while i < end:
            while i < end and (text[i] in " \t\n\r\f,"):
                i += 1
            if i >= end:
                return
            url_start = i
            while i < end and text[i] not in " \t\n\r\f":
                i += 1
            url_end = i
            if text[url_end - 1] == ",":
                while url_end > url_start and text[url_end - 1] == ",":
                    url_end -= 1
            else:
                depth = 0
                while i < end and not (text[i] == "," and depth == 0):
                    depth += {"(": 1, ")": -1}.get(text[i], 0)
                    i += 1
            if url_end > url_start:
                decoded = html.unescape(text[url_start:url_end])
                yield _Found(url_start, url_end, decoded, where, "srcset", attr.quote, element)

    @staticmethod
    def _style(text: str, attr: Attr, element: int) -> Iterator[_Found]:
        for match in _CSS_URL.finditer(text, attr.start, attr.end):
            group = next(g for g in ("dq", "sq", "eq", "bare") if match.group(g) is not None)
            s, e = match.span(group)
            if e > s:
                decoded = html.unescape(text[s:e])
                yield _Found(s, e, decoded, "style", "css", attr.quote, element)

    @staticmethod
    def _md(text: str, link: MdLink, element: int, labels: set[str]) -> _Found:
        raw = text[link.start : link.end]
        if link.kind == "text":
            # marked takes an autolinked URL as written: backslashes are not escapes there.
            syntax = "text-angle" if link.angle else "text"
            return _Found(
                link.start, link.end, html.unescape(raw), "text", syntax, "", element,
                wrapped_only=True,
            )  # fmt: skip
        decoded = html.unescape(_BACKSLASH_ESCAPE.sub(r"\1", raw))
        used = link.kind != "markdown-ref" or link.label in labels
        return _Found(
            link.start,
            link.end,
            decoded,
            link.kind,
            "md-angle" if link.angle else "md",
            "",
            element,
            wrapped_only=not used,
        )

    def _classify(self, text: str, post: str, found: list[_Found]) -> list[ImageRef]:
        classified = []
        image_sources = set()
        for item in found:
            result = self.classifier.classify(item.decoded)
            if result is None:
                continue
            classified.append((item, result.source, result.proxied))
            if item.where not in _LINKS and not item.wrapped_only:
                image_sources.add(result.source)
        kept = []
        for item, source, proxied in classified:
            if item.where in _LINKS:
                keep = looks_like_image(source) or source in image_sources
            elif item.where == "markdown-ref":
                keep = proxied or not item.wrapped_only or looks_like_image(source)
            else:
                keep = proxied or not item.wrapped_only
            if keep:
                kept.append((item, source, proxied))
        # In document order, so line numbers are counted in one pass over the text.
        kept.sort(key=lambda found: found[0].start)
        refs = []
        line, counted = 1, 0
        for item, source, proxied in kept:
            line += text.count("\n", counted, item.start)
            counted = item.start
            refs.append(
                ImageRef(
                    post=post,
                    line=line,
                    start=item.start,
                    end=item.end,
                    url=text[item.start : item.end],
                    decoded=item.decoded,
                    source=source,
                    where=item.where,
                    declared=item.declared,
                    declared_kind=item.declared_kind,
                    proxied=proxied,
                    syntax=item.syntax,
                    quote=item.quote,
                    element=item.element,
                )
            )
        return refs
