"""The scan and rewrite commands, called through main() with real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirror.cli import _ref_json, main, progress_line
from mirror.config import ScanConfig
from mirror.errors import ExitStatus
from mirror.extract import Extractor
from mirror.pipeline import RunSummary
from mirror.rewrite import decode

W = "https://cors.zfour.workers.dev/?"
SRC = "http://static.1sapp.example/qupost/img/a.jpeg"
RAW = "http://zkres1.myzaker.example/2021/b_1024.jpg"
POST = (
    f"\n---\ntitle: 't'\nheadimg: '{W}{SRC}'\n---\n\n<div>   \n"
    f'<p><img src="{W}{SRC}" data-size="550,412" referrerpolicy="no-referrer"></p>'
    f'<img data-original="{RAW}" data-height="1" data-width="2" src="{W}{RAW}">'
    "\n</div>\n            "
)
NAMES = ["plain.md", "with space.md", 'quote\'s "q".md', "100%&more.md", "中文 標題.md"]


@pytest.fixture
def posts(tmp_path: Path) -> Path:
    root = tmp_path / "posts"
    (root / "sub dir").mkdir(parents=True)
    for name in NAMES:
        (root / "sub dir" / name).write_text(POST, encoding="utf-8")
    (root / "notes.txt").write_text(POST, encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "x.md").write_text(POST, encoding="utf-8")
    return root


def scan_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert ExitStatus.OK == main(["scan", "--json", *args])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_scan_json_fields_and_paths(posts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object per reference, posts relative to PATH, odd names intact."""
    rows = scan_json(capsys, str(posts))
    assert 4 * len(NAMES) == len(rows)
    assert {f"sub dir/{n}" for n in NAMES} == {r["post"] for r in rows}
    first = rows[0]
    assert {
        "post",
        "line",
        "url",
        "decoded",
        "source",
        "where",
        "declared",
        "declared_kind",
        "proxied",
    } == set(first)
    zaker = [r for r in rows if r["post"] == "sub dir/plain.md"]
    assert [
        ("front-matter:headimg", SRC, None, True, 4),
        ("img@src", SRC, [550, 412], True, 8),
        ("img@data-original", RAW, [2, 1], False, 8),
        ("img@src", RAW, [2, 1], True, 8),
    ] == [(r["where"], r["source"], r["declared"], r["proxied"], r["line"]) for r in zaker]


def test_scan_table_counts(posts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default output is a table plus counts by where and by origin host."""
    assert ExitStatus.OK == main(["scan", str(posts / "sub dir" / "plain.md")])
    out = capsys.readouterr().out
    assert "4 references in 1 posts: 3 wrapped, 1 raw" in out
    assert "by where:" in out
    assert "by origin host:" in out
    assert "static.1sapp.example" in out


def test_scan_include_globs_from_config(
    posts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """scan.include decides which files in a folder are posts."""
    config = tmp_path / "c.toml"
    config.write_text('[scan]\ninclude = ["*.txt"]\n', encoding="utf-8")
    rows = scan_json(capsys, "--config", str(config), str(posts))
    assert {"notes.txt"} == {r["post"] for r in rows}


def test_scan_robust_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BOM, CRLF, non-UTF-8, junk and a 50 MB post: no crash, warnings name the files."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "bom.md").write_bytes(b"\xef\xbb\xbf" + POST.replace("\n", "\r\n").encode())
    (root / "gbk.md").write_bytes(POST.encode() + "中文".encode("gbk"))
    (root / "junk.md").write_bytes(bytes(range(256)) * 10)
    (root / "broken.md").write_bytes(b"<<a href\n<img src=\n---\n\x80<img")
    big = POST + ("<p>" + "x" * 1000 + "</p>\n") * 50_000
    (root / "big.md").write_text(big, encoding="utf-8")
    config = tmp_path / "c.toml"  # 50 MB is over the default cap (4 MiB): raise it for this one
    config.write_text("[scan]\nmax_post_bytes = 67108864\n", encoding="utf-8")
    assert ExitStatus.OK == main(["scan", "--json", "--config", str(config), str(root)])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    err = captured.err
    assert {"bom.md": 4, "gbk.md": 4, "big.md": 4} == {
        name: sum(r["post"] == name for r in rows) for name in ("bom.md", "gbk.md", "big.md")
    }
    assert "junk.md" in err
    assert "gbk.md is not valid UTF-8" in err


def test_scan_missing_path_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing PATH is a warning, not a crash."""
    assert ExitStatus.OK == main(["scan", str(tmp_path / "nope")])
    assert "no such file or folder" in capsys.readouterr().err


def test_bad_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad config value exits 2 with a message naming the key, no traceback."""
    config = tmp_path / "c.toml"
    config.write_text("[fetch]\njobs = -1\n", encoding="utf-8")
    assert ExitStatus.USAGE == main(["scan", "--config", str(config), str(tmp_path)])
    err = capsys.readouterr().err
    assert "fetch.jobs" in err
    assert "Traceback" not in err


def test_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong command line exits 2."""
    assert ExitStatus.USAGE == main(["scan"])
    assert ExitStatus.USAGE == main(["frobnicate"])


def write_map(tmp_path: Path, mapping: dict[str, str]) -> Path:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping), encoding="utf-8")
    return path


def test_rewrite_in_place_keeps_mode(
    posts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rewrite --map replaces mapped URLs in place, atomically, keeping the file mode."""
    target = posts / "sub dir" / "中文 標題.md"
    target.chmod(0o640)
    mapping = write_map(tmp_path, {SRC: "/mirror/ab/abc.jpg"})
    assert ExitStatus.OK == main(["rewrite", "--map", str(mapping), str(posts)])
    assert POST.replace(f"{W}{SRC}", "/mirror/ab/abc.jpg") == target.read_text(encoding="utf-8")
    assert 0o640 == target.stat().st_mode & 0o777
    assert not [p for p in (posts / "sub dir").iterdir() if p.name.startswith(".")]
    assert "rewrote 10 references in 5 posts" in capsys.readouterr().err


def test_rewrite_out_leaves_sources(posts: Path, tmp_path: Path) -> None:
    """--out writes every post under DIR at its relative path; the sources stay untouched."""
    mapping = write_map(tmp_path, {RAW: "/mirror/cd/raw.jpg"})
    out = tmp_path / "out"
    assert ExitStatus.OK == main(["rewrite", "--map", str(mapping), "--out", str(out), str(posts)])
    assert POST == (posts / "sub dir" / "plain.md").read_text(encoding="utf-8")
    rewritten = (out / "sub dir" / "plain.md").read_text(encoding="utf-8")
    assert POST.replace(RAW, "/mirror/cd/raw.jpg").replace(f"{W}/mirror", "/mirror") == rewritten
    assert len(NAMES) == len(list((out / "sub dir").iterdir()))


def test_rewrite_dry_run_prints_diff(
    posts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run prints a unified diff and writes nothing."""
    before = {p: p.read_bytes() for p in posts.rglob("*.md")}
    mapping = write_map(tmp_path, {SRC: "/mirror/ab/abc.jpg"})
    assert ExitStatus.OK == main(["rewrite", "--dry-run", "--map", str(mapping), str(posts)])
    out = capsys.readouterr().out
    assert "+++ b/sub dir/plain.md" in out
    assert "+headimg: '/mirror/ab/abc.jpg'" in out
    assert before == {p: p.read_bytes() for p in posts.rglob("*.md")}


@pytest.mark.parametrize("content", ["[1, 2]", "not json", '{"a": 1}'])
def test_rewrite_bad_map(tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A map that is not a JSON object of strings is a usage error."""
    path = tmp_path / "m.json"
    path.write_text(content, encoding="utf-8")
    assert ExitStatus.USAGE == main(["rewrite", "--map", str(path), str(tmp_path)])
    assert "--map" in capsys.readouterr().err


def test_rewrite_control_posts_untouched(tmp_path: Path) -> None:
    """A post with no wrapper stays byte-identical even when its raw sources are mapped."""
    control = tmp_path / "control.md"
    data = f'\n---\ntitle: t\n---\n\n<img src="{SRC}">  \r\n'.encode()
    control.write_bytes(data)
    stat = control.stat()
    mapping = write_map(tmp_path, {"http://elsewhere.example/x.jpg": "/m/x.jpg"})
    assert ExitStatus.OK == main(["rewrite", "--map", str(mapping), str(control)])
    assert data == control.read_bytes()
    assert stat.st_mtime_ns == control.stat().st_mtime_ns


def test_progress_line_shows_totals_rate_and_eta() -> None:
    """The terminal progress line gives posts done/total, references, bytes, rate and ETA."""
    summary = RunSummary(posts=5, fetched_bytes=2_000_000)
    summary.statuses["mirrored"] = 12
    expected = "5/10 posts, 12 references done, 2.0 MB (0.2 MB/s), ETA 0:10"
    assert expected == progress_line(summary, 10, 10.0)
    assert "ETA" not in progress_line(summary, 5, 10.0)


def test_scan_json_lines_are_what_json_dumps_gives() -> None:
    """The hand-built JSON line equals json.dumps of the same fields, byte for byte."""
    extractor = Extractor(ScanConfig())
    checked = 0
    for path in sorted((Path(__file__).parent / "data" / "posts").rglob("*")):
        if not path.is_file():
            continue
        for ref in extractor(decode(path.read_bytes()), path.name):
            expected = json.dumps(
                {
                    "post": ref.post,
                    "line": ref.line,
                    "url": ref.url,
                    "decoded": ref.decoded,
                    "source": ref.source,
                    "where": ref.where,
                    "declared": list(ref.declared) if ref.declared else None,
                    "declared_kind": ref.declared_kind,
                    "proxied": ref.proxied,
                },
                ensure_ascii=False,
            )
            assert expected == _ref_json(ref)
            checked += 1
    assert checked > 100
