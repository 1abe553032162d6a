"""The rewriter changes nothing but URL spans: table tests and Hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror.config import ScanConfig
from mirror.extract import Extractor
from mirror.rewrite import decode, encode_url, rewrite, undo
from mirror.source import normalize

W = "https://cors.zfour.workers.dev/?"
EX = Extractor(ScanConfig())
SOURCES = [f"http://h{i}.example/p/{i}.jpg" for i in range(6)]
LOCAL = "/mirror/ab/abcdef.jpg"


def run(data: bytes, mapping: dict[str, str]) -> bytes:
    return rewrite(data, mapping, EX, "p.md").data


def test_rewrites_every_context_and_nothing_else() -> None:
    """Front matter, attributes, srcset, style and Markdown spans change; all else is identical."""
    src = SOURCES[0]
    before = (
        f"\n---\r\nheadimg: '{W}{src}'\r\nthumbnail: \"{W}{src}\"\r\ncover: {W}{src}\r\n---\r\n\r\n"
        f'<div>   \r\n<img src="{W}{src}" data-size="1,2"> <img src=\'{W}{src}\'>'
        f'<img src={W}{src}><img srcset="{W}{src} 1x, {W}{SOURCES[1]} 2x">'
        f"<p style=\"background:url('{W}{src}')\">&#123;&#125;</p>\r\n</div>\r\n\r\n"
        f'![a]({W}{src} "t") ![b](<{W}{src}>)\r\n            '
    ).encode()
    after = run(b"\xef\xbb\xbf" + before, {src: LOCAL})
    assert b"\xef\xbb\xbf" + before.replace(f"{W}{src}".encode(), LOCAL.encode()) == after


@pytest.mark.parametrize(
    ("syntax", "quote", "url", "expected"),
    [
        ("attr", '"', 'http://a/b?x=1&y="2"', "http://a/b?x=1&amp;y=&quot;2&quot;"),
        ("attr", "'", "http://a/it's", "http://a/it&#39;s"),
        ("attr", "", "http://a/b c", '"http://a/b c"'),
        ("attr", "", "http://a/b?x&y", "http://a/b?x&amp;y"),
        ("srcset", '"', "http://a/b c,", "http://a/b%20c%2C"),
        ("css", '"', "http://a/(b)'", "http://a/%28b%29%27"),
        ("yaml", "'", "http://a/it's", "http://a/it''s"),
        ("yaml", '"', 'http://a/"q"\\', 'http://a/\\"q\\"\\\\'),
        ("yaml", "", "http://a/b", "http://a/b"),
        ("yaml", "", "http://a/b #c", "'http://a/b #c'"),
        ("md", "", "http://a/b (c).jpg", "http://a/b%20%28c%29.jpg"),
        ("md-angle", "", "http://a/b <c>.jpg", "http://a/b %3Cc%3E.jpg"),
    ],
)
def test_encode_url_for_context(syntax: str, quote: str, url: str, expected: str) -> None:
    """The new URL is encoded so the context stays valid."""
    assert expected == encode_url(url, syntax, quote)


def test_unmapped_and_code_stay() -> None:
    """References not in the mapping, and wrapped URLs in code, are untouched."""
    data = (
        f'\n---\ntitle: t\n---\n\n<div><img src="{W}{SOURCES[0]}"><img src="{W}{SOURCES[1]}">'
        f'<code><img src="{W}{SOURCES[0]}"></code></div>\n'
    ).encode()
    after = run(data, {SOURCES[0]: LOCAL})
    assert 1 == after.count(LOCAL.encode())
    assert 2 == after.count(f"{W}{SOURCES[0]}".encode()) + after.count(f"{W}{SOURCES[1]}".encode())


def test_raw_twins_rewritten_with_their_wrapper() -> None:
    """A ZAKER data-original twin is rewritten too when its source is mapped."""
    src = SOURCES[2]
    data = f'<img data-original="{src}" src="{W}{src}">'.encode()
    assert f'<img data-original="{LOCAL}" src="{LOCAL}">'.encode() == run(data, {src: LOCAL})


def test_undo_refuses_changed_text() -> None:
    """Undo checks that the rewritten text is still there."""
    data = f'<img src="{W}{SOURCES[0]}">'.encode()
    result = rewrite(data, {SOURCES[0]: LOCAL}, EX, "p.md")
    with pytest.raises(ValueError, match="changed"):
        undo(result.data.replace(b"abcdef", b"zzzzzz"), result.spans)


def test_span_offsets_are_bytes() -> None:
    """Span offsets count bytes, so multi-byte text before a URL does not shift them."""
    data = f'中文\xa0<img src="{W}{SOURCES[0]}">'.encode()
    (span,) = rewrite(data, {SOURCES[0]: LOCAL}, EX, "p.md").spans
    assert span.old.encode() == data[span.offset : span.offset + len(span.old.encode())]


# --- Hypothesis: posts assembled from the shapes, mappings over a pool of sources -------------

source_st = st.sampled_from(SOURCES)
wrapped_st = st.builds(lambda s, w: f"{W}{s}" if w else s, source_st, st.booleans())
filler_st = st.sampled_from(
    [
        "",
        " ",
        "\r\n",
        "\n",
        "中文",
        "\u00a0",
        "&#123;x&#125;",
        "text  ",
        "<p>",
        "</p>",
        "&amp;",
        "\t",
    ]
)


def _fragment(kind: int, url: str, q: str) -> str:
    return [
        f"<img src={q}{url}{q} data-size={q}10,20{q}>",
        f"<img data-original={q}{url}{q} src={q}{url}{q}>",
        f'<img srcset="{url} 1x, {url} 2x">',
        f"<div style=\"background:url('{url}')\"></div>",
        f"<video poster={q}{url}{q}></video>",
        f'<a href="{url}"><img src="{url}"></a>',
        f'<code><img src="{url}"></code>',
    ][kind]


@st.composite
def posts(draw: st.DrawFn) -> bytes:
    quote = draw(st.sampled_from(["'", '"', ""]))
    fm_value = draw(wrapped_st)
    fm = {"'": f"'{fm_value}'", '"': f'"{fm_value}"', "": fm_value}[quote]
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    parts = [draw(st.sampled_from(["", "\ufeff"])), nl, "---", nl, f"headimg: {fm}", nl, "---", nl]
    parts += [nl, "<div>   ", nl]
    for _ in range(draw(st.integers(0, 8))):
        parts.append(draw(filler_st))
        q = draw(st.sampled_from(['"', "'"]))
        parts.append(_fragment(draw(st.integers(0, 6)), draw(wrapped_st), q))
    parts += [nl, "</div>", nl]
    if draw(st.booleans()):
        parts += [nl, f"![alt]({draw(wrapped_st)})", nl]
    parts.append("            ")
    return "".join(parts).encode("utf-8")


new_url_st = st.builds(
    lambda host, name, q: f"https://{host}.example/mirror/{name}.jpg{q}",
    st.sampled_from(["cdn", "img", "x-y"]),
    st.text(alphabet="abcdef0123456789_-~!", min_size=1, max_size=12),
    st.sampled_from(["", "?a=1&b=2", "?x=1;y=~!"]),
)
mapping_st = st.dictionaries(source_st, new_url_st, max_size=len(SOURCES))
PROPERTY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(posts(), mapping_st)
def test_property_undo_restores_original(data: bytes, mapping: dict[str, str]) -> None:
    """Undoing the returned spans gives the original bytes exactly."""
    result = rewrite(data, mapping, EX, "p.md")
    assert data == undo(result.data, result.spans)


@PROPERTY
@given(posts(), mapping_st)
def test_property_new_urls_found_at_same_places(data: bytes, mapping: dict[str, str]) -> None:
    """Scanning the rewritten post finds the new URLs where the old ones stood."""
    result = rewrite(data, mapping, EX, "p.md")
    after = EX(decode(result.data), "p.md")
    assert [r.where for r in result.refs] == [r.where for r in after]
    for old, new in zip(result.refs, after, strict=True):
        expected = normalize(mapping[old.source]) if old.source in mapping else old.source
        assert expected == new.source


@PROPERTY
@given(posts(), mapping_st)
def test_property_outside_spans_identical(data: bytes, mapping: dict[str, str]) -> None:
    """Every byte outside the replaced spans is identical, in order."""
    result = rewrite(data, mapping, EX, "p.md")
    at_old = at_new = 0
    for span in result.spans:
        gap = span.offset - at_old
        assert data[at_old : span.offset] == result.data[at_new : at_new + gap]
        at_old = span.offset + len(span.old.encode())
        at_new += gap + len(span.new.encode())
    assert data[at_old:] == result.data[at_new:]


@PROPERTY
@given(posts(), mapping_st)
def test_property_idempotent(data: bytes, mapping: dict[str, str]) -> None:
    """Rewriting twice equals rewriting once."""
    once = run(data, mapping)
    assert once == run(once, mapping)
