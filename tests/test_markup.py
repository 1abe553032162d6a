"""
The tokenizer's shortcuts find exactly what the plain attribute-by-attribute walk finds.

``parse_tag`` and ``Lexer._html`` step over tags that can hold no URL with one regex; here a
reference lexer that walks every ``<`` with ``parse_tag_attrs`` (the plain loop) is run on the
same text, on every fixture and on generated markup, and the references must be identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror import extract as extract_module
from mirror import markup as markup_module
from mirror.config import ScanConfig
from mirror.extract import Extractor
from mirror.markup import Event, Lexer, parse_tag, parse_tag_attrs
from mirror.rewrite import decode

POSTS = Path(__file__).parent / "data" / "posts"


class ReferenceLexer(Lexer):
    """The walk before the shortcuts: every "<", parsed attribute by attribute."""

    def _html(self, start: int, end: int) -> Iterator[Event]:
        pos = start
        while True:
            pos = self.text.find("<", pos, end)
            if pos < 0:
                return
            tag, pos = self._tag_at(pos, end)
            if tag is not None:
                yield tag


def both(text: str, name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple], list[tuple]]:
    """(fast, reference) references of ``text``, as comparable tuples without element numbers."""
    extractor = Extractor(ScanConfig())

    def key(refs: list) -> list[tuple]:  # type: ignore[type-arg]
        return [(r.start, r.end, r.source, r.where, r.declared, r.proxied, r.line) for r in refs]

    fast = key(extractor(text, name))
    with monkeypatch.context() as patch:
        patch.setattr(extract_module, "Lexer", ReferenceLexer)
        patch.setattr(markup_module, "parse_tag", parse_tag_attrs)
        reference = key(Extractor(ScanConfig())(text, name))
    return fast, reference


@pytest.mark.parametrize("path", sorted(p for p in POSTS.rglob("*") if p.is_file()), ids=str)
def test_fixtures_same_references(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, reference = both(decode(path.read_bytes()), path.name, monkeypatch)
    assert reference == fast
    assert fast or path.name in ("code.md", "control.md", "malformed.md")


TAG_PIECES = st.sampled_from(
    ["<", ">", "/", "//", "=", '"', "'", " ", "\n", "a", "img", "src", "p", "code", "script",
     "&amp;", "http:", "x.jpg", "https://cors.zfour.workers.dev/?http://o.example/i.png",
     "data-original", "style", "url(", ")", "<!--", "-->", "`", "\t", "srcset", " 2x,"]
)  # fmt: skip


@given(st.lists(TAG_PIECES, max_size=40).map("".join))
@settings(max_examples=400, deadline=None)
def test_parse_tag_agrees_with_the_plain_walk(text: str) -> None:
    for start in (i for i, ch in enumerate(text) if ch == "<"):
        fast, fast_next, fast_closing = parse_tag(text, start, len(text))
        slow, slow_next, slow_closing = parse_tag_attrs(text, start, len(text))
        assert (fast is None) == (slow is None), text
        assert (fast_next, fast_closing) == (slow_next, slow_closing), text
        if fast is not None and slow is not None:
            assert (fast.name, fast.start, fast.end) == (slow.name, slow.start, slow.end)
            if fast.attrs or "//" in text[start : fast.end] or "&" in text[start : fast.end]:
                assert fast.attrs == slow.attrs, text


@given(st.lists(TAG_PIECES, max_size=60).map("".join))
@settings(max_examples=300, deadline=None)
def test_lexer_shortcuts_find_the_same_references(text: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("post.html", "post.md"):
            fast, reference = both(text, name, monkeypatch)
            assert reference == fast, text
