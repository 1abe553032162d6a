"""
The scanner against hand-derived expectations, and its tokenizer against BeautifulSoup.

tests/data/expected.jsonl was written by hand from the fixtures' text (not by running mirror), so
agreement here is an independent check. The BeautifulSoup cross-check reimplements the attribute
rules over bs4's tree for the HTML regions of every fixture and demands the same references.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from bs4 import BeautifulSoup, Tag

from mirror.blocks import blocks
from mirror.config import ScanConfig
from mirror.extract import Extractor, front_matter_span
from mirror.rewrite import decode
from mirror.source import Classifier, looks_like_image

DATA = Path(__file__).parent / "data"
POSTS = DATA / "posts"
FIXTURES = sorted(p for p in POSTS.rglob("*") if p.is_file())
EX = Extractor(ScanConfig())
CLASSIFIER = Classifier(ScanConfig().wrappers)
EXPECTED = [
    json.loads(line)
    for line in (DATA / "expected.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]
FIELDS = ("post", "line", "where", "url", "source", "declared", "declared_kind", "proxied")


def _rel(path: Path) -> str:
    return path.relative_to(POSTS).as_posix()


def test_every_fixture_has_expectations() -> None:
    """The expectation file covers the fixture set (no fixture silently unchecked)."""
    expected_posts = {row["post"] for row in EXPECTED}
    with_refs = {_rel(p) for p in FIXTURES if EX(decode(p.read_bytes()), _rel(p))}
    assert expected_posts == with_refs


@pytest.mark.parametrize("path", FIXTURES, ids=_rel)
def test_fixture_matches_hand_derived_expectations(path: Path) -> None:
    """Every reference of the fixture, with its line, where, source and declared size."""
    rel = _rel(path)
    expected = [row for row in EXPECTED if row["post"] == rel]
    got = [
        {
            "post": r.post,
            "line": r.line,
            "where": r.where,
            "url": r.url,
            "source": r.source,
            "declared": list(r.declared) if r.declared else None,
            "declared_kind": r.declared_kind,
            "proxied": r.proxied,
        }
        for r in EX(decode(path.read_bytes()), rel)
    ]
    key = lambda row: (row["line"], row["url"], row["where"])  # noqa: E731  # a sort key
    assert sorted(({k: r[k] for k in FIELDS} for r in expected), key=key) == sorted(got, key=key)


_IMG_ATTRS = ("src", "data-src", "data-original", "data-original-src", "data-lazy-src")
_IMG_ATTRS += ("data-gif-url",)
_SRCSET_SPLIT = re.compile(r",\s*(?=(?:https?:)?//)")


def _bs4_refs(html: str) -> Counter[tuple[str, str, bool]]:
    """Apply the reference rules over BeautifulSoup's tree: an independent implementation."""
    soup = BeautifulSoup(html, "html.parser")
    found: list[tuple[str, str, str, bool]] = []  # (where, source, kind, proxied)
    for el in soup.find_all(True):
        assert isinstance(el, Tag)
        if el.name == "code" or el.find_parent("code") is not None:
            continue
        if el.name in ("script", "style", "textarea", "title"):
            continue
        for name, value in el.attrs.items():
            values = value if isinstance(value, list) else [value]
            text = " ".join(values)
            where = f"{el.name}@{name}"
            urls: list[tuple[str, str]] = []
            if name == "style":
                urls = [("style", u) for u in re.findall(r"url\(\s*['\"]?([^'\")]*)", text)]
            elif name in ("srcset", "data-srcset") and el.name in ("img", "source"):
                for part in _SRCSET_SPLIT.split(text):
                    if part.strip():
                        urls.append((where, part.split()[0].rstrip(",")))
            elif (
                (el.name == "img" and name in _IMG_ATTRS)
                or name == "data-avatar"
                or (el.name == "video" and name == "poster")
                or (el.name == "a" and name == "href")
            ):
                urls = [(where, text)]
            elif "//" in text:
                urls = [(where, text)]
                where = "catch-all"
            for place, url in urls:
                result = CLASSIFIER.classify(url)
                if result is None:
                    continue
                kind = "catch-all" if where == "catch-all" else place
                found.append((place, result.source, kind, result.proxied))
    images = {s for (w, s, k, _p) in found if k not in ("a@href", "catch-all")}
    kept: Counter[tuple[str, str, bool]] = Counter()
    for where, source, kind, proxied in found:
        if kind == "catch-all" and not proxied:
            continue
        if kind == "a@href" and not (looks_like_image(source) or source in images):
            continue
        kept[(where, source, proxied)] += 1
    return kept


@pytest.mark.parametrize("path", FIXTURES, ids=_rel)
def test_tokenizer_agrees_with_beautifulsoup(path: Path) -> None:
    """On the HTML regions of every fixture, the offset tokenizer finds what bs4's tree holds."""
    rel = _rel(path)
    text = decode(path.read_bytes())
    span = front_matter_span(text)
    body = 0 if span is None else span[2]
    if rel.endswith(".md"):
        regions = [(s, e) for kind, s, e in blocks(text, body) if kind == "html"]
    else:
        regions = [(body, len(text))]
    html = "".join(text[s:e] for s, e in regions)

    def inside(pos: int) -> bool:
        return any(s <= pos < e for s, e in regions)

    ours = Counter(
        (r.where, r.source, r.proxied)
        for r in EX(text, rel)
        if inside(r.start) and not r.where.startswith("front-matter:")
    )
    assert _bs4_refs(html) == ours
