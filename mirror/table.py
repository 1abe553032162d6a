"""
The scan table: columns aligned by display width, so Chinese post names line up.

A CJK character takes two terminal cells and a combining mark none, so ``len`` would misalign
every row that holds one. The POST column is as wide as the widest post path (whole paths, never
cut); the SOURCE column, last, is cut with ``…`` to the terminal's width (``COLUMNS`` first) when
stdout is a terminal or ``COLUMNS`` is set, and left whole when the table goes to a pipe.
"""

from __future__ import annotations

import functools
import os
import shutil
import unicodedata
from typing import TextIO

from mirror.models import ImageRef

WHERE_WIDTH = 22
LINE_WIDTH = 5
KIND_WIDTH = 7
DECLARED_WIDTH = 9
# A source cut to fit the terminal keeps at least this many cells.
MIN_SOURCE = 24


@functools.lru_cache(maxsize=4096)
def _cell(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


@functools.lru_cache(maxsize=8192)
def _wide(text: str) -> int:
    return sum(_cell(char) for char in text)


def width(text: str) -> int:
    """Return how many terminal cells ``text`` takes."""
    # A post's path is measured once per reference, and most URLs are ASCII: both are cheap.
    return len(text) if text.isascii() else _wide(text)


def pad(text: str, cells: int) -> str:
    """Pad ``text`` with spaces to ``cells`` terminal cells (never cut it)."""
    return text + " " * max(0, cells - width(text))


def fit(text: str, cells: int) -> str:
    """Cut ``text`` to at most ``cells`` terminal cells, ending it with ``…`` when cut."""
    if width(text) <= cells:
        return text
    out, used = [], 0
    for char in text:
        used += _cell(char)
        if used > cells - 1:
            break
        out.append(char)
    return "".join(out) + "…"


def terminal_columns(stream: TextIO) -> int | None:
    """The width to fit rows to: ``COLUMNS``, else the terminal's; None for a pipe."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if stream.isatty():
        return shutil.get_terminal_size().columns
    return None


class ScanTable:
    """
    Formats references as aligned rows; ``post_width`` is the widest post path's width.

    When whole paths leave no room for the source on a terminal of ``columns`` cells, each post
    gets a line of its own (its whole path) and its references follow, indented, without the
    POST column: paths stay whole and rows still fit.
    """

    def __init__(self, post_width: int, columns: int | None) -> None:
        self.post_width = max(post_width, len("POST"))
        self.columns = columns
        rest = LINE_WIDTH + WHERE_WIDTH + KIND_WIDTH + DECLARED_WIDTH + 10 + MIN_SOURCE
        self.grouped = columns is not None and self.post_width + 2 + rest > columns

    def _join(self, post: str, line: str, where: str, kind: str, declared: str, source: str) -> str:
        rest = (
            f"{line:>{LINE_WIDTH}}  {where:<{WHERE_WIDTH}}  {kind:<{KIND_WIDTH}}  "
            f"{declared:<{DECLARED_WIDTH}}  "
        )
        if self.grouped:
            head, used = "  " + rest, 2 + len(rest)
        else:
            head = f"{pad(post, self.post_width)}  {rest}"
            used = max(self.post_width, width(post)) + 2 + len(rest)
        if self.columns is not None:
            source = fit(source, max(MIN_SOURCE, self.columns - used))
        return head + source

    def header(self) -> str:
        """The column names."""
        names = self._join("POST", "LINE", "WHERE", "KIND", "DECLARED", "SOURCE")
        return "POST\n" + names if self.grouped else names

    def row(self, ref: ImageRef) -> str:
        """One reference."""
        declared = f"{ref.declared[0]}x{ref.declared[1]}" if ref.declared else "-"
        kind = "wrapped" if ref.proxied else "raw"
        return self._join(ref.post, str(ref.line), ref.where, kind, declared, ref.source)

    def rows(self, refs: list[ImageRef]) -> list[str]:
        """One post's references (a heading line with its path first, when grouped)."""
        lines = [self.row(ref) for ref in refs]
        return [refs[0].post, *lines] if self.grouped and refs else lines
