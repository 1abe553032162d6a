"""The rewriter changes nothing but URL spans: table tests and Hypothesis properties."""

from __future__ import annotations

import html
from collections.abc import Sequence
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror.config import ScanConfig
from mirror.extract import Extractor
from mirror.frontmatter import front_matter_span, values
from mirror.markup import Lexer, MdLink
from mirror.models import Span
from mirror.rewrite import decode, encode_url, rewrite, text_url, undo
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
        ("yaml", "", "http://a/b:", "'http://a/b:'"),
        ("yaml-flow", "", "http://a/b", "http://a/b"),
        ("yaml-flow", "", "http://a/b,c[d]{e}", "'http://a/b,c[d]{e}'"),
        ("yaml-flow", "'", "http://a/it's", "http://a/it''s"),
        ("yaml-flow", '"', 'http://a/"q"', 'http://a/\\"q\\"'),
        (
            "text",
            "",
            "https://c/a b(c)'d\"<e>`*_~|[f]\\g",
            "https://c/a%20b%28c%29%27d%22%3Ce%3E%60%2A%5F%7E%7C%5Bf%5D%5Cg",
        ),
        ("text", "", "https://c/a?x=1&y=2&", "https://c/a?x=1&amp;y=2%26"),
        ("text", "", "https://c/a.jpg.", "https://c/a.jpg%2E"),
        ("text", "", "https://c/a&b;", "https://c/a&amp;b%3B"),
        ("text", "", "https://c/\u3000.jpg", "https://c/%E3%80%80.jpg"),
        ("text-angle", "", "https://c/a b<c>&d", "https://c/a%20b%3Cc%3E&amp;d"),
        ("md", "", "http://a/b\\c&d", "http://a/b%5Cc&amp;d"),
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


# --- The new shapes: front matter lists, Markdown links, text ------------------------------------

OLD = f"{W}http://s.example/a.jpg"
SOURCE = "http://s.example/a.jpg"
SITE = "https://blog.example.com/sub/"
SHAPES = {
    "block-list": ("p.md", "\n---\nphotos:\n  - '{u}'\n  - \"{u}\"\n  - {u}  \n---\n\nb&#123;\n"),
    "flow-list": ("p.md", "\n---\nbanner: [{u}, '{u}', \"{u}\"]\nphotos: [\n  {u},\n]\n---\n\nb\n"),
    "no-opening": ("p.md", "title: t\r\nheadimg: {u}\r\n---\r\n\r\nb  \r\n"),
    "json": ("p.md", ';;;\n"cover": "{u}",\n"photos": [\n  "{u}"\n]\n;;;\nb\n'),
    "markdown-link": ("p.md", "\n---\nt: t\n---\n\n[![a]({u})]({u} \"t\") [x](<{u}>)&#125;\n"),
    "text": ("p.md", "\n---\nt: t\n---\n\nsee {u}. and ({u}) and *{u}*, ok  \n"),
    "text-angle": ("p.md", "\n---\nt: t\n---\n\nsee <{u}> ok\n"),
}  # fmt: skip
# A relative path (made absolute from SITE in text), and an absolute wrapper that is found again.
NEW_URLS = (
    "/mirror/a b/it's,[x]{y} #z: w&amp=1(2)&.jpg",
    f"{W}http://n.example/a b(c)'d\"e,[f]{{g}}: i&j;k*_~|.jpg",
)
NEW_IDS = ("relative", "wrapper")


def shape(name: str) -> tuple[str, bytes]:
    post, template = SHAPES[name]
    return post, template.replace("{u}", OLD).encode()


def outside_spans_identical(before: bytes, after: bytes, spans: Sequence[Span]) -> bool:
    """Tell whether every byte outside the spans is the same, in order."""
    at_old = at_new = 0
    for span in spans:
        gap = span.offset - at_old
        if before[at_old : span.offset] != after[at_new : at_new + gap]:
            return False
        at_old = span.offset + len(span.old.encode())
        at_new += gap + len(span.new.encode())
    return before[at_old:] == after[at_new:]


@pytest.mark.parametrize("new", NEW_URLS, ids=NEW_IDS)
@pytest.mark.parametrize("name", SHAPES)
def test_new_shapes_rewrite_byte_exact(name: str, new: str) -> None:
    """Each URL span of the shape changes, every other byte stays, the new URL reads back."""
    post, data = shape(name)
    result = rewrite(data, {SOURCE: new}, EX, post, site_url=SITE)
    assert len(result.refs) == len(result.spans) > 0
    assert outside_spans_identical(data, result.data, result.spans)
    if new.startswith(W):
        after = EX(decode(result.data), post)
        assert [r.where for r in result.refs] == [r.where for r in after]
        assert {unquote(new)} == {unquote(r.decoded) for r in after}


@pytest.mark.parametrize("new", NEW_URLS, ids=NEW_IDS)
@pytest.mark.parametrize("name", SHAPES)
def test_new_shapes_rewrite_idempotent(name: str, new: str) -> None:
    """Rewriting the rewritten post again changes nothing."""
    post, data = shape(name)
    once = rewrite(data, {SOURCE: new}, EX, post, site_url=SITE).data
    assert once != data
    assert once == rewrite(once, {SOURCE: new}, EX, post, site_url=SITE).data


@pytest.mark.parametrize("new", NEW_URLS, ids=NEW_IDS)
@pytest.mark.parametrize("name", SHAPES)
def test_new_shapes_rewrite_revertible(name: str, new: str) -> None:
    """Undoing the spans gives back the original bytes."""
    post, data = shape(name)
    result = rewrite(data, {SOURCE: new}, EX, post, site_url=SITE)
    assert data == undo(result.data, result.spans)


def test_text_takes_only_absolute_urls() -> None:
    """Text keeps its URL for a relative new one without site_url; the image beside it changes."""
    data = f"\n---\nt: t\n---\n\n![a]({OLD}) see {OLD}\n".encode()
    result = rewrite(data, {SOURCE: LOCAL}, EX, "p.md")
    assert f"\n---\nt: t\n---\n\n![a]({LOCAL}) see {OLD}\n".encode() == result.data
    on_site = rewrite(data, {SOURCE: LOCAL}, EX, "p.md", site_url=SITE).data
    assert f"![a]({LOCAL}) see https://blog.example.com{LOCAL}\n".encode() in on_site
    absolute = rewrite(data, {SOURCE: "https://cdn.example/x.jpg"}, EX, "p.md").data
    assert b"see https://cdn.example/x.jpg\n" in absolute


@pytest.mark.parametrize(
    ("url", "site", "expected"),
    [
        ("https://cdn.example/m/x.jpg", "", "https://cdn.example/m/x.jpg"),
        ("/mirror/ab/x.jpg", "", None),
        (
            "/mirror/ab/x.jpg",
            "https://blog.example.com",
            "https://blog.example.com/mirror/ab/x.jpg",
        ),
        (
            "mirror/x.jpg",
            "https://blog.example.com/sub/",
            "https://blog.example.com/sub/mirror/x.jpg",
        ),
        ("//cdn.example/x.jpg", "", None),
    ],
)
def test_text_url_is_absolute_or_none(url: str, site: str, expected: str | None) -> None:
    """A text reference gets the absolute URL, or the one a browser resolves on site_url."""
    assert expected == text_url(url, site)


URL_TAIL = st.text(
    alphabet="ab/?=&;.,:!*_~'\"()[]{}<>`|\\# %\u3000\u00a0é", min_size=1, max_size=24
)


@settings(max_examples=500, deadline=None)
@given(URL_TAIL, st.sampled_from(["text", "text-angle"]))
def test_property_text_url_is_autolinked_whole(tail: str, syntax: str) -> None:
    """An encoded URL in text is autolinked exactly over its span and reads back as the URL."""
    url = f"https://n.example/{tail}"
    encoded = encode_url(url, syntax, "")
    written = f"<{encoded}>" if syntax == "text-angle" else encoded
    links = [e for e in Lexer(f"x {written} y\n").events(0) if isinstance(e, MdLink)]
    start = 3 if syntax == "text-angle" else 2
    assert [("text", start, start + len(encoded))] == [(e.kind, e.start, e.end) for e in links]
    assert unquote(url) == unquote(html.unescape(encoded))


@settings(max_examples=500, deadline=None)
@given(URL_TAIL, st.sampled_from(["yaml", "yaml-flow"]))
def test_property_yaml_list_items_read_back(tail: str, syntax: str) -> None:
    """An encoded URL as a block or flow list item reads back as exactly the URL."""
    url = f"https://n.example/{tail}"
    item = encode_url(url, syntax, "")
    front = f"photos:\n  - {item}\n" if syntax == "yaml" else f"photos: [{item}, x]\n"
    text = f"---\n{front}---\n"
    span = front_matter_span(text)
    assert span is not None
    assert url == next(values(text, span, frozenset({"photos"}))).decoded
