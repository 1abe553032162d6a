"""The scan table's cells: display widths, padding, cutting, and the grouped layout."""

from __future__ import annotations

import pytest

from mirror.table import ScanTable, fit, pad, width


@pytest.mark.parametrize(
    ("text", "cells"),
    [
        ("plain.md", 8),
        ("中文 標題.md", 12),
        ("ｆｕｌｌ", 8),
        ("e\u0301", 1),
        ("", 0),
    ],
)
def test_width_counts_terminal_cells(text: str, cells: int) -> None:
    """Wide and full-width characters take two cells, a combining mark none."""
    assert cells == width(text)


def test_pad_aligns_by_cells_not_characters() -> None:
    """Padded CJK and ASCII names end at the same cell, and nothing is cut."""
    names = ["中文 標題.md", "plain.md", "3700年前古巴比伦.md"]
    padded = [pad(name, 24) + "|" for name in names]
    assert {25} == {width(p) for p in padded}
    assert all(p.startswith(n) for p, n in zip(padded, names, strict=True))


def test_fit_cuts_to_cells_with_an_ellipsis() -> None:
    """A cut text ends with … and never passes its cells, wide characters included."""
    assert "http://exa…" == fit("http://example.com/a.jpg", 11)
    assert 9 >= width(fit("图片/煎蛋/首页/泥板.jpg", 9))
    assert "short" == fit("short", 9)


def test_narrow_terminal_groups_rows_under_whole_paths() -> None:
    """When a whole path leaves no room, the path gets its own line and rows fit the width."""
    assert not ScanTable(10, 120).grouped
    assert not ScanTable(200, None).grouped
    table = ScanTable(90, 80)
    assert table.grouped
    assert table.header().startswith("POST\n")
