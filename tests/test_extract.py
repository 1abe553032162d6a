"""Table tests for the scanner: every shape the aggregator writes, and every kind of code."""

from __future__ import annotations

import pytest

from mirror.config import ScanConfig
from mirror.extract import Extractor, post_date
from mirror.models import ImageRef

W = "https://cors.zfour.workers.dev/?"
ORIGIN = "http://static.1sapp.example/qupost/img/2022/01/31/0743.jpeg"
EX = Extractor(ScanConfig())


def refs(text: str) -> list[ImageRef]:
    return EX(text, "post.md")


def summary(text: str) -> list[tuple[str, str, bool]]:
    return [(r.where, r.source, r.proxied) for r in refs(text)]


def post(front: str, body: str) -> str:
    return f"\n---\ntitle: 'x'\n{front}\n---\n\n<div>   \n{body}\n</div>\n            "


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"headimg: '{W}{ORIGIN}'", ORIGIN),
        (f'thumbnail: "{W}{ORIGIN}"', ORIGIN),
        (f"cover: {W}{ORIGIN}", ORIGIN),
        (f"top_img: {W}{ORIGIN}  # a comment", ORIGIN),
        (f"banner: '{W}http://a.example/it''s.jpg'", "http://a.example/it's.jpg"),
    ],
)
def test_front_matter_scalars(line: str, expected: str) -> None:
    """Every quoting style of the configured keys yields the inner URL."""
    (ref,) = refs(post(line, ""))
    assert expected == ref.source
    assert ref.where.startswith("front-matter:")
    assert ref.proxied


def test_front_matter_after_bom_and_blank_lines_with_crlf() -> None:
    """Front matter may follow a BOM and blank lines; CRLF endings do not leak into the URL."""
    text = f"\ufeff\r\n\r\n---\r\nheadimg: '{W}{ORIGIN}'\r\ntitle: t\r\n---\r\nbody\r\n"
    (ref,) = refs(text)
    assert (ORIGIN, 4) == (ref.source, ref.line)


def test_front_matter_other_keys_and_body_keys_ignored() -> None:
    """Only the configured keys count, and a key-like line in the body is not front matter."""
    text = post(f"image: '{W}{ORIGIN}'", f"headimg: '{W}{ORIGIN}'")
    assert [] == refs(text)
    custom = Extractor(ScanConfig(front_matter_keys=("image",)))
    assert ["front-matter:image"] == [r.where for r in custom(text, "p")]


def test_qutoutiao_data_size() -> None:
    """趣头条: a wrapped src with data-size w,h."""
    body = f'<p><img src="{W}{ORIGIN}" data-size="550,412" referrerpolicy="no-referrer"></p>'
    (ref,) = refs(post("", body))
    assert ("img@src", ORIGIN, (550, 412), "data-size") == (
        ref.where,
        ref.source,
        ref.declared,
        ref.declared_kind,
    )


def test_zaker_data_original_pair_and_gif() -> None:
    """ZAKER: data-original raw twin, height written first, and a raw GIF twin without size."""
    raw = "http://zkres2.myzaker.example/202109/6134_1024.jpg"
    gif = "http://zkres2.myzaker.example/202109/6134_raw.gif"
    body = (
        f'<img class="lazy" data-original="{raw}" data-gif-url="{gif}" data-height="399" '
        f'data-width="600" src="{W}{raw}" referrerpolicy="no-referrer">'
    )
    found = refs(post("", body))
    assert [
        ("img@data-original", raw, False, (600, 399), "data-wh"),
        ("img@data-gif-url", gif, False, None, None),
        ("img@src", raw, True, (600, 399), "data-wh"),
    ] == [(r.where, r.source, r.proxied, r.declared, r.declared_kind) for r in found]
    assert 1 == len({r.element for r in found})


@pytest.mark.parametrize(
    ("attrs", "declared", "kind"),
    [
        ('coffee-w="1880px" coffee-h="848px"', (1880, 848), "coffee"),
        ('coffee-w="nullpx" coffee-h="nullpx"', None, None),
        ('width="600" height="400"', (600, 400), "display"),
        ('width="100%" height="400"', None, None),
        ('data-size="550,412" width="10" height="10"', (550, 412), "data-size"),
        ('data-size="bad"', None, None),
    ],
)
def test_declared_sizes(attrs: str, declared: tuple[int, int] | None, kind: str | None) -> None:
    """Declared sizes come from data-size, data-width/height, coffee-w/h or width/height."""
    (ref,) = refs(post("", f'<img src="{W}{ORIGIN}" {attrs}>'))
    assert (declared, kind) == (ref.declared, ref.declared_kind)


@pytest.mark.parametrize(
    "attr", ["data-src", "data-original-src", "data-lazy-src", "data-gif-url", "data-avatar"]
)
def test_lazy_load_attributes(attr: str) -> None:
    """Every lazy-load attribute of <img> is a reference."""
    (ref,) = refs(post("", f'<img {attr}="{W}{ORIGIN}">'))
    assert (f"img@{attr}", ORIGIN) == (ref.where, ref.source)


def test_srcset_every_candidate() -> None:
    """srcset and data-srcset yield each candidate, with commas inside URLs kept."""
    body = (
        f'<img srcset="{W}http://a.example/1.jpg 1x, {W}http://a.example/2,x.jpg 2x" '
        f'data-srcset="http://b.example/s.jpg 100w,http://b.example/m.jpg 200w">'
        f'<picture><source srcset="{W}http://c.example/c.webp"></picture>'
    )
    assert [
        ("img@srcset", "http://a.example/1.jpg", True),
        ("img@srcset", "http://a.example/2,x.jpg", True),
        ("img@data-srcset", "http://b.example/s.jpg", False),
        ("img@data-srcset", "http://b.example/m.jpg", False),
        ("source@srcset", "http://c.example/c.webp", True),
    ] == summary(post("", body))


def test_video_poster_and_style_urls() -> None:
    """<video poster> and url(...) in any style attribute, in every quoting."""
    body = (
        f'<video poster="{W}http://v.example/p.jpg"></video>'
        f"<div style=\"background:url('{W}http://s.example/a.png') no-repeat\"></div>"
        f'<div style="background:url(&quot;{W}http://s.example/b.png&quot;)"></div>'
        f"<span style='background-image: url({W}http://s.example/c.png)'></span>"
    )
    assert [
        ("video@poster", "http://v.example/p.jpg", True),
        ("style", "http://s.example/a.png", True),
        ("style", "http://s.example/b.png", True),
        ("style", "http://s.example/c.png", True),
    ] == summary(post("", body))


def test_links_only_to_images_or_lightbox_pairs() -> None:
    """<a href> counts when it names an image file or the same source as an image in the post."""
    body = (
        '<a href="http://dockone.example/up/f1.png" rel="lightbox">'
        f'<img src="{W}http://dockone.example/up/f1.png"></a>'
        '<a href="http://img.pmcaff.example/abc-picture">'
        f'<img src="{W}http://img.pmcaff.example/abc-picture"></a>'
        '<a href="https://www.sciencealert.example/images/si427_1024.jpg">x</a>'
        '<a href="http://img.jandan.example/n/1.jpg!custom">x</a>'
        '<a href="https://www.oschina.example/action/GoToLink?url=x">page</a>'
        f'<a href="{W}http://a.example/page.html">wrapped page</a>'
    )
    assert [
        ("a@href", "http://dockone.example/up/f1.png", False),
        ("img@src", "http://dockone.example/up/f1.png", True),
        ("a@href", "http://img.pmcaff.example/abc-picture", False),
        ("img@src", "http://img.pmcaff.example/abc-picture", True),
        ("a@href", "https://www.sciencealert.example/images/si427_1024.jpg", False),
        ("a@href", "http://img.jandan.example/n/1.jpg!custom", False),
    ] == summary(post("", body))


def test_catch_all_wrapped_attribute() -> None:
    """Any other attribute holding a whole wrapper is a reference; a raw one is not."""
    body = f'<div data-bg="{W}{ORIGIN}" data-link="http://a.example/x.jpg"></div>'
    assert [("div@data-bg", ORIGIN, True)] == summary(post("", body))


@pytest.mark.parametrize(
    ("url", "source"),
    [
        (f"{W}http%3A%2F%2Fa.example%2Fb.jpg", "http://a.example/b.jpg"),
        (f"{W}HTTPS%3a%2F%2Fa.example%2Fb.jpg", "https://a.example/b.jpg"),
        (f"{W}http://a.example/b%20c.jpg", "http://a.example/b%20c.jpg"),
        (f"{W}http://a.example/b.jpg?x=1&amp;y=2", "http://a.example/b.jpg?x=1&y=2"),
        (f"{W}http://p9.example/t~tplv:0:0.awebp?", "http://p9.example/t~tplv:0:0.awebp?"),
        (f"{W}HTTP://A.Example:80/B.jpg#frag", "http://a.example/B.jpg"),
        (f"{W}https://a.example:443/b.jpg", "https://a.example/b.jpg"),
        (f"{W}http://www.a.example:8002/c/87343", "http://www.a.example:8002/c/87343"),
        ("https://foo-bar.workers.dev/?http://a.example/b.jpg", "http://a.example/b.jpg"),
        ("https://images.weserv.nl/?url=a.example/b.jpg&w=100", "http://a.example/b.jpg"),
        ("//wsrv.nl/?url=ssl:a.example/b.jpg", "https://a.example/b.jpg"),
        (
            "https://corsproxy.io/?url=http://a.example/b.jpg?x=1&y=2",
            "http://a.example/b.jpg?x=1&y=2",
        ),
        ("https://corsproxy.io/?https%3A%2F%2Fa.example%2Fb.jpg", "https://a.example/b.jpg"),
        (
            "https://cors-anywhere.herokuapp.example/http://a.example/b.jpg",
            "http://a.example/b.jpg",
        ),
    ],
)
def test_wrapper_sources(url: str, source: str) -> None:
    """Each wrapper shape unwraps to the fixed source form."""
    (ref,) = refs(post("", f'<img src="{url}">'))
    assert (source, True) == (ref.source, ref.proxied)


@pytest.mark.parametrize(
    "url", ["/images/local.png", "data:image/png;base64,AAAA", "javascript:x", f"{W}", ""]
)
def test_not_references(url: str) -> None:
    """Relative URLs, data: URIs and empty wrappers are not remote references."""
    assert [] == refs(post("", f'<img src="{url}">'))


def test_protocol_relative_raw() -> None:
    """A protocol-relative raw URL is taken as https."""
    assert [("img@src", "https://a.example/b.jpg", False)] == summary(
        post("", '<img src="//a.example/b.jpg">')
    )


def test_code_is_never_a_reference() -> None:
    """Nothing inside <code> counts, not even a real tag (the CSRF example)."""
    csrf = f'<code><img src="{W}http://www.a.example:8002/content/delete/87343"></code>'
    body = f"<p>csrf: {csrf}</p><pre><code>&lt;img src=x&gt;<img src='{W}{ORIGIN}'></code></pre>"
    assert [] == refs(post("", body))


def test_pre_holds_real_images_and_escaped_text() -> None:
    """Inside <pre> (not <code>), real <img> counts and escaped markup is text."""
    body = (
        f'<pre>article &lt;img src="{W}http://x.example/esc.jpg"&gt;\n'
        f'<img src="{W}http://img.pmcaff.example/a-picture" coffee-w="1080px" coffee-h="720px">'
        "\n</pre>"
    )
    assert [("img@src", "http://img.pmcaff.example/a-picture", True)] == summary(post("", body))


def test_pre_block_spans_blank_lines_and_indentation() -> None:
    """A <pre> article keeps being HTML across blank lines and indented lines."""
    text = (
        "\n---\ntitle: t\n---\n\n<div><pre>\nintro\n\n"
        f'        <img src="{W}http://img.pmcaff.example/b-picture">\n\n</pre></div>\n'
    )
    assert [("img@src", "http://img.pmcaff.example/b-picture", True)] == summary(text)


def test_markdown_images_and_code() -> None:
    """Markdown images count; code does not; an escaped "!" leaves a link to the image file."""
    text = (
        "\n---\ntitle: t\n---\n\n"
        f'![alt]({W}http://m.example/a.jpg "title")\n\n'
        f"![alt](<{W}http://m.example/b c.jpg>)\n\n"
        f'```html\n<img src="{W}http://m.example/fenced.jpg">\n```\n\n'
        f"~~~\n![x]({W}http://m.example/tilde.jpg)\n~~~\n\n"
        f'    <img src="{W}http://m.example/indented.jpg">\n\n'
        f'Inline `<img src="{W}http://m.example/inline.jpg">` and ``![x]({W}http://m.example/i2.jpg)``\n'
        f"\\![not an image]({W}http://m.example/escaped.jpg)\n"
    )
    assert [
        ("markdown", "http://m.example/a.jpg", True),
        ("markdown", "http://m.example/b c.jpg", True),
        ("markdown-link", "http://m.example/escaped.jpg", True),
    ] == summary(text)


def test_markdown_reference_definitions() -> None:
    """Reference definitions count when wrapped, image-like or used by an image."""
    text = (
        "\n---\ntitle: t\n---\n\n![logo][l1] and ![shortcut]\n\n"
        f"[l1]: http://m.example/logo\n[shortcut]: <http://m.example/s>\n"
        f"[w]: {W}http://m.example/w.jpg\n[page]: http://m.example/page.html\n"
        "[pic]: http://m.example/pic.png\n"
    )
    assert [
        ("markdown-ref", "http://m.example/logo", False),
        ("markdown-ref", "http://m.example/s", False),
        ("markdown-ref", "http://m.example/w.jpg", True),
        ("markdown-ref", "http://m.example/pic.png", False),
    ] == summary(text)


def test_markdown_is_not_processed_inside_html_blocks() -> None:
    """CommonMark: an HTML block runs to a blank line, and Markdown inside it is text."""
    text = (
        f"\n---\ntitle: t\n---\n\n<div>\n![x]({W}http://m.example/in-html.jpg)\n</div>\n\n"
        f"![x]({W}http://m.example/after.jpg)\n"
    )
    assert [("markdown", "http://m.example/after.jpg", True)] == summary(text)


def test_indented_html_after_blank_line_in_div_is_code() -> None:
    """After a blank line ends an HTML block, a 4-space indented tag is an indented code block."""
    text = (
        f'\n---\ntitle: t\n---\n\n<div>\n<p>a</p>\n\n    <img src="{W}http://m.example/code.jpg">\n'
        f'\n<img src="{W}http://m.example/real.jpg">\n</div>\n'
    )
    assert [("img@src", "http://m.example/real.jpg", True)] == summary(text)


def test_list_continuation_is_not_code() -> None:
    """An indented paragraph under a list item is list content, not an indented code block."""
    text = f"\n---\ntitle: t\n---\n\n- item\n\n    ![x]({W}http://m.example/li.jpg)\n"
    assert [("markdown", "http://m.example/li.jpg", True)] == summary(text)


def test_raw_text_elements_and_comments_hold_no_tags() -> None:
    """<script>, <style>, <textarea> and comments hide tag-like text."""
    body = (
        f"<script>var s='<img src=\"{W}http://x.example/s.jpg\">';</script>"
        f"<style>.a&#123;background:url({W}http://x.example/st.jpg)&#125;</style>"
        f'<!-- <img src="{W}http://x.example/c.jpg"> -->'
        f'<textarea><img src="{W}http://x.example/t.jpg"></textarea>'
        f'<img src="{W}http://x.example/real.jpg">'
    )
    assert [("img@src", "http://x.example/real.jpg", True)] == summary(post("", body))


def test_malformed_html() -> None:
    """`<<a href` is text, then a tag; a tag unterminated at the end is ignored; first dupe wins."""
    body = (
        '<<a href="http://x.example/a.png">x</a>'
        f'<img src="{W}http://x.example/1.jpg" src="{W}http://x.example/2.jpg">'
        f'<img src="{W}http://x.example/never.jpg"'
    )
    text = f"\n---\ntitle: t\n---\n\n<div>\n{body}"
    assert [
        ("a@href", "http://x.example/a.png", False),
        ("img@src", "http://x.example/1.jpg", True),
    ] == summary(text)


def test_unquoted_and_single_quoted_attributes_and_entities() -> None:
    """Unquoted and single-quoted values work; entities are decoded for the source only."""
    body = f"<img src={W}http://x.example/u.jpg><img src='{W}http://x.example/s.jpg?a=1&amp;b=2'>"
    found = refs(post("", body))
    assert [("", "http://x.example/u.jpg"), ("'", "http://x.example/s.jpg?a=1&b=2")] == [
        (r.quote, r.source) for r in found
    ]
    assert found[1].url.endswith("&amp;b=2")


def test_lines_and_offsets_point_at_the_url() -> None:
    """line is 1-based and start/end delimit exactly the URL as written."""
    text = post("", f'<p>\n<img src="{W}{ORIGIN}"></p>')
    (ref,) = refs(text)
    assert text[ref.start : ref.end] == ref.url == f"{W}{ORIGIN}"
    assert text.count("\n", 0, ref.start) + 1 == ref.line


def test_tag_name_requires_a_delimiter() -> None:
    """An autolink <http://...> is not a tag: it is a link in the text."""
    text = f"\n---\ntitle: t\n---\n\nsee <{W}http://x.example/a.jpg> ok\n"
    assert [("text", "http://x.example/a.jpg", True)] == summary(text)


def test_non_utf8_and_nbsp_survive() -> None:
    """Undecodable bytes and U+00A0 near a reference do not disturb it."""
    data = "\n---\ntitle: t\n---\n\n<div>\u00a0".encode() + b"\xb9\xfe"
    data += f'<img src="{W}{ORIGIN}"></div>'.encode()
    text = data.decode("utf-8", "surrogateescape")
    assert [("img@src", ORIGIN, True)] == summary(text)


def test_hexo_codeblock_tag_is_code() -> None:
    """Hexo's {% codeblock %} tag plugin is code."""
    text = (
        "\n---\ntitle: t\n---\n\n{% codeblock %}\n"
        f'<img src="{W}http://x.example/code.jpg">\n{{% endcodeblock %}}\n'
    )
    assert [] == refs(text)


# --- Front matter: lists, no opening line, JSON -------------------------------------------------


def test_front_matter_block_list_in_every_quoting() -> None:
    """Hexo's photos as a block list: '-, "- and un-quoted items, comments and blanks between."""
    text = (
        "\n---\ntitle: t\nphotos: # the gallery\n"
        f"  - '{W}http://p.example/1.jpg'\n\n"
        f'  - "{W}http://p.example/2.jpg"  \n'
        "  # a comment\n"
        f"  - {W}http://p.example/3.jpg # the third\n"
        f"headimg: {W}http://p.example/h.jpg\n---\n\nbody\n"
    )
    found = refs(text)
    assert [
        ("front-matter:photos", "http://p.example/1.jpg", "yaml", "'", 5),
        ("front-matter:photos", "http://p.example/2.jpg", "yaml", '"', 7),
        ("front-matter:photos", "http://p.example/3.jpg", "yaml", "", 9),
        ("front-matter:headimg", "http://p.example/h.jpg", "yaml", "", 10),
    ] == [(r.where, r.source, r.syntax, r.quote, r.line) for r in found]
    assert [f"{W}http://p.example/{n}.jpg" for n in ("1", "2", "3", "h")] == [r.url for r in found]


def test_front_matter_block_list_at_the_keys_column_ends_at_the_next_key() -> None:
    """Items may stand at column 0; the list ends at the next key, and only scalars count."""
    text = (
        f"\n---\nphotos:\n- {W}http://p.example/1.jpg\n- src: {W}http://p.example/map.jpg\n"
        f"- - {W}http://p.example/nested.jpg\n- [{W}http://p.example/flow.jpg]\n"
        f"tags:\n- {W}http://p.example/tag.jpg\n---\n"
    )
    assert [("front-matter:photos", "http://p.example/1.jpg", True)] == summary(text)


def test_front_matter_flow_lists_on_one_line_and_several() -> None:
    """Flow lists [a, 'b', "c"] of any configured key, over several lines too."""
    text = (
        f"\n---\nbanner: [{W}http://f.example/1.jpg, '{W}http://f.example/2.jpg',"
        f' "{W}http://f.example/3.jpg"]\n'
        f"photos: [\n  {W}http://f.example/4.jpg,  # four\n  '{W}http://f.example/5.jpg'\n]\n"
        "cover: []\n---\n"
    )
    found = refs(text)
    assert [
        ("front-matter:banner", "http://f.example/1.jpg", "", 3),
        ("front-matter:banner", "http://f.example/2.jpg", "'", 3),
        ("front-matter:banner", "http://f.example/3.jpg", '"', 3),
        ("front-matter:photos", "http://f.example/4.jpg", "", 5),
        ("front-matter:photos", "http://f.example/5.jpg", "'", 6),
    ] == [(r.where, r.source, r.quote, r.line) for r in found]
    assert {"yaml-flow"} == {r.syntax for r in found}


def test_front_matter_lists_of_a_configured_key() -> None:
    """A key the config lists as an image key takes lists too; other keys do not count."""
    text = (
        f"\n---\ngallery: [{W}http://g.example/1.jpg]\nphotos: [{W}http://g.example/2.jpg]\n---\n"
    )
    custom = Extractor(ScanConfig(front_matter_keys=("gallery",)))
    assert ["http://g.example/1.jpg"] == [r.source for r in custom(text, "p.md")]


def test_front_matter_without_its_opening_line() -> None:
    """Hexo reads "key: value" lines up to the first --- line as front matter; so does mirror."""
    text = (
        f"title: t\r\nheadimg: '{W}http://n.example/h.jpg'\r\nphotos:\r\n"
        f"  - {W}http://n.example/p.jpg\r\n---\r\n\r\nheadimg: {W}http://n.example/body.jpg\r\n"
    )
    assert [
        ("front-matter:headimg", "http://n.example/h.jpg", 2),
        ("front-matter:photos", "http://n.example/p.jpg", 4),
        ("text", "http://n.example/body.jpg", 7),
    ] == [(r.where, r.source, r.line) for r in refs(text)]
    assert "20210702080800" == post_date("date: 2021-07-02 08:08:00\ntitle: x\n---\nbody\n")


@pytest.mark.parametrize(
    "text",
    [
        f"Some text.\nheadimg: {W}{ORIGIN}\n---\n",
        f"  indented: x\nheadimg: {W}{ORIGIN}\n---\n",
        f"- item\nheadimg: {W}{ORIGIN}\n---\n",
        f"headimg: {W}{ORIGIN}\nno front matter ends here\n",
        f"headimg: {W}{ORIGIN}\n",
    ],
)
def test_text_before_a_rule_is_not_front_matter_unless_it_is_a_mapping(text: str) -> None:
    """Prose, a list or a mapping never closed by --- is the body, not front matter."""
    assert [] == [r for r in refs(text) if r.where.startswith("front-matter:")]


def test_json_front_matter_between_semicolon_lines() -> None:
    """Hexo's ;;; JSON front matter: quoted keys, "-strings and arrays, opened or not."""
    for opening in (";;;\n", ""):
        text = (
            f'{opening}"title": "t",\n"cover": "{W}http://j.example/c.jpg",\n'
            f'"photos": [\n  "{W}http://j.example/1.jpg",\n  "{W}http:\\/\\/j.example\\/2.jpg"\n]\n'
            ";;;\nbody\n"
        )
        assert [
            ("front-matter:cover", "http://j.example/c.jpg", '"'),
            ("front-matter:photos", "http://j.example/1.jpg", '"'),
            ("front-matter:photos", "http://j.example/2.jpg", '"'),
        ] == [(r.where, r.source, r.quote) for r in refs(text)]


# --- Markdown links ------------------------------------------------------------------------------


def test_image_wrapped_in_a_link() -> None:
    """[![alt](thumb)](full): the thumbnail is an image, the full-size target a link to one."""
    text = (
        "\n---\ntitle: t\n---\n\n"
        f'[![a]({W}http://l.example/thumb.jpg)]({W}http://l.example/full.jpg "big")\n\n'
        f"[![b]({W}http://l.example/t2.jpg)](<{W}http://l.example/full 2.png>)\n"
    )
    found = refs(text)
    assert [
        ("markdown", "http://l.example/thumb.jpg", "md", 6),
        ("markdown-link", "http://l.example/full.jpg", "md", 6),
        ("markdown", "http://l.example/t2.jpg", "md", 8),
        ("markdown-link", "http://l.example/full 2.png", "md-angle", 8),
    ] == [(r.where, r.source, r.syntax, r.line) for r in found]
    assert f"{W}http://l.example/full.jpg" == found[1].url


def test_markdown_links_follow_the_a_href_rule() -> None:
    """A link counts when it names an image file or the same source as an image in the post."""
    text = (
        "\n---\ntitle: t\n---\n\n"
        f"![p]({W}http://img.pmcaff.example/abc-picture)\n\n"
        "[lightbox](http://img.pmcaff.example/abc-picture) [raw file](http://r.example/a.png)\n"
        f"[page]({W}http://r.example/page.html) [home](https://r.example/)\n\n"
        f"<div>\n[in html]({W}http://r.example/in-html.jpg)\n</div>\n"
    )
    assert [
        ("markdown", "http://img.pmcaff.example/abc-picture", True),
        ("markdown-link", "http://img.pmcaff.example/abc-picture", False),
        ("markdown-link", "http://r.example/a.png", False),
    ] == summary(text)


# --- Wrapper URLs in Markdown text -------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "url"),
    [
        (f"see {W}http://t.example/a.jpg.", f"{W}http://t.example/a.jpg"),
        (f"(see {W}http://t.example/a.jpg)", f"{W}http://t.example/a.jpg"),
        (f"see {W}http://t.example/a(1).jpg!", f"{W}http://t.example/a(1).jpg"),
        (f"see {W}http://t.example/a.jpg(big", f"{W}http://t.example/a.jpg"),
        (f"*{W}http://t.example/a.jpg*", f"{W}http://t.example/a.jpg"),
        (f"{W}http://t.example/a.jpg&quot; said", f"{W}http://t.example/a.jpg"),
        (f"{W}http://t.example/a.jpg?x=1&amp;y=2 ok", f"{W}http://t.example/a.jpg?x=1&amp;y=2"),
        (f"{W}http://t.example/a.jpg<br>", f"{W}http://t.example/a.jpg"),
        (f"见{W}http://t.example/a.jpg，下", f"{W}http://t.example/a.jpg，下"),
        (f"\\[{W}http://t.example/a.jpg\\]", f"{W}http://t.example/a.jpg\\]"),
    ],
)
def test_wrapper_url_in_text_ends_where_marked_ends_it(written: str, url: str) -> None:
    """A bare wrapper URL in text is a reference, cut where marked's autolink cuts it."""
    (ref,) = refs(f"\n---\ntitle: t\n---\n\n{written}\n")
    assert (url, "text", "text", True) == (ref.url, ref.where, ref.syntax, ref.proxied)


def test_angle_autolink_and_decoded_entities() -> None:
    """<wrapper> is a link too; entities are decoded for the source, backslashes are not escapes."""
    text = f"\n---\ntitle: t\n---\n\n<{W}http://t.example/a.jpg?x=1&amp;y=2> and more\n"
    (ref,) = refs(text)
    assert ("text", "text-angle", "http://t.example/a.jpg?x=1&y=2") == (
        ref.where,
        ref.syntax,
        ref.source,
    )


def test_text_urls_only_where_markdown_autolinks_them() -> None:
    """Not raw URLs, not code, not HTML blocks, link text, <a> text, definitions or .html posts."""
    text = (
        "\n---\ntitle: t\n---\n\n"
        "raw http://t.example/raw.jpg is no reference\n\n"
        f"`{W}http://t.example/code.jpg` and <code>{W}http://t.example/tag-code.jpg</code>\n\n"
        f"```\n{W}http://t.example/fenced.jpg\n```\n\n"
        f"<div>\n{W}http://t.example/html-block.jpg\n</div>\n\n"
        f"[{W}http://t.example/label.jpg](http://t.example/page)\n"
        f'<a href="http://t.example/page">{W}http://t.example/a-text.jpg</a>\n\n'
        f"[def]: http://t.example/def.html {W}http://t.example/def-title.jpg\n\n"
        f"{W}http://t.example/yes.jpg\n"
    )
    assert [("text", "http://t.example/yes.jpg", True)] == summary(text)
    html = f"<p>{W}http://t.example/html.jpg</p>"
    assert [] == EX(f"\n---\ntitle: t\n---\n\n{html}\n", "p.html")


# --- Line numbers --------------------------------------------------------------------------------


class CountingText(str):
    """A post that counts the characters its ``count`` calls read."""

    counted = 0

    def count(self, sub: str, start: int | None = None, end: int | None = None) -> int:  # type: ignore[override]
        CountingText.counted += (len(self) if end is None else end) - (start or 0)
        return super().count(sub, start, end)


def test_line_numbers_of_100000_references_read_the_text_once() -> None:
    """Lines are counted in one pass: 100,000 references cost one read of the post, not 100,000."""
    body = "".join(
        f"![{i}]({W}http://l.example/x.jpg)\n{'' if i % 3 else chr(10)}" for i in range(100_000)
    )
    text = CountingText(f"\n---\ntitle: t\n---\n\n{body}")
    CountingText.counted = 0
    found = EX(text, "p.md")
    assert 100_000 == len(found)
    assert CountingText.counted <= len(text)
    step = 997  # a sample, against the count from the start of the post
    assert [str.count(text, "\n", 0, r.start) + 1 for r in found[::step]] == [
        r.line for r in found[::step]
    ]


@pytest.mark.parametrize("name", ["p.md", "p.html"])
def test_line_numbers_equal_the_naive_count(name: str) -> None:
    """Every reference's line is the number of newlines before it, plus one."""
    text = (
        f"\n---\nheadimg: {W}http://n.example/0.jpg\nphotos: [{W}http://n.example/1.jpg,\n"
        f"  {W}http://n.example/2.jpg]\n---\n\n<div>\n"
        + "".join(
            f'<img data-original="http://n.example/{i}.jpg"\n src="{W}http://n.example/{i}.jpg">'
            f"\n\n![m]({W}http://n.example/m{i}.jpg) {W}http://n.example/t{i}.jpg\n"
            for i in range(50)
        )
    )
    found = EX(text, name)
    assert len(found) > 100
    assert [text.count("\n", 0, r.start) + 1 for r in found] == [r.line for r in found]
