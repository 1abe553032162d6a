"""
Pure: a post's front matter → where it is, and the URLs the configured keys hold in it.

Hexo (hexo-front-matter) reads front matter in two forms, YAML between ``---`` lines or JSON
between ``;;;`` lines:

- opened: a first line of ``---`` (or ``;;;``) and the next such line. mirror also allows a BOM
  and, before ``---``, blank lines (the aggregator's posts start with an empty line; Hexo reads
  those the same way, because YAML takes the ``---`` for a document start);
- not opened: everything before the first ``---``/``;;;`` line, when it is a YAML mapping (Hexo
  parses it and keeps it when it gives an object). mirror takes it when its first line is a
  ``key:`` line and every line before the separator is a ``key:`` line, an indented line, a
  ``- `` list item, a ``]`` or ``}`` closing a list, a comment or blank.

A configured key's value counts when it is a scalar (plain, ``'``- or ``"``-quoted), a block list
of scalars (``- url`` lines under the key) or a flow list (``[a, 'b', "c"]``, on one line or
several). JSON front matter is the same with quoted keys and ``"``-quoted strings, which YAML
reads the same way (JSON is YAML's flow style).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

from mirror.blocks import Work

# Blank lines may come before "---" (YAML reads it as a document start), not before ";;;" (Hexo
# then hands the separator to its JSON parser, which fails).
_OPEN = re.compile(r"\ufeff?(?:(?:[ \t]*\r?\n)*(---)|(;;;))[ \t]*\r?\n")
_CLOSE = {
    "---": re.compile(r"^(?:---|\.\.\.)[ \t]*\r?$", re.MULTILINE),
    ";;;": re.compile(r"^;;;[ \t]*\r?$", re.MULTILINE),
}
_SEPARATOR = re.compile(r"(?:-{3,}|;{3,})[ \t]*\r?")
# A top-level mapping key (quoted, or plain up to the first ": "), for the unopened form.
_KEY_LINE = re.compile(
    r"(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s#'\"\-?:,\[\]{}&*!|>%@`](?:[^:\n]|:(?![ \t\r\n]|$))*+)"
    r":(?:[ \t]|\r?$)"
)
_KEY = re.compile(
    r"^(?:\"(?P<dq>[^\"\n]*)\"|'(?P<sq>[^'\n]*)'|(?P<plain>[A-Za-z_][\w.-]*))[ \t]*:[ \t]*",
    re.MULTILINE,
)
_ITEM = re.compile(r"([ \t]*)-(?:[ \t]+|(?=\r?$))")
_DOUBLE_QUOTED = re.compile(r'"((?:[^"\\\n]|\\.)*+)"')
_FLOW_GAP = re.compile(r"(?:[ \t\r\n,]|#[^\n]*)*+")
_FLOW_PLAIN = re.compile(r"[^,\[\]{}\n]*+")
_YAML_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")
_YAML_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", " ": " ", "/": "/"}


class Value(NamedTuple):
    """A URL-shaped value of a configured key; ``syntax`` is ``yaml`` or ``yaml-flow``."""

    start: int
    end: int
    decoded: str
    key: str
    syntax: str
    quote: str


def front_matter_span(text: str, work: Work | None = None) -> tuple[int, int, int] | None:
    """
    Locate the front matter, opened by a ``---``/``;;;`` line or not (see the module docstring).

    Args:
        text: the whole post.
        work: counts the characters read (see :class:`mirror.markup.Lexer`).

    Returns:
        (start of its first key line, end of its last line, start of the body), or None.
    """
    work = work or Work()
    opened = _OPEN.match(text)
    if opened is None:
        return _unopened(text, work)
    closed = _CLOSE[opened.group(1) or opened.group(2)].search(text, opened.end())
    work.steps += (len(text) if closed is None else closed.end()) + 1
    if closed is None:
        return None
    body = closed.end() + (1 if text.startswith("\n", closed.end()) else 0)
    return opened.end(), closed.start(), body


def _unopened(text: str, work: Work) -> tuple[int, int, int] | None:
    """Front matter without its opening line: mapping lines up to a ``---``/``;;;`` line."""
    first = pos = 1 if text.startswith("\ufeff") else 0
    keyed = False
    n = len(text)
    while pos < n:
        nl = text.find("\n", pos)
        line_end = n if nl < 0 else nl
        nxt = n if nl < 0 else nl + 1
        work.steps += nxt - pos + 1
        if _SEPARATOR.fullmatch(text, pos, line_end):
            return (first, pos, nxt) if keyed else None
        head = text[pos]
        # "]" and "}" close a flow collection that a key's line opened (Hexo's JSON has them).
        if head in " \t\r\n#]}" or (head == "-" and _ITEM.match(text, pos, line_end)):
            if not keyed and head not in "\r\n#" and text[pos:line_end].strip():
                return None  # a mapping starts with a key
        elif _KEY_LINE.match(text, pos, line_end):
            keyed = True
        else:
            return None
        pos = nxt
    return None


def _unescape(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "xuU" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _YAML_SIMPLE_ESCAPES.get(code, code)

    return _YAML_ESCAPE.sub(one, value)


def _quoted(text: str, start: int, end: int) -> tuple[int, int, str, str] | None:
    """Parse a quoted scalar starting at ``text[start]`` within one line."""
    if text[start] == "'":
        i = start + 1
        while True:
            i = text.find("'", i, end)
            if i < 0:
                return None
            if text.startswith("''", i):
                i += 2
                continue
            return start + 1, i, text[start + 1 : i].replace("''", "'"), "'"
    found = _DOUBLE_QUOTED.match(text, start, end)
    if found is None:
        return None
    return start + 1, found.end(1), _unescape(found.group(1)), '"'


def scalar(text: str, start: int, end: int) -> tuple[int, int, str, str] | None:
    """Parse the YAML scalar in ``text[start:end]`` (one line): (start, end, decoded, quote)."""
    if start >= end:
        return None
    first = text[start]
    if first in "'\"":
        return _quoted(text, start, end)
    if first in "[{|>&*!%@`#":
        return None
    comment = text.find(" #", start, end)
    stop = end if comment < 0 else comment
    raw = text[start:stop].rstrip(" \t\r")
    return (start, start + len(raw), raw, "") if raw else None


def values(
    text: str, span: tuple[int, int, int], keys: frozenset[str], work: Work | None = None
) -> Iterator[Value]:
    """
    Yield the scalars, and the scalar items of lists, that the configured ``keys`` hold.

    Args:
        text: the whole post.
        span: what :func:`front_matter_span` returned for it.
        keys: the keys whose values are image URLs.
        work: counts the characters read (see :class:`mirror.markup.Lexer`).
    """
    work = work or Work()
    start, end, _body = span
    work.steps += end - start + 1
    for found in _KEY.finditer(text, start, end):
        key = found.group("plain") or found.group("dq") or found.group("sq") or ""
        if key not in keys:
            continue
        line_end = text.find("\n", found.end(), end)
        line_end = end if line_end < 0 else line_end
        at = found.end()
        work.steps += line_end - at + 1
        if at < line_end and text[at] == "[":
            yield from _flow_items(text, at + 1, end, key, work)
        elif not text[at:line_end].strip() or text[at] == "#":
            yield from _block_items(text, line_end + 1, end, key, work)
        else:
            parsed = scalar(text, at, line_end)
            if parsed is not None:
                yield Value(parsed[0], parsed[1], parsed[2], key, "yaml", parsed[3])


def _block_items(text: str, pos: int, end: int, key: str, work: Work) -> Iterator[Value]:
    """The ``- item`` lines of the block list that follows a key with no value on its line."""
    indent = -1
    while pos < end:
        nl = text.find("\n", pos, end)
        line_end = end if nl < 0 else nl
        work.steps += line_end - pos + 2
        item = _ITEM.match(text, pos, line_end)
        line = text[pos:line_end].strip()
        if item is not None and indent in (-1, len(item.group(1))):
            indent = len(item.group(1))
            parsed = scalar(text, item.end(), line_end)
            # "- a: b" is a mapping and "- - a" a nested list, not a URL.
            if parsed is not None and not _structured(parsed[2], parsed[3]):
                yield Value(parsed[0], parsed[1], parsed[2], key, "yaml", parsed[3])
        elif line and not line.startswith("#") and not (indent >= 0 and text[pos] in " \t"):
            return  # the next key: the list has ended
        pos = line_end + 1


def _structured(decoded: str, quote: str) -> bool:
    if quote:
        return False
    return decoded.startswith(("- ", "? ")) or ": " in decoded or decoded.endswith(":")


def _flow_items(text: str, pos: int, end: int, key: str, work: Work) -> Iterator[Value]:
    """The scalar items of a flow list whose ``[`` is just before ``pos``, over lines too."""
    while True:
        gap = _FLOW_GAP.match(text, pos, end).end()  # type: ignore[union-attr]  # matches empty
        work.steps += gap - pos + 1
        pos = gap
        if pos >= end or text[pos] in "]{}[":
            return  # the end, or a nested collection mirror does not read
        if text[pos] in "'\"":
            line_end = text.find("\n", pos, end)
            parsed = _quoted(text, pos, end if line_end < 0 else line_end)
            if parsed is None:
                return
            yield Value(parsed[0], parsed[1], parsed[2], key, "yaml-flow", parsed[3])
            work.steps += parsed[1] + 1 - pos
            pos = parsed[1] + 1
        else:
            plain = _FLOW_PLAIN.match(text, pos, end)
            assert plain is not None  # matches empty
            stop = plain.end()
            comment = text.find(" #", pos, stop)
            raw = text[pos : stop if comment < 0 else comment].rstrip(" \t\r")
            if raw and not _structured(raw, ""):
                yield Value(pos, pos + len(raw), raw, key, "yaml-flow", "")
            if comment >= 0:
                stop = text.find("\n", comment, end)
                stop = end if stop < 0 else stop
            work.steps += stop - pos
            pos = stop
