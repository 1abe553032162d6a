"""
Pure: a Markdown post body → its HTML and Markdown regions, with code blocks dropped.

It follows the block rules Hexo's Markdown renderer applies (CommonMark's): fenced and indented
code blocks and Hexo's ``{% codeblock %}`` are code; an HTML block runs to its end condition (a
blank line for most kinds) and Markdown is not processed inside it.

One deliberate departure: an HTML block that opened a ``<pre>`` stays HTML until ``</pre>``,
across blank lines, because the aggregator wraps whole articles in ``<pre>`` and their images must
be found (CommonMark would turn indented lines after a blank line into a code block there).

Every line is looked at a bounded number of times by patterns anchored at its start, and an HTML
block's text is searched for ``<pre>`` once when it ends, so the split is linear in the body.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_WS = " \t\n\r\f"
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
# Possessive: an attribute list has one parse, so a line that is not a complete tag fails in
# one pass instead of retrying every split of its names and values.
_HTML_START_7 = re.compile(
    r"(?:<[A-Za-z][A-Za-z0-9-]*+(?:\s++[A-Za-z_:][\w.:-]*+(?:\s*+=\s*+(?:[^\s\"'=<>`]++|'[^']*+'"
    r"|\"[^\"]*+\"))?+)*+\s*+/?>|</[A-Za-z][A-Za-z0-9-]*+\s*+>)\s*+$"
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


class Work:
    """A count of lexer steps: characters examined plus scanning calls (see :class:`Lexer`)."""

    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps = 0


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


def blocks(text: str, start: int, work: Work | None = None) -> Iterator[tuple[str, int, int]]:
    """
    Split the body into ("html" | "md", start, end) regions; code regions are dropped.

    Args:
        text: the whole post.
        start: where the body starts (after the front matter).
        work: counts the characters of every line read, and each HTML block's rescan.
    """
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
        if work is not None:
            work.steps += nxt - pos + 1
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
            if work is not None:
                work.steps += len(chunk)
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
        kind = _block_start(body, in_para)
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
