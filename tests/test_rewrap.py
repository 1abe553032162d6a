"""Rewrap mode: wrapped references move to mirror serve's public address, nothing else changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirror.cli import main
from mirror.config import Config, ScanConfig, ServeConfig, with_public_wrapper
from mirror.errors import ConfigError, ExitStatus
from mirror.extract import Extractor
from mirror.rewrite import decode, rewrap, undo
from mirror.source import Classifier, wrapper_base

W = "https://cors.zfour.workers.dev/?"
BASE = "https://img.example.com/"
NEW = f"{BASE}?"
SRC = "http://static.1sapp.example/qupost/img/a.jpeg"
RAW = "http://zkres1.myzaker.example/2021/b_1024.jpg"
A = "http://a.example/b.jpg"
EX = Extractor(with_public_wrapper(Config(), BASE).scan)
POST = (
    f"\ufeff---\r\ntitle: 't'\r\nheadimg: '{W}{SRC}'\r\n---\r\n\r\n<div>   \r\n"
    f'<p><img src="{W}{SRC}" data-size="550,412" referrerpolicy="no-referrer"></p>'
    f'<img data-original="{RAW}" data-height="1" data-width="2" src="{W}{RAW}">'
    f"\r\n</div>\r\n\r\n![中文]({W}{SRC})\r\n            "
)
# What POST becomes: every wrapper moved to BASE, the raw data-original twin as it was.
REWRAPPED = POST.replace(W, NEW)


def fm(line: str) -> str:
    return f"\n---\ntitle: t\n{line}\n---\n\n"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (fm(f"headimg: '{W}{SRC}'"), fm(f"headimg: '{NEW}{SRC}'")),
        (fm(f'headimg: "{W}{SRC}"'), fm(f'headimg: "{NEW}{SRC}"')),
        (fm(f"headimg: {W}{SRC}"), fm(f"headimg: {NEW}{SRC}")),
        (fm(f"cover: {W}{SRC} # old"), fm(f"cover: {NEW}{SRC} # old")),
        (
            f'<img src="{W}{SRC}" data-size="550,412">',
            f'<img src="{NEW}{SRC}" data-size="550,412">',
        ),
        (f"<img src={W}{SRC} alt=x>", f"<img src={NEW}{SRC} alt=x>"),
        (f"<img src='{W}{SRC}'>", f"<img src='{NEW}{SRC}'>"),
        (f"![]({W}{SRC})", f"![]({NEW}{SRC})"),
        (f'![a](<{W}{SRC}> "t")', f'![a](<{NEW}{SRC}> "t")'),
        (f"[1]: {W}{SRC}\n\n![x][1]", f"[1]: {NEW}{SRC}\n\n![x][1]"),
        (
            f'<img srcset="{W}{SRC} 1x, {W}{RAW} 2x">',
            f'<img srcset="{NEW}{SRC} 1x, {NEW}{RAW} 2x">',
        ),
        (
            f"<p style=\"background:url('{W}{SRC}')\"></p>",
            f"<p style=\"background:url('{NEW}{SRC}')\"></p>",
        ),
        # The new URL is built from the source, so entities stay valid where they stand.
        (f"<img src={W}{A}?x&amp;y>", f"<img src={NEW}{A}?x&amp;y>"),
        # "=" is unsafe unquoted for the encoder, so the value gains quotes rather than break.
        (f"<img src={W}{A}?x=1&amp;y=2>", f'<img src="{NEW}{A}?x=1&amp;y=2">'),
        (f'<img src="{W}{A}?x&amp;y">', f'<img src="{NEW}{A}?x&amp;y">'),
        # An encoded inner URL and other wrappers all end in the one canonical form.
        (f'<img src="{W}http%3A%2F%2Fa.example%2Fb.jpg">', f'<img src="{NEW}{A}">'),
        (f'<img src="{W}//a.example/b.jpg">', f'<img src="{NEW}{A}">'),
        (
            '<img src="https://images.weserv.nl/?url=a.example/b.jpg&amp;w=200">',
            f'<img src="{NEW}{A}">',
        ),
        (f'<img src="https://corsproxy.io/?{SRC}">', f'<img src="{NEW}{SRC}">'),
    ],
)
def test_rewrap_each_context(before: str, after: str) -> None:
    """Every kind of wrapped reference moves to BASE, encoded for where it stands."""
    result = rewrap(before.encode(), BASE, EX, "p.md")
    assert after.encode() == result.data
    assert before.encode() == undo(result.data, result.spans)


def test_rewrap_post_leaves_raw_and_everything_else() -> None:
    """BOM, CRLF, trailing spaces and the raw twin stay; only the wrapped spans change."""
    result = rewrap(POST.encode(), BASE, EX, "p.md")
    assert REWRAPPED.encode() == result.data
    assert 4 == len(result.spans)
    assert RAW in [r.url for r in result.refs if not r.proxied]


def test_raw_reference_untouched() -> None:
    """A raw reference does not depend on the proxy, so rewrap leaves it even beside a wrapper."""
    data = f'<img src="{RAW}"><img src="{W}{SRC}"><a href="{RAW}">x</a>'.encode()
    after = f'<img src="{RAW}"><img src="{NEW}{SRC}"><a href="{RAW}">x</a>'.encode()
    assert after == rewrap(data, BASE, EX, "p.md").data


def test_no_wrapper_is_identical() -> None:
    """A post without a wrapper comes back as the very same bytes object, with no spans."""
    data = fm(f"headimg: {SRC}").encode() + f'<img src="{RAW}">\r\n'.encode()
    result = rewrap(data, BASE, EX, "p.md")
    assert data is result.data
    assert () == result.spans


def test_rewrap_is_idempotent() -> None:
    """A second rewrap with the same base changes nothing."""
    once = rewrap(POST.encode(), BASE, EX, "p.md").data
    again = rewrap(once, BASE, EX, "p.md")
    assert once == again.data
    assert () == again.spans


def test_rewrapped_post_scans_as_wrapped() -> None:
    """Scanning the rewrapped post finds the same sources at the same places, still proxied."""
    before = EX(POST, "p.md")
    after = EX(decode(rewrap(POST.encode(), BASE, EX, "p.md").data), "p.md")
    expected = [(r.where, r.source, r.proxied, r.declared) for r in before]
    assert expected == [(r.where, r.source, r.proxied, r.declared) for r in after]


def test_base_with_a_path_keeps_it() -> None:
    """A base below a path keeps the path, and gains the slash before the query."""
    ex = Extractor(with_public_wrapper(Config(), "https://Example.COM/img").scan)
    data = f'<img src="{W}{SRC}">'.encode()
    once = rewrap(data, "https://Example.COM/img", ex, "p.md").data
    assert f'<img src="https://example.com/img/?{SRC}">'.encode() == once
    assert once == rewrap(once, "https://example.com/img/", ex, "p.md").data


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://img.example.com", "https://img.example.com/"),
        ("https://img.example.com/", "https://img.example.com/"),
        ("https://IMG.example.com:443/?", "https://img.example.com/"),
        ("http://img.example.com:8080/a/b", "http://img.example.com:8080/a/b/"),
    ],
)
def test_wrapper_base_normalizes(base: str, expected: str) -> None:
    """The base is normalized like a source and always ends in a slash."""
    assert expected == wrapper_base(base)


@pytest.mark.parametrize(
    "base",
    ["", "img.example.com", "/img/", "ftp://img.example.com/", "https://img.example.com/?x=1",
     "https://img.example.com/#top", "https://user@img.example.com/", "https:///x"],
)  # fmt: skip
def test_wrapper_base_refuses(base: str) -> None:
    """Anything but an absolute http(s) URL without credentials, query or fragment is refused."""
    with pytest.raises(ValueError, match="http"):
        wrapper_base(base)


def test_public_wrapper_changes_only_its_form() -> None:
    """The extra pattern claims BASE?<url> only; every other URL classifies as before."""
    plain = Classifier(ScanConfig().wrappers)
    extended = Classifier(with_public_wrapper(Config(), BASE).scan.wrappers)
    others = [
        f"{W}{SRC}",
        SRC,
        f"{BASE}mirror/ab/abc.jpg",
        f"{BASE}img.jpg?x=1",
        "https://img.example.com.evil.example/?http://a.example/b.jpg",
        "https://example.com/?http://a.example/b.jpg",
        "https://images.weserv.nl/?url=a.example/b.jpg",
        "/mirror/ab/abc.jpg",
    ]
    assert [plain.classify(u) for u in others] == [extended.classify(u) for u in others]
    for url in (f"{NEW}{SRC}", f"//img.example.com/?{SRC}", f"HTTPS://IMG.EXAMPLE.COM?{SRC}"):
        classified = extended.classify(url)
        assert classified is not None
        assert (SRC, True) == (classified.source, classified.proxied)


def test_public_wrapper_added_once() -> None:
    """serve.public_url and the same --rewrap base add one pattern; nothing set adds none."""
    assert Config() == with_public_wrapper(Config())
    config = Config(serve=ServeConfig(public_url="https://img.example.com"))
    wrappers = with_public_wrapper(config, BASE).scan.wrappers
    assert len(ScanConfig().wrappers) + 1 == len(wrappers)
    assert wrappers == with_public_wrapper(with_public_wrapper(config), BASE).scan.wrappers


def test_public_wrapper_bad_public_url() -> None:
    """A public_url with a query cannot be a wrapper base: the error names the key."""
    config = Config(serve=ServeConfig(public_url="https://img.example.com/?a=1"))
    with pytest.raises(ConfigError, match=r"serve\.public_url"):
        with_public_wrapper(config)


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def posts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # ./cache (the default store) and ./config.toml are the working folder's: never the checkout's.
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "posts"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.md").write_bytes(POST.encode())
    (root / "control.md").write_bytes(
        fm(f"headimg: {SRC}").encode() + f"<img src={RAW}>\r\n".encode()
    )
    return root


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_rewrap_in_place(posts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--rewrap rewrites wrapped references in place; a post with no wrapper is not touched."""
    control = posts / "control.md"
    control_bytes, control_mtime = control.read_bytes(), control.stat().st_mtime_ns
    assert ExitStatus.OK == main(["rewrite", "--rewrap", "https://img.example.com", str(posts)])
    assert REWRAPPED.encode() == (posts / "sub" / "a.md").read_bytes()
    assert control_bytes == control.read_bytes()
    assert control_mtime == control.stat().st_mtime_ns
    assert "mirror: 2 posts, rewrapped 4 references in 1 post" in capsys.readouterr().err


def test_cli_rewrap_twice_changes_nothing(posts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second --rewrap with the same base rewrites nothing, without any config."""
    assert ExitStatus.OK == main(["rewrite", "--rewrap", BASE, str(posts)])
    before = snapshot(posts)
    capsys.readouterr()
    assert ExitStatus.OK == main(["rewrite", "--rewrap", BASE, str(posts)])
    assert before == snapshot(posts)
    assert "rewrapped 0 references in 0 posts" in capsys.readouterr().err


def test_cli_rewrap_dry_run(posts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run prints a unified diff and writes nothing."""
    before = snapshot(posts)
    assert ExitStatus.OK == main(["rewrite", "--dry-run", "--rewrap", BASE, str(posts)])
    captured = capsys.readouterr()
    assert "+++ b/sub/a.md" in captured.out
    assert f"+headimg: '{NEW}{SRC}'\r\n" in captured.out
    assert f"-headimg: '{W}{SRC}'\r\n" in captured.out
    assert "control.md" not in captured.out
    assert "would rewrap 4 references in 1 post" in captured.err
    assert before == snapshot(posts)


def test_cli_rewrap_out(posts: Path, tmp_path: Path) -> None:
    """--out writes every post under DIR; the sources stay as they were."""
    before = snapshot(posts)
    out = tmp_path / "out"
    assert ExitStatus.OK == main(["rewrite", "--rewrap", BASE, "--out", str(out), str(posts)])
    assert before == snapshot(posts)
    assert REWRAPPED.encode() == (out / "sub" / "a.md").read_bytes()
    assert (posts / "control.md").read_bytes() == (out / "control.md").read_bytes()


@pytest.mark.parametrize(
    "base", ["img.example.com", "ftp://img.example.com/", "https://img.example.com/?x=1", ""]
)
def test_cli_bad_base(posts: Path, base: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A base that is not an absolute http(s) URL exits 2 with a message, writing nothing."""
    before = snapshot(posts)
    assert ExitStatus.USAGE == main(["rewrite", "--rewrap", base, str(posts)])
    err = capsys.readouterr().err
    assert "--rewrap" in err
    assert "absolute http(s) URL" in err
    assert "Traceback" not in err
    assert before == snapshot(posts)


def test_cli_map_and_rewrap_exclusive(
    posts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--map and --rewrap together are a usage error."""
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({SRC: "/mirror/ab/abc.jpg"}), encoding="utf-8")
    before = snapshot(posts)
    assert ExitStatus.USAGE == main(
        ["rewrite", "--map", str(mapping), "--rewrap", BASE, str(posts)]
    )
    assert "--map and --rewrap cannot be combined" in capsys.readouterr().err
    assert before == snapshot(posts)


def scan_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    capsys.readouterr()
    assert ExitStatus.OK == main(["scan", "--json", *args])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_public_url_counts_as_wrapper_in_scan(
    posts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With serve.public_url set, rewrapped references scan as the same proxied sources."""
    post = str(posts / "sub" / "a.md")
    expected = [(r["where"], r["source"], r["proxied"]) for r in scan_json(capsys, post)]
    assert ExitStatus.OK == main(["rewrite", "--rewrap", BASE, post])
    config = tmp_path / "c.toml"
    config.write_text('[serve]\npublic_url = "https://img.example.com"\n', encoding="utf-8")
    rows = scan_json(capsys, "--config", str(config), post)
    assert expected == [(r["where"], r["source"], r["proxied"]) for r in rows]
    assert 4 == sum(str(r["url"]).startswith(NEW) for r in rows)
    # Without it they are ordinary remote images on the owner's host.
    assert not any(r["proxied"] for r in scan_json(capsys, post) if str(r["url"]).startswith(NEW))


def test_public_url_rewrapped_posts_still_mirror(
    posts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The manifest/--map mapping, keyed by source, still reaches rewrapped references."""
    post = posts / "sub" / "a.md"
    assert ExitStatus.OK == main(["rewrite", "--rewrap", BASE, str(post)])
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({SRC: "/mirror/ab/abc.jpg"}), encoding="utf-8")
    config = tmp_path / "c.toml"
    config.write_text(f'[serve]\npublic_url = "{BASE}"\n', encoding="utf-8")
    assert ExitStatus.OK == main(
        ["rewrite", "--config", str(config), "--map", str(mapping), str(post)]
    )
    assert REWRAPPED.replace(f"{NEW}{SRC}", "/mirror/ab/abc.jpg").encode() == post.read_bytes()


def test_bad_public_url_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A serve.public_url that cannot be a wrapper base stops every command, naming the key."""
    config = tmp_path / "c.toml"
    config.write_text('[serve]\npublic_url = "https://img.example.com/?a=1"\n', encoding="utf-8")
    assert ExitStatus.USAGE == main(["scan", "--config", str(config), str(tmp_path)])
    assert "serve.public_url" in capsys.readouterr().err
