"""
Pure: one HTML tag at a given offset → its name, its attributes and their values' exact offsets.

The walk follows the HTML tokenizer's rules for a start or end tag: a name, then attributes (a
name, optionally ``=`` and a ``"``-, ``'``- or un-quoted value) separated by white space or ``/``,
up to ``>``. :func:`walk_tag` is the walk; :func:`parse_tag` matches most tags whole with one regex
first; :data:`SKIP` steps over text and tags that can hold no URL. A tag still open at the end of
the text given is not a tag (see :func:`parse_tag`).
"""

from __future__ import annotations

import re
from typing import NamedTuple


# NamedTuples, not frozen dataclasses: the lexer builds many, and their constructor is C-level.
class Attr(NamedTuple):
    """An attribute; ``start``/``end`` delimit its value without quotes (-1 when it has none)."""

    name: str
    start: int
    end: int
    quote: str


class Tag(NamedTuple):
    """A start tag outside code, its attributes deduplicated the HTML way (first wins)."""

    name: str
    start: int
    end: int
    attrs: tuple[Attr, ...]


_TAG_OPEN = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)(?=[\t\n\f\r />])")
_ATTR_GAP = re.compile(r"[\t\n\f\r /]*")
_ATTR_NAME = re.compile(r"[^\t\n\f\r />][^\t\n\f\r /=>]*")
_ATTR_EQ = re.compile(r"[\t\n\f\r ]*=[\t\n\f\r ]*")
_UNQUOTED = re.compile(r"[^\t\n\f\r >]*")
# The whole of what parse_tag's loop accepts, in one C-level match. Every step is atomic
# (possessive), and a name followed by "=" must take a value, so the regex can never find a
# parse the loop would not (tests/test_markup.py compares them).
_WS = r"[\t\n\f\r ]"


def _tag_pattern(gap: str, name: str, rest: str, dq: str, sq: str, unq: str) -> str:
    value = f"(?:\"{dq}*+\"|'{sq}*+'|(?![\"']){unq}*+)"
    attr = f"(?>{gap}*+{name}{rest}*+(?:(?>{_WS}*+={_WS}*+{value})|(?!{_WS}*+=)))"
    return f"(?=[\\t\\n\\f\\r />]){attr}*+{gap}*+>"


_WHOLE_TAG = re.compile(
    r"<(/?)([A-Za-z][A-Za-z0-9-]*)"
    + _tag_pattern(
        r"[\t\n\f\r /]", r"[^\t\n\f\r />]", r"[^\t\n\f\r /=>]", r'[^"]', r"[^']", r"[^\t\n\f\r >]"
    )
)
# One attribute of a tag _WHOLE_TAG accepted: name, then a "-, '- or un-quoted value.
_ATTR = re.compile(
    r"[\t\n\f\r /]*+([^\t\n\f\r />][^\t\n\f\r /=>]*+)"
    r"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:\"([^\"]*+)\"|'([^']*+)'|([^\t\n\f\r >]*+)))?"
)
_QUOTE_BY_GROUP = {1: "", 2: '"', 3: "'", 4: ""}
# A run of text and of tags that can hold no URL (no "//", no "&") and do not change what is code:
# what the HTML walk steps over without looking. A "/" is allowed only when no "/" follows.
_NO_SLASHES = r"|/(?!/))"
SKIP = re.compile(
    r"(?:[^<]++|<(?![A-Za-z/!?])|</?(?!(?i:code|script|style|textarea|title|xmp|iframe|noembed"
    r"|noframes)[\t\n\f\r />])[A-Za-z][A-Za-z0-9-]*"
    + _tag_pattern(
        r"(?:[\t\n\f\r ]" + _NO_SLASHES,
        r"[^\t\n\f\r />&]",
        r"[^\t\n\f\r /=>&]",
        r'(?:[^"&/]' + _NO_SLASHES,
        r"(?:[^'&/]" + _NO_SLASHES,
        r"(?:[^\t\n\f\r >&/]" + _NO_SLASHES,
    )
    + r")*+"
)
# Walk states remembered per position (key = 2 * position + state).
_AT_ATTR, _AT_VALUE = 0, 1


def parse_tag(text: str, start: int, end: int) -> tuple[Tag | None, int, bool]:
    """
    Parse the tag starting at ``text[start] == '<'``.

    Returns:
        (tag, next position, is_end_tag); tag is None when the text there is not a tag (it is
        then plain text, as ``<<a`` is in HTML, and the next position is ``start + 1``), when
        the tag is still open at ``end`` (the next position is ``end``: the browser drops a tag
        cut by the end of the file), or when it is an end tag (the name is in a Tag with no
        attributes).

    Most tags (``<p>``, ``<span style="...">``) can hold no remote URL: without ``//`` there is
    no absolute or scheme-relative URL, and without ``&`` no entity can spell one. Those are
    matched whole by one regex and returned without attributes; only the others are walked
    attribute by attribute (tests/test_markup.py checks both ways agree).
    """
    whole = _WHOLE_TAG.match(text, start, end)
    if whole is None:
        return parse_tag_attrs(text, start, end)
    stop = whole.end()
    name, closing = whole.group(2).lower(), whole.group(1) == "/"
    if text.find("//", start, stop) < 0 and text.find("&", start, stop) < 0:
        return Tag(name, start, stop, ()), stop, closing
    attrs: list[Attr] = []
    seen: set[str] = set()
    # The regex has proved the tag well formed, so its attributes can be read in one pass.
    for attr in _ATTR.finditer(text, whole.end(2), stop - 1):
        attr_name = attr.group(1).lower()
        if attr_name in seen:
            continue
        seen.add(attr_name)
        group = attr.lastindex or 1
        quote = _QUOTE_BY_GROUP[group]
        if group == 1:
            attrs.append(Attr(attr_name, -1, -1, ""))
        else:
            attrs.append(Attr(attr_name, attr.start(group), attr.end(group), quote))
    return Tag(name, start, stop, tuple(attrs)), stop, closing


def parse_tag_attrs(text: str, start: int, end: int) -> tuple[Tag | None, int, bool]:
    """:func:`parse_tag` without the shortcut: every attribute, with its value's offsets."""
    tag, after, closing, _read = walk_tag(text, start, end, None)
    return tag, after, closing


def walk_tag(
    text: str, start: int, end: int, dead: dict[int, int] | None
) -> tuple[Tag | None, int, bool, int]:
    """
    Walk the tag at ``text[start]`` attribute by attribute (see :func:`parse_tag`).

    Args:
        dead: (position, state) keys from which a walk already ran into a bound without finding
            the tag's ``>``, each with that bound; the walk stops at one whose bound reaches
            ``end`` and adds the keys it passed when it fails. None walks without memory.

    Returns:
        :func:`parse_tag`'s triple and the number of characters read.
    """
    opened = _TAG_OPEN.match(text, start, end)
    if opened is None:
        return None, start + 1, False, 1
    closing = opened.group(1) == "/"
    name = opened.group(2).lower()
    attrs: list[Attr] = []
    seen: set[str] = set()
    passed: list[int] = []
    i = opened.end()
    while True:
        if dead is not None:
            key = 2 * i + _AT_ATTR
            if dead.get(key, -1) >= end:
                return _dead_end(dead, passed, start, i, end)
            passed.append(key)
        i = _ATTR_GAP.match(text, i, end).end()  # type: ignore[union-attr]  # matches empty
        if i >= end:
            return _dead_end(dead, passed, start, i, end)
        if text[i] == ">":
            break
        attr = _ATTR_NAME.match(text, i, end)
        if attr is None:
            return _dead_end(dead, passed, start, i, end)
        attr_name = attr.group().lower()
        i = attr.end()
        vstart = vend = -1
        quote = ""
        eq = _ATTR_EQ.match(text, i, end)
        if eq is not None:
            i = eq.end()
            if i >= end:
                return _dead_end(dead, passed, start, i, end)
            if dead is not None:
                key = 2 * i + _AT_VALUE
                if dead.get(key, -1) >= end:
                    return _dead_end(dead, passed, start, i, end)
                passed.append(key)
            if text[i] in "\"'":
                quote = text[i]
                close = text.find(quote, i + 1, end)
                if close < 0:
                    return _dead_end(dead, passed, start, end, end)
                vstart, vend, i = i + 1, close, close + 1
            else:
                vstart = i
                i = vend = _UNQUOTED.match(text, i, end).end()  # type: ignore[union-attr]
        if attr_name not in seen:
            seen.add(attr_name)
            attrs.append(Attr(attr_name, vstart, vend, quote))
    return Tag(name, start, i + 1, tuple(attrs)), i + 1, closing, i + 1 - start


def _dead_end(
    dead: dict[int, int] | None, passed: list[int], start: int, reached: int, end: int
) -> tuple[None, int, bool, int]:
    if dead is not None:
        for key in passed:
            dead[key] = end
    return None, end, False, reached - start + 1
