"""
Pure: a post's text → every image reference in it (:class:`~mirror.models.ImageRef`).

What counts, and the ``where`` vocabulary the reports use:

- front matter keys from ``[scan] front_matter_keys``: ``front-matter:<key>``;
- ``<img>`` ``src``, ``data-src``, ``data-original``, ``data-original-src``, ``data-lazy-src``,
  ``data-gif-url``, ``srcset``/``data-srcset`` (each candidate); ``<source srcset>``;
  ``<video poster>``; ``data-avatar`` on any tag: ``<tag>@<attribute>``;
- ``url(...)`` inside any ``style`` attribute: ``style``;
- ``<a href>`` that names an image file, or the same source as an image in the post (lightbox):
  ``a@href``;
- any other attribute whose whole value is a proxy wrapper: ``<tag>@<attribute>``;
- Markdown ``![alt](url)``: ``markdown``; reference definitions that are wrapped, name an image
  file or are used by an image: ``markdown-ref``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import NamedTuple

from mirror.config import ScanConfig
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
_FRONT_MATTER_OPEN = re.compile(r"\ufeff?(?:[ \t]*\r?\n)*---[ \t]*\r?\n")
_FRONT_MATTER_CLOSE = re.compile(r"^(?:---|\.\.\.)[ \t]*\r?$", re.MULTILINE)
_FRONT_MATTER_KEY = re.compile(r"^([A-Za-z_][\w.-]*)[ \t]*:[ \t]*", re.MULTILINE)
_CSS_URL = re.compile(
    r"url\(\s*(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|&quot;(?P<eq>.*?)&quot;|(?P<bare>[^)\s'\"]*))\s*\)",
    re.IGNORECASE,
)
_BACKSLASH_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_YAML_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")
_YAML_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", " ": " ", "/": "/"}


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


def front_matter_span(text: str) -> tuple[int, int, int] | None:
    """
    Locate the YAML front matter, which may follow a BOM and blank lines.

    Returns:
        (start of its first key line, end of its last line, start of the body), or None.
    """
    opened = _FRONT_MATTER_OPEN.match(text)
    if opened is None:
        return None
    closed = _FRONT_MATTER_CLOSE.search(text, opened.end())
    if closed is None:
        return None
    body = closed.end() + (1 if text.startswith("\n", closed.end()) else 0)
    return opened.end(), closed.start(), body


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


def _yaml_unescape(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "xuU" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _YAML_SIMPLE_ESCAPES.get(code, code)

    return _YAML_ESCAPE.sub(one, value)


def _scalar(text: str, start: int, end: int) -> tuple[int, int, str, str] | None:
    """Parse the YAML scalar in ``text[start:end]`` (one line): (start, end, decoded, quote)."""
    if start >= end:
        return None
    first = text[start]
    if first == "'":
        i = start + 1
        while True:
            i = text.find("'", i, end)
            if i < 0:
                return None
            if text.startswith("''", i):
                i += 2
                continue
            return start + 1, i, text[start + 1 : i].replace("''", "'"), "'"
    if first == '"':
        i = start + 1
        while True:
            i = text.find('"', i, end)
            if i < 0:
                return None
            if text[i - 1] == "\\" and not text[start + 1 : i].endswith("\\\\"):
                i += 1
                continue
            return start + 1, i, _yaml_unescape(text[start + 1 : i]), '"'
    if first in "[{|>&*!%@`#":
        return None
    comment = text.find(" #", start, end)
    stop = end if comment < 0 else comment
    raw = text[start:stop].rstrip(" \t\r")
    return (start, start + len(raw), raw, "") if raw else None


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
        found = list(self._front_matter(text))
        span = front_matter_span(text)
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

    def _front_matter(self, text: str) -> Iterator[_Found]:
        span = front_matter_span(text)
        if span is None:
            return
        start, end, _body = span
        element = 0
        for key in _FRONT_MATTER_KEY.finditer(text, start, end):
            if key.group(1) not in self._keys:
                continue
            line_end = text.find("\n", key.end(), end)
            scalar = _scalar(text, key.end(), end if line_end < 0 else line_end)
            if scalar is not None:
                s, e, decoded, quote = scalar
                yield _Found(s, e, decoded, f"front-matter:{key.group(1)}", "yaml", quote, element)
                element += 1

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
        decoded = html.unescape(_BACKSLASH_ESCAPE.sub(r"\1", raw))
        used = link.kind == "markdown" or link.label in labels
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
            if item.where != "a@href" and not item.wrapped_only:
                image_sources.add(result.source)
        refs = []
        for item, source, proxied in classified:
            if item.where == "a@href":
                keep = looks_like_image(source) or source in image_sources
            elif item.where == "markdown-ref":
                keep = proxied or not item.wrapped_only or looks_like_image(source)
            else:
                keep = proxied or not item.wrapped_only
            if not keep:
                continue
            refs.append(
                ImageRef(
                    post=post,
                    line=text.count("\n", 0, item.start) + 1,
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
        refs.sort(key=lambda r: r.start)
        return refs
