"""
Pure: a post body → the tags and Markdown links that may hold image URLs, with exact offsets.

BeautifulSoup gives no attribute offsets, so this is the one tokenizer that decides what counts.
Block structure comes from :mod:`mirror.blocks`. Inside HTML, everything within ``<code>`` is
code (even real tags), raw-text elements (``<script>``, ``<style>``, ...) hold no tags, and
comments hold nothing. In Markdown text it finds what Hexo's renderer (marked, GFM) turns into
images and links: ``![alt](url)``, ``[text](url)`` (whose text may hold an image), reference
definitions, inline tags, and URLs that GFM autolinks (``<https://...>`` and bare
``https://...``, cut where marked cuts them; see :func:`autolink_end`).

Every scan is linear in the post's length:

- In an HTML region a tag left open at the region's end swallows the rest of it, as the browser's
  tokenizer does (end of file inside a tag drops the tag), so a failed tag is read once.
- In Markdown text a string that is not a complete tag is text (marked then finds later tags), so
  the walk is tried again from the next ``<``. The attribute walk is deterministic from a
  (position, state) pair, so a walk that reaches a pair an earlier walk left by failing stops
  there: each pair is walked once. Pairs are taken where a walk starts an attribute and where it
  starts a value; between them a walk reads a name, a gap or one value, which other walks can
  only enter at those pairs or right after a closing quote, so each character is read a bounded
  number of times.
- A code span's closing backtick run is looked up in an index of runs built once per region.

:attr:`Lexer.steps` counts the work: the characters every scanning call was seen to read, plus
one per call. A failed regex scan stops at a delimiter (a quote, bracket, space or ``<``) that
the next step reads again, so the count stays within a constant factor of the real work; the
tests hold adversarial posts to a constant times their length.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterator
from typing import NamedTuple

from mirror.blocks import Work, blocks
from mirror.tags import SKIP, Attr, Tag, parse_tag, parse_tag_attrs, walk_tag

__all__ = [
    "Attr",
    "Event",
    "Lexer",
    "MdLink",
    "Tag",
    "autolink_end",
    "parse_tag",
    "parse_tag_attrs",
]


# A NamedTuple, not a frozen dataclass: the lexer builds many; its constructor is C-level.
class MdLink(NamedTuple):
    """
    A URL in Markdown: an image destination (``markdown``), a link destination
    (``markdown-link``), a reference definition (``markdown-ref``) or an autolinked URL in text
    (``text``; ``angle`` when written ``<url>``).
    """

    kind: str
    start: int
    end: int
    angle: bool
    label: str


Event = Tag | MdLink

_INLINE = re.compile(r"`+|<(?=[A-Za-z/!?])|!?\[|(?i:https?://)")
_TICKS = re.compile(r"`+")
# Link text with one level of nested brackets, then a destination and an optional title.
_LABEL = r"\[(?P<label>(?:[^\[\]\\]|\\.|\[(?:[^\[\]\\]|\\.)*\])*)\]"
_DEST = (
    r"\([ \t]*\n?[ \t]*"
    r"(?:<(?P<angle>(?:[^<>\n\\]|\\.)*)>|(?P<bare>(?:[^\s()\\<]|\\.|\((?:[^\s()\\]|\\.)*\))+))"
    r"(?:[ \t]*\n?[ \t]*(?:\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|\((?:[^()\\]|\\.)*\)))?"
    r"[ \t]*\n?[ \t]*\)"
)
_MD_IMAGE = re.compile("!" + _LABEL + _DEST, re.DOTALL)
_MD_LINK = re.compile(_LABEL + _DEST, re.DOTALL)
_MD_IMAGE_REF = re.compile(
    r"!\[(?P<alt>(?:[^\[\]\\]|\\.)*)\](?:\[(?P<label>(?:[^\[\]\\]|\\.)*)\]|(?![(\[]))"
)
_MD_REF_DEF = re.compile(
    r"^ {0,3}\[(?P<label>(?:[^\[\]\\]|\\.)+)\]:[ \t]*\n?[ \t]*"
    r"(?:<(?P<angle>[^<>\n]*)>|(?P<bare>[^\s<][^\s]*))",
    re.MULTILINE,
)
# What JavaScript's \s matches: marked's patterns are JavaScript regexes.
JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# marked's GFM autolink literal before its path validation: scheme, a domain character, then
# anything up to white space or "<"; and its <scheme:...> autolink.
_URL_HEAD = re.compile(r"(?i:https?)://[A-Za-z0-9-]")
_URL_RUN = re.compile(rf"[^{JS_SPACE}<]*+")
_AUTOLINK = re.compile(rf"<[A-Za-z][A-Za-z0-9+.-]{{1,31}}:[^{JS_SPACE}\x00-\x1f<>]*+>")
# Characters marked drops from the end of an autolinked URL, one by one.
TRAILING = frozenset("?!.,:;*_'\"~)")
_ASCII_ALNUM = frozenset(string.ascii_letters + string.digits)
_RAW_TEXT = frozenset(
    {"script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes"}
)


@functools.lru_cache(maxsize=32)
def _raw_text_end(name: str) -> re.Pattern[str]:
    return re.compile(rf"</{name}(?=[\t\n\f\r />])", re.IGNORECASE)


def _escaped(text: str, pos: int) -> bool:
    count = 0
    while pos > 0 and text[pos - 1] == "\\":
        count += 1
        pos -= 1
    return count % 2 == 1


def autolink_end(text: str, start: int, end: int) -> int:
    """
    Return where marked ends the autolinked URL that ``text[start:end]`` would be without cuts.

    marked's extended autolink path validation: a ``(`` with no ``)`` after it ends the URL (a
    ``(...)`` pair stays whole); then trailing ``?!.,:;*_'"~)`` and a trailing entity-like
    ``&name;`` go, one at a time, until none is left (marked repeats its cut until nothing
    changes; this reaches the same end in one pass, reading each character at most twice).
    """
    return _autolink_end(text, start, end, lambda at, stop: text.find(")", at, stop))


def _autolink_end(text: str, start: int, end: int, find_close: Callable[[int, int], int]) -> int:
    floor = start
    i = start
    while True:
        opened = text.find("(", i, end)
        if opened < 0:
            break
        closed = find_close(opened + 1, end)
        if closed < 0:
            end = opened
            break
        i = floor = closed + 1
    while end > floor:
        last = text[end - 1]
        if last == ";":
            j = end - 2
            while j > floor and text[j] in _ASCII_ALNUM:
                j -= 1
            if j < end - 2 and text[j] == "&":
                end = j
                continue
        if last not in TRAILING:
            break
        end -= 1
    return end


class Lexer:
    """
    Walks a post body once; tracks ``<code>`` nesting across the whole document.

    Args:
        text: the whole post.
        memo: remember the walk states that led to an unclosed tag in Markdown text (only the
            tests turn this off, to compare with the walk without memory).
    """

    def __init__(self, text: str, memo: bool = True) -> None:
        self.text = text
        self._code_depth = 0
        # marked's inLink: between <a ...> and </a> in Markdown text, URLs are not autolinked.
        self._in_a = False
        self.image_labels: set[str] = set()
        self.work = Work()
        self._dead: dict[int, int] | None = {} if memo else None
        self._runs: dict[int, list[int]] | None = None
        self._run_next: dict[int, int] = {}
        # The run of text without white space a URL was last found in, and the last ")" search.
        self._run = (0, 0)
        self._close = (0, -2)

    @property
    def steps(self) -> int:
        """The work done so far (see the module docstring)."""
        return self.work.steps

    def events(self, start: int, markdown: bool = True) -> Iterator[Event]:
        """Yield every tag and Markdown link outside code, in document order."""
        if not markdown:
            yield from self._html(start, len(self.text))
            return
        for kind, region_start, region_end in blocks(self.text, start, self.work):
            if kind == "html":
                yield from self._html(region_start, region_end)
            else:
                yield from self._inline(region_start, region_end)

    def _tag_at(self, pos: int, end: int, inline: bool = False) -> tuple[Tag | None, int]:
        """Tokenize markup at ``pos``; return an unmasked start tag (if any) and where to go on."""
        text = self.text
        work = self.work
        if text.startswith("<!--", pos):
            close = text.find("-->", pos + 4, end)
            after = end if close < 0 else close + 3
            work.steps += after - pos + 1
            return None, after
        if text.startswith(("<!", "<?"), pos):
            close = text.find(">", pos, end)
            after = end if close < 0 else close + 1
            work.steps += after - pos + 1
            return None, after
        if inline:
            tag, after, closing, read = walk_tag(text, pos, end, self._dead)
            work.steps += read + 1
            if tag is None:
                return None, pos + 1  # not a complete tag: text, as marked reads it
            if tag.attrs and text.find("//", pos, after) < 0 and text.find("&", pos, after) < 0:
                tag = tag._replace(attrs=())  # what parse_tag's shortcut returns
            if not closing and not self._in_a and text[pos : pos + 3].lower() == "<a ":
                self._in_a = True
            elif closing and self._in_a and text[pos : pos + 4].lower() == "</a>":
                self._in_a = False
        else:
            tag, after, closing = parse_tag(text, pos, end)
            work.steps += after - pos + 1
            if tag is None:
                return None, after
        if closing:
            if tag.name == "code" and self._code_depth:
                self._code_depth -= 1
            return None, after
        if tag.name in _RAW_TEXT:
            closer = _raw_text_end(tag.name).search(text, after, end)
            stop = end if closer is None else closer.start()
            work.steps += stop - after + 1
            after = stop
        if tag.name == "code":
            self._code_depth += 1
            return None, after
        # A tag without attributes (or shortcut by parse_tag) holds no URL: not an event.
        return (None if self._code_depth or not tag.attrs else tag), after

    def _html(self, start: int, end: int) -> Iterator[Event]:
        text = self.text
        skip = SKIP.match
        work = self.work
        pos = start
        # Each pass consumes at least one character (skip, or _tag_at at a "<"): bounded. A skip
        # that stops at a "<" read no further than the tag _tag_at then reads (or swallows).
        while True:
            # Most of a post (text, and tags that hold no URL and are not code) in one C call.
            stop = skip(text, pos, end).end()  # type: ignore[union-attr]  # matches empty
            work.steps += stop - pos + 1
            pos = stop
            if pos >= end:
                return
            tag, pos = self._tag_at(pos, end)
            if tag is not None:
                yield tag

    def _inline(self, start: int, end: int) -> Iterator[Event]:
        text = self.text
        work = self.work
        # Definition lines are not text: their URLs are not autolinked.
        definitions: list[tuple[int, int]] = []
        for ref in _MD_REF_DEF.finditer(text, start, end):
            angle = ref.group("angle") is not None
            group = "angle" if angle else "bare"
            label = " ".join(ref.group("label").split()).casefold()
            yield MdLink("markdown-ref", ref.start(group), ref.end(group), angle, label)
            line_end = text.find("\n", ref.end(), end)
            definitions.append((ref.start(), end if line_end < 0 else line_end))
        work.steps += end - start + 1
        self._runs = None
        next_definition = 0
        # Inside a link's text: where it ends, where the link ends, and the link's destination.
        label_end = resume = -1
        link: MdLink | None = None
        pos = start
        while True:
            stop = end if label_end < 0 else label_end
            found = _INLINE.search(text, pos, stop)
            if found is None:
                work.steps += stop - pos + 1
                if link is None:
                    return
                yield link
                pos, label_end, link = resume, -1, None
                continue
            at = found.start()
            work.steps += found.end() - pos + 1
            token = found.group()
            first = token[0]
            if first in "`<![" and _escaped(text, at):
                pos = at + 1
            elif first == "`":
                close = self._closing_run(len(token), found.end(), start, end)
                pos = found.end() if close < 0 or close >= stop else close + len(token)
            elif first == "<":
                auto = _AUTOLINK.match(text, at, stop)
                if auto is not None:
                    work.steps += auto.end() - at + 1
                    if label_end < 0 and not self._code_depth and not self._in_a:
                        yield MdLink("text", at + 1, auto.end() - 1, True, "")
                    pos = auto.end()
                    continue
                tag, pos = self._tag_at(at, stop, inline=True)
                if tag is not None:
                    yield tag
            elif token == "![":
                image, pos = self._md_image(at, stop)
                if image is not None:
                    yield image
            elif first == "[":
                pos = at + 1
                if label_end >= 0 or self._code_depth:
                    continue  # no link inside a link's text, nothing inside code
                found_link = _MD_LINK.match(text, at, end)
                if found_link is None:
                    continue
                work.steps += found_link.end() - at + 1
                angle = found_link.group("angle") is not None
                group = "angle" if angle else "bare"
                span = found_link.start(group), found_link.end(group)
                link = MdLink("markdown-link", span[0], span[1], angle, "")
                label_end, resume = found_link.end("label"), found_link.end()
            else:
                pos = found.end()
                while next_definition < len(definitions) and definitions[next_definition][1] <= at:
                    next_definition += 1
                in_definition = (
                    next_definition < len(definitions) and definitions[next_definition][0] <= at
                )
                if label_end >= 0 or self._code_depth or self._in_a or in_definition:
                    continue
                url_end = self._bare_url(at, stop)
                if url_end >= 0:
                    pos = url_end
                    yield MdLink("text", at, url_end, False, "")

    def _bare_url(self, at: int, stop: int) -> int:
        """
        Return where the URL that marked autolinks at ``at`` ends, or -1 when there is none.

        Many URLs can start in one run of text without white space (marked cuts each at a "("
        with no ")" after it), so the run's end and the next ")" are remembered: each is
        searched for once per run, not once per URL.
        """
        text = self.text
        if _URL_HEAD.match(text, at, stop) is None:
            return -1
        if not self._run[0] <= at < self._run[1]:
            run_end = _URL_RUN.match(text, at, stop).end()  # type: ignore[union-attr]
            self.work.steps += run_end - at + 1
            self._run = (at, run_end)
            self._close = (at, -2)
        return _autolink_end(text, at, self._run[1], self._next_close)

    def _next_close(self, at: int, stop: int) -> int:
        """``text.find(")", at, stop)``, remembered while the answer stays valid."""
        searched, found = self._close
        if searched <= at and (found == -1 or found >= at):
            return found
        found = self.text.find(")", at, stop)
        self.work.steps += (stop if found < 0 else found) - at + 1
        self._close = (at, found)
        return found

    def _closing_run(self, length: int, after: int, start: int, end: int) -> int:
        """Find the first backtick run of exactly ``length`` at or after ``after``, or -1."""
        if self._runs is None:
            runs: dict[int, list[int]] = {}
            for run in _TICKS.finditer(self.text, start, end):
                runs.setdefault(run.end() - run.start(), []).append(run.start())
            self.work.steps += end - start + 1
            self._runs, self._run_next = runs, {}
        starts = self._runs.get(length)
        if not starts:
            return -1
        # Code spans are opened in document order, so each length's cursor only moves forward.
        i = first = self._run_next.get(length, 0)
        while i < len(starts) and starts[i] < after:
            i += 1
        self._run_next[length] = i
        self.work.steps += i - first + 1
        return starts[i] if i < len(starts) else -1

    def _md_image(self, at: int, end: int) -> tuple[MdLink | None, int]:
        """Read ``![...`` at ``at``; return its destination (if any) and where to go on."""
        if self._code_depth:
            return None, at + 2
        image = _MD_IMAGE.match(self.text, at, end)
        if image is not None:
            self.work.steps += image.end() - at + 1
            angle = image.group("angle") is not None
            group = "angle" if angle else "bare"
            return MdLink("markdown", image.start(group), image.end(group), angle, ""), image.end()
        by_ref = _MD_IMAGE_REF.match(self.text, at, end)
        if by_ref is not None:
            self.work.steps += by_ref.end() - at + 1
            label = by_ref.group("label") or by_ref.group("alt")
            self.image_labels.add(" ".join(label.split()).casefold())
            return None, by_ref.end()
        self.work.steps += 1
        return None, at + 2
