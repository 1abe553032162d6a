"""
The tokenizer: its shortcuts find exactly what the plain walk finds, and every scan is linear.

``parse_tag`` and ``Lexer._html`` step over tags that can hold no URL with one regex, and the
Markdown text walk remembers the tag walks that failed; here a reference lexer that walks every
``<`` with ``parse_tag_attrs`` (the plain loop, without memory) and finds closing backtick runs by
regex is run on the same text, on every fixture and on generated markup, and the references must
be identical. Adversarial posts are held to a constant number of lexer steps per character.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror import extract as extract_module
from mirror import markup as markup_module
from mirror.blocks import Work
from mirror.config import ScanConfig
from mirror.extract import Extractor
from mirror.frontmatter import front_matter_span, values
from mirror.markup import TRAILING, Event, Lexer, autolink_end, parse_tag, parse_tag_attrs
from mirror.rewrite import decode

REPO = Path(__file__).resolve().parent.parent
POSTS = Path(__file__).parent / "data" / "posts"


@functools.lru_cache(maxsize=64)
def _closing_ticks(n: int) -> re.Pattern[str]:
    return re.compile(rf"(?<!`)`{{{n}}}(?!`)")


class ReferenceLexer(Lexer):
    """The walk before the shortcuts: every "<", attribute by attribute, and no memory."""

    def __init__(self, text: str) -> None:
        super().__init__(text, memo=False)

    def _closing_run(self, length: int, after: int, start: int, end: int) -> int:
        close = _closing_ticks(length).search(self.text, after, end)
        return -1 if close is None else close.start()

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
     "data-original", "style", "url(", ")", "<!--", "-->", "`", "\t", "srcset", " 2x,",
     "![", "[", "]", "(", "``", "\\", "<a ", "</a>", ".", "&x;", "\n\n", "[r]: "]
)  # fmt: skip


@given(st.lists(TAG_PIECES, max_size=40).map("".join))
@settings(max_examples=400, deadline=None)
def test_parse_tag_agrees_with_the_plain_walk(text: str) -> None:
    """The one-regex tag parse and the attribute walk agree on every "<" of generated markup."""
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
    """The fast lexer and the reference lexer find the same references in .html and .md."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("post.html", "post.md"):
            fast, reference = both(text, name, monkeypatch)
            assert reference == fast, text


OPEN_TAG_PIECES = st.sampled_from(
    ["<img ", "<a ", '<a title="', "'", '"', "=", ">", " ", "x", "\n",
     'src="https://cors.zfour.workers.dev/?http://o.example/i.png"', "<code>", "</code>", "</a>"]
)  # fmt: skip


@given(st.lists(OPEN_TAG_PIECES, max_size=50).map("".join))
@settings(max_examples=300, deadline=None)
def test_remembered_failures_find_the_same_references(text: str) -> None:
    """In Markdown text, tags left open are retried: the walk's memory changes nothing found."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, reference = both(text, "post.md", monkeypatch)
        assert reference == fast, text


# --- Linearity: lexer steps per character on adversarial posts ---------------------------------

WRAP = "https://cors.zfour.workers.dev/?"
# Observed: at most 6.1 steps per character; a quadratic scan gives thousands at these sizes.
STEPS_PER_CHAR = 10
SHAPES = ("html-post", "html-block", "md-inline")
# The repeats that made the lexer quadratic (issue #13, row 3).
UNCLOSED_TAGS = ("<img ", '<img a="', '<a title="x <img ')
OTHER_REPEATS = (
    "<a b='", "<a b=c ", "<a\n", '<img src="//a', "<code>", "</code>", '<a href="x">',
    "<!-- ", "<!x ", "<?", "<script>", "![", '![a](b "', "![a](", "[", "[a](", "[[a]", "`a",
    "\\", "<https://x ", "(https://x/", f"{WRAP}http://x/(", "https://x/a;(", "https://x/.",
    "&a;", "*_", "[r]: https://x\n",
)  # fmt: skip


def lexer_steps(unit: str, size: int, shape: str, memo: bool = True) -> tuple[int, int]:
    """(steps, length) of lexing ``size`` characters of ``unit`` repeated, in the given shape."""
    core = unit * (size // len(unit))
    text = {"html-post": core, "html-block": "<div>\n" + core, "md-inline": "x " + core}[shape]
    lexer = Lexer(text, memo=memo)
    for _event in lexer.events(0, markdown=shape != "html-post"):
        pass
    return lexer.steps, len(text)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("unit", UNCLOSED_TAGS)
def test_a_megabyte_of_unclosed_tags_scans_in_linear_steps(unit: str, shape: str) -> None:
    """1 MB of unclosed tags (83 s for 50 KB before) takes a bounded number of steps per char."""
    steps, length = lexer_steps(unit, 1_000_000, shape)
    assert steps <= STEPS_PER_CHAR * length


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("unit", OTHER_REPEATS)
def test_adversarial_repeats_scan_in_linear_steps(unit: str, shape: str) -> None:
    """Repeated half-constructs of every kind take a bounded number of steps per character."""
    steps, length = lexer_steps(unit, 131_072, shape)
    assert steps <= STEPS_PER_CHAR * length


def test_backtick_runs_of_every_length_scan_in_linear_steps() -> None:
    """Unmatched backtick runs of 700 different lengths do not each search the rest of the text."""
    text = "x " + "".join("`" * k + "a" for k in range(1, 700))
    lexer = Lexer(text)
    assert [] == list(lexer.events(0))
    assert lexer.steps <= STEPS_PER_CHAR * len(text)


def test_the_step_count_sees_a_quadratic_walk() -> None:
    """Without the walk's memory the same post costs hundreds of steps per character."""
    forgetful, length = lexer_steps("<img ", 8_000, "md-inline", memo=False)
    remembering, _length = lexer_steps("<img ", 8_000, "md-inline")
    assert forgetful > 100 * length
    assert remembering <= STEPS_PER_CHAR * length


@pytest.mark.parametrize(
    "front",
    [
        'headimg: "' + '\\"' * 100_000 + '"\n',
        "photos: [" + "'a', " * 50_000 + "]\n",
        "photos: [" + "a " * 100_000 + "\n",
        "photos:\n" + "  - a\n" * 50_000,
        "photos:\n" + "  - 'a\n" * 50_000,
        "title: x\n" * 50_000,
    ],
    ids=["escaped-quotes", "flow-list", "open-flow-list", "block-list", "open-quotes", "keys"],
)
def test_front_matter_scans_in_linear_steps(front: str) -> None:
    """Long values, lists and front matter without an opening line read each character O(1)."""
    for text in (f"\n---\n{front}---\n\nbody\n", f"{front}---\nbody\n", front):
        work = Work()
        span = front_matter_span(text, work)
        if span is not None:
            list(values(text, span, frozenset({"headimg", "photos"}), work))
        assert work.steps <= STEPS_PER_CHAR * len(text)


# --- Autolinks: where marked ends a URL in text -------------------------------------------------

_SPECIAL = frozenset("?!.,:;*_'\"~()&")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def marked_cut(url: str) -> str:
    """Read marked's path validation literally: one greedy pass, repeated until nothing changes."""

    def one_pass(s: str) -> str:
        i, n = 0, len(s)
        while i < n:
            c = s[i]
            if c == "(":
                close = s.find(")", i + 1)
                if close < 0:
                    break
                i = close + 1
            elif c == "&":
                j = i + 1
                while j < n and s[j] in _ALNUM:
                    j += 1
                if j > i + 1 and j == n - 1 and s[j] == ";":
                    break
                i += 1
            elif c in TRAILING:
                j = i
                while j < n and s[j] in TRAILING:
                    j += 1
                if j == n:
                    i = n - 1  # a run that reaches the end keeps all but its last character
                    break
                i = j
            else:
                while i < n and s[i] not in _SPECIAL:
                    i += 1
        return s[:i]

    while True:
        cut = one_pass(url)
        if cut == url:
            return url
        url = cut


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://a.example/b.jpg.", "https://a.example/b.jpg"),
        ("https://a.example/b.jpg?!.,:;*_'\"~", "https://a.example/b.jpg"),
        ("https://a.example/b(c).jpg", "https://a.example/b(c).jpg"),
        ("https://a.example/b(c", "https://a.example/b"),
        ("https://a.example/b.jpg)", "https://a.example/b.jpg"),
        ("https://a.example/(b))", "https://a.example/(b)"),
        ("https://a.example/b)c", "https://a.example/b)c"),
        ("https://a.example/b.jpg&quot;", "https://a.example/b.jpg"),
        ("https://a.example/b?x=1&amp;y=2", "https://a.example/b?x=1&amp;y=2"),
        ("https://a.example/b?x&", "https://a.example/b?x&"),
        ("https://a.example/b?x=1&y;.", "https://a.example/b?x=1"),
        ("https://a.example/b&x;;", "https://a.example/b"),
    ],
)
def test_autolink_ends_where_marked_ends_it(url: str, expected: str) -> None:
    """Trailing punctuation, an unbalanced "(" or ")" and an entity-like tail are cut off."""
    assert expected == marked_cut(url)
    assert len(expected) == autolink_end(url, 0, len(url))


@given(st.text(alphabet="a1()&;.,?!:*_~'\")/x", max_size=30))
@settings(max_examples=1000, deadline=None)
def test_autolink_end_is_markeds_repeated_cut(tail: str) -> None:
    """The one-pass cut lands where marked's repeated cut lands, on any tail."""
    url = "https://a.example/" + tail
    assert len(marked_cut(url)) == autolink_end(url, 0, len(url))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lexer_benchmark_smoke(tmp_path: Path) -> None:
    """bench/lexer.py --smoke runs, and reports each case with its steps per character."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "lexer.py"), "--smoke"],
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert 0 == done.returncode, output
    assert re.search(r"^\| `<img ` +\| \.html +\| [\d.]+ +\| 1\.0 +\|$", output, re.M), output
    assert [] == list(tmp_path.iterdir())
