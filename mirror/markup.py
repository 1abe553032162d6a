"""
Pure: a post body → the tags and Markdown links that may hold image URLs, with exact offsets.

BeautifulSoup gives no attribute offsets, so this is the one tokenizer that decides what counts.
It follows the rules Hexo's Markdown renderer applies (CommonMark's): fenced and indented code
blocks and inline code spans are code; an HTML block runs to its end condition and Markdown is not
processed inside it; inside HTML, everything within ``<code>`` is code (even real tags), raw-text
elements (``<script>``, ``<style>``, ...) hold no tags, and comments hold nothing.

One deliberate departure: an HTML block that opened a ``<pre>`` stays HTML until ``</pre>``,
across blank lines, because the aggregator wraps whole articles in ``<pre>`` and their images must
be found (CommonMark would turn indented lines after a blank line into a code block there).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import NamedTuple

_WS = " \t\n\r\f"


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


class MdLink(NamedTuple):
    """A Markdown image destination (``markdown``) or reference definition (``markdown-ref``)."""

    kind: str
    start: int
    end: int
    angle: bool
    label: str


Event = Tag | MdLink

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
_SKIP = re.compile(
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
_INLINE = re.compile(r"`+|<(?=[A-Za-z/!?])|!\[")
_MD_IMAGE = re.compile(
    r"""!\[(?:[^\[\]\\]|\\.|\[(?:[^\[\]\\]|\\.)*\])*\]
    \([ \t]*\n?[ \t]*
    (?:<(?P<angle>(?:[^<>\n\\]|\\.)*)>|(?P<bare>(?:[^\s()\\<]|\\.|\((?:[^\s()\\]|\\.)*\))+))
    (?:[ \t]*\n?[ \t]*(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\((?:[^()\\]|\\.)*\)))?
    [ \t]*\n?[ \t]*\)""",
    re.VERBOSE | re.DOTALL,
)
_MD_IMAGE_REF = re.compile(
    r"!\[(?P<alt>(?:[^\[\]\\]|\\.)*)\](?:\[(?P<label>(?:[^\[\]\\]|\\.)*)\]|(?![(\[]))"
)
_MD_REF_DEF = re.compile(
    r"^ {0,3}\[(?P<label>(?:[^\[\]\\]|\\.)+)\]:[ \t]*\n?[ \t]*"
    r"(?:<(?P<angle>[^<>\n]*)>|(?P<bare>[^\s<][^\s]*))",
    re.MULTILINE,
)
_RAW_TEXT = frozenset(
    {"script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes"}
)

_FENCE = re.compile(r"(`{3,}|~{3,})([^\n]*)")
_LIST_ITEM = re.compile(r"(?:[-+*]|\d{1,9}[.)])(?:[ \t]+|$)")
_HEADING = re.compile(r"#{1,6}(?:[ \t]|$)")
_HEXO_CODE = re.compile(r"\{%-?\s*(?:codeblock|code|raw)\b")
_HEXO_CODE_END = re.compile(r"\{%-?\s*(?:endcodeblock|endcode|endraw)\s*-?%\}")
_HTML_START_1 = re.compile(r"<(?:script|pre|style|textarea)(?:[\s>]|$)", re.IGNORECASE)
_HTML_END_1 = re.compile(r"</(?:script|pre|style|textarea)>", re.IGNORECASE)
_HTML_START_6 = re.compile(
    r"</?(?:address|article|aside|base|basefont|blockquote|body|caption|center|col|colgroup|dd"
    r"|details|dialog|dir|div|dl|dt|fieldset|figcaption|figure|footer|form|frame|frameset"
    r"|h[1-6]|head|header|hr|html|iframe|legend|li|link|main|menu|menuitem|nav|noframes|ol"
    r"|optgroup|option|p|param|search|section|summary|table|tbody|td|tfoot|th|thead|title|tr"
    r"|track|ul)(?:[\s>]|/>|$)",
    re.IGNORECASE,
)
_HTML_START_7 = re.compile(
    r"(?:<[A-Za-z][A-Za-z0-9-]*(?:\s+[A-Za-z_:][\w.:-]*(?:\s*=\s*(?:[^\s\"'=<>`]+|'[^']*'"
    r"|\"[^\"]*\"))?)*\s*/?>|</[A-Za-z][A-Za-z0-9-]*\s*>)\s*$"
)
# (start pattern, end pattern) for HTML block kinds 2-5; kind 1 is handled with _HTML_END_1.
_HTML_SIMPLE = (
    (re.compile(r"<!--"), re.compile(r"-->")),
    (re.compile(r"<\?"), re.compile(r"\?>")),
    (re.compile(r"<![A-Za-z]"), re.compile(r">")),
    (re.compile(r"<!\[CDATA\["), re.compile(r"\]\]>")),
)
_PRE_OPEN = re.compile(r"<pre(?=[\s>/])", re.IGNORECASE)
_PRE_CLOSE = re.compile(r"</pre\s*>", re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _closing_ticks(n: int) -> re.Pattern[str]:
    return re.compile(rf"(?<!`)`{{{n}}}(?!`)")


@functools.lru_cache(maxsize=32)
def _raw_text_end(name: str) -> re.Pattern[str]:
    return re.compile(rf"</{name}(?=[\t\n\f\r />])", re.IGNORECASE)


def _indent(line: str) -> int:
    """Count leading columns with tabs to multiples of four, as CommonMark does."""
    col = 0
    for ch in line:
        if ch == " ":
            col += 1
        elif ch == "\t":
            col += 4 - col % 4
        else:
            break
    return col


def _strip_columns(line: str, columns: int) -> str:
    col = 0
    for i, ch in enumerate(line):
        if col >= columns or ch not in " \t":
            return line[i:]
        col += 1 if ch == " " else 4 - col % 4
    return ""


def _escaped(text: str, pos: int) -> bool:
    count = 0
    while pos > 0 and text[pos - 1] == "\\":
        count += 1
        pos -= 1
    return count % 2 == 1


def parse_tag(text: str, start: int, end: int) -> tuple[Tag | None, int, bool]:
    """
    Parse the tag starting at ``text[start] == '<'``.

    Returns:
        (tag, next position, is_end_tag); tag is None when the text there is not a tag (it is
        then plain text, as ``<<a`` is in HTML) or when it is an end tag (the name is in a Tag
        with no attributes).

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
    opened = _TAG_OPEN.match(text, start, end)
    if opened is None:
        return None, start + 1, False
    closing = opened.group(1) == "/"
    name = opened.group(2).lower()
    attrs: list[Attr] = []
    seen: set[str] = set()
    i = opened.end()
    while True:
        i = _ATTR_GAP.match(text, i, end).end()  # type: ignore[union-attr]  # matches empty
        if i >= end:
            return None, start + 1, False
        if text[i] == ">":
            break
        attr = _ATTR_NAME.match(text, i, end)
        if attr is None:
            return None, start + 1, False
        attr_name = attr.group().lower()
        i = attr.end()
        vstart = vend = -1
        quote = ""
        eq = _ATTR_EQ.match(text, i, end)
        if eq is not None:
            i = eq.end()
            if i >= end:
                return None, start + 1, False
            if text[i] in "\"'":
                quote = text[i]
                close = text.find(quote, i + 1, end)
                if close < 0:
                    return None, start + 1, False
                vstart, vend, i = i + 1, close, close + 1
            else:
                vstart = i
                i = vend = _UNQUOTED.match(text, i, end).end()  # type: ignore[union-attr]
        if attr_name not in seen:
            seen.add(attr_name)
            attrs.append(Attr(attr_name, vstart, vend, quote))
    return Tag(name, start, i + 1, tuple(attrs)), i + 1, closing


class Lexer:
    """Walks a post body once; tracks ``<code>`` nesting across the whole document."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._code_depth = 0
        self.image_labels: set[str] = set()

    def events(self, start: int, markdown: bool = True) -> Iterator[Event]:
        """Yield every tag and Markdown link outside code, in document order."""
        if not markdown:
            yield from self._html(start, len(self.text))
            return
        for kind, region_start, region_end in self._blocks(start):
            if kind == "html":
                yield from self._html(region_start, region_end)
            else:
                yield from self._inline(region_start, region_end)

    def _tag_at(self, pos: int, end: int) -> tuple[Tag | None, int]:
        """Tokenize markup at ``pos``; return an unmasked start tag (if any) and where to go on."""
        text = self.text
        if text.startswith("<!--", pos):
            close = text.find("-->", pos + 4, end)
            return None, end if close < 0 else close + 3
        if text.startswith(("<!", "<?"), pos):
            close = text.find(">", pos, end)
            return None, end if close < 0 else close + 1
        tag, after, closing = parse_tag(text, pos, end)
        if tag is None:
            return None, after
        if closing:
            if tag.name == "code" and self._code_depth:
                self._code_depth -= 1
            return None, after
        if tag.name in _RAW_TEXT:
            closer = _raw_text_end(tag.name).search(text, after, end)
            after = end if closer is None else closer.start()
        if tag.name == "code":
            self._code_depth += 1
            return None, after
        # A tag without attributes (or shortcut by parse_tag) holds no URL: not an event.
        return (None if self._code_depth or not tag.attrs else tag), after

    def _html(self, start: int, end: int) -> Iterator[Event]:
        text = self.text
        skip = _SKIP.match
        pos = start
        # Each pass consumes at least one character (skip, or _tag_at at a "<"): bounded.
        while True:
            # Most of a post (text, and tags that hold no URL and are not code) in one C call.
            pos = skip(text, pos, end).end()  # type: ignore[union-attr]  # matches empty
            if pos >= end:
                return
            tag, pos = self._tag_at(pos, end)
            if tag is not None:
                yield tag

    def _inline(self, start: int, end: int) -> Iterator[Event]:
        text = self.text
        for ref in _MD_REF_DEF.finditer(text, start, end):
            angle = ref.group("angle") is not None
            group = "angle" if angle else "bare"
            label = " ".join(ref.group("label").split()).casefold()
            yield MdLink("markdown-ref", ref.start(group), ref.end(group), angle, label)
        pos = start
        while True:
            found = _INLINE.search(text, pos, end)
            if found is None:
                return
            at = found.start()
            if _escaped(text, at):
                pos = at + 1
                continue
            token = found.group()
            if token[0] == "`":
                close = _closing_ticks(len(token)).search(text, found.end(), end)
                pos = found.end() if close is None else close.end()
            elif token == "<":
                tag, pos = self._tag_at(at, end)
                if tag is not None:
                    yield tag
            else:
                yield from self._md_image(at, end)
                pos = found.end()

    def _md_image(self, at: int, end: int) -> Iterator[Event]:
        if self._code_depth:
            return
        image = _MD_IMAGE.match(self.text, at, end)
        if image is not None:
            angle = image.group("angle") is not None
            group = "angle" if angle else "bare"
            yield MdLink("markdown", image.start(group), image.end(group), angle, "")
            return
        by_ref = _MD_IMAGE_REF.match(self.text, at, end)
        if by_ref is not None:
            label = by_ref.group("label") or by_ref.group("alt")
            self.image_labels.add(" ".join(label.split()).casefold())

    def _blocks(self, start: int) -> Iterator[tuple[str, int, int]]:
        """Split the body into ("html" | "md", start, end) regions; code regions are dropped."""
        text = self.text
        n = len(text)
        mode = ""  # "", "fence", "hexo", "indented", "html-blank", "html-until"
        fence = ""
        until: re.Pattern[str] | None = None
        region_start = -1
        md_start = -1
        in_para = False
        list_indent: int | None = None
        code_indent = 0
        pos = start
        while pos < n:
            nl = text.find("\n", pos)
            line_end = n if nl < 0 else nl
            nxt = n if nl < 0 else nl + 1
            line = text[pos:line_end].rstrip("\r")
            blank = not line.strip(_WS)
            if mode == "fence":
                closing = _FENCE.fullmatch(line.strip(" \t"))
                if (
                    closing is not None
                    and _indent(line) - (list_indent or 0) < 4
                    and closing.group(1)[0] == fence[0]
                    and len(closing.group(1)) >= len(fence)
                    and not closing.group(2).strip()
                ):
                    mode = ""
                pos = nxt
                continue
            if mode == "hexo":
                if _HEXO_CODE_END.search(line):
                    mode = ""
                pos = nxt
                continue
            if mode == "html-until":
                assert until is not None
                if until.search(line):
                    mode = ""
                    yield "html", region_start, nxt
                pos = nxt
                continue
            if mode == "html-blank":
                if not blank:
                    pos = nxt
                    continue
                chunk = text[region_start:pos]
                if len(_PRE_OPEN.findall(chunk)) > len(_PRE_CLOSE.findall(chunk)):
                    mode, until = "html-until", _PRE_CLOSE
                    pos = nxt
                    continue
                mode = ""
                yield "html", region_start, pos
            if mode == "indented":
                if blank or _indent(line) >= code_indent:
                    pos = nxt
                    continue
                mode = ""
            if blank:
                if md_start >= 0:
                    yield "md", md_start, pos
                    md_start = -1
                in_para = False
                pos = nxt
                continue
            indent = _indent(line)
            if list_indent is not None and indent < list_indent and not in_para:
                list_indent = None
            base = list_indent if list_indent is not None and indent >= list_indent else 0
            if indent - base >= 4 and not in_para:
                mode, code_indent = "indented", base + 4
                pos = nxt
                continue
            body = _strip_columns(line, indent)
            kind = self._block_start(body, in_para)
            if kind:
                if md_start >= 0:
                    yield "md", md_start, pos
                    md_start = -1
                in_para = False
                if kind == "fence":
                    opened = _FENCE.match(body)
                    assert opened is not None
                    mode, fence = "fence", opened.group(1)
                elif kind == "hexo":
                    mode = "hexo"
                elif kind == "html-blank":
                    mode, region_start = "html-blank", pos
                else:
                    until = _HTML_END_1 if kind == "html-raw" else _HTML_SIMPLE[int(kind[-1])][1]
                    region_start = pos
                    tail = body[1:]  # the end marker may stand on the start line itself
                    if until.search(tail):
                        yield "html", pos, nxt
                    else:
                        mode = "html-until"
                pos = nxt
                continue
            item = _LIST_ITEM.match(body)
            if item is not None:
                list_indent = indent + (item.end() if item.group().strip() != body else 2)
            if md_start < 0:
                md_start = pos
            in_para = _HEADING.match(body) is None
            pos = nxt
        if mode in ("html-blank", "html-until"):
            yield "html", region_start, n
        if md_start >= 0:
            yield "md", md_start, n

    @staticmethod
    def _block_start(body: str, in_para: bool) -> str:
        """Name the block a line (indent removed) opens, or "" for paragraph text."""
        if body.startswith(("```", "~~~")):
            opened = _FENCE.match(body)
            if opened is not None and not (body[0] == "`" and "`" in opened.group(2)):
                return "fence"
        if body.startswith("{%") and _HEXO_CODE.match(body):
            return "hexo"
        if not body.startswith("<"):
            return ""
        if _HTML_START_1.match(body):
            return "html-raw"
        for i, (start_pattern, _end) in enumerate(_HTML_SIMPLE):
            if start_pattern.match(body):
                return f"html-{i}"
        if _HTML_START_6.match(body):
            return "html-blank"
        if not in_para and _HTML_START_7.match(body):
            return "html-blank"
        return ""
