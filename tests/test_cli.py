"""The command line through main(): scan and rewrite, PATHs, stores, flags, help, exit statuses."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror import helptext
from mirror.cli import build_parser, main, with_options
from mirror.cli.scan import ref_json
from mirror.config import Config, ScanConfig
from mirror.errors import EXIT_STATUSES, REASONS, ExitStatus, is_reason
from mirror.extract import Extractor
from mirror.manifest import Manifest, manifest_path
from mirror.marker import STORE_MARKER
from mirror.rewrite import decode

REPO = Path(__file__).resolve().parent.parent

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


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path: ./cache (the default store) and ./config.toml are never the checkout's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)


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
    assert "4 references in 1 post: 3 wrapped, 1 raw" in out
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


@pytest.mark.parametrize(
    "command",
    [
        ["scan"],
        ["run"],
        ["fetch"],
        ["rewrite", "--map", "map.json"],
        ["report", "--html", "r.html"],
        ["gc"],
    ],
)
def test_missing_path_is_exit_2(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A PATH that does not exist exits 2 naming it, before anything is created."""
    missing = tmp_path / "nope"
    assert ExitStatus.USAGE == main([*command, str(missing)])
    assert f"no such file or folder: {missing}" in capsys.readouterr().err
    assert [] == [p.name for p in tmp_path.iterdir()]


def test_folder_without_posts_warns_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing folder with no posts is a warning naming it, and exit 0."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a post", encoding="utf-8")
    assert ExitStatus.OK == main(["scan", str(empty)])
    assert ExitStatus.OK == main(["run", "--dry-run", str(empty)])
    err = capsys.readouterr().err
    assert 2 == err.count(f"no posts under {empty}")


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
            assert expected == ref_json(ref)
            checked += 1
    assert checked > 100


# --- the scan table ----------------------------------------------------------------------------

WIDE = "图片/煎蛋/首页/3700年前古巴比伦时期的泥板上记录了最古老的勾股数表.md"


def table_posts(tmp_path: Path) -> Path:
    root = tmp_path / "table"
    (root / "图片/煎蛋/首页").mkdir(parents=True)
    (root / WIDE).write_text(POST, encoding="utf-8")
    (root / "short.md").write_text(POST, encoding="utf-8")
    return root


def cell(text: str, index: int) -> int:
    """The display column where ``text[index]`` starts (CJK characters take two)."""
    return sum(2 if "\u4e00" <= c <= "\u9fff" else 1 for c in text[:index])


def test_scan_table_shows_whole_paths_aligned_by_display_width(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whole post paths, and every row's columns start at the same display column."""
    assert ExitStatus.OK == main(["scan", str(table_posts(tmp_path))])
    table = capsys.readouterr().out.split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if "wrapped" in line]
    assert {WIDE, "short.md"} == {row.split("  ")[0].rstrip() for row in rows}
    starts = {cell(row, row.index("http")) for row in rows}
    kinds = {cell(row, row.index(" wrapped") + 1) for row in rows}
    assert (1, 1) == (len(starts), len(kinds))


def test_scan_table_follows_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """COLUMNS narrows the table: paths stay whole on lines of their own, rows fit, URLs cut."""
    monkeypatch.setenv("COLUMNS", "80")
    assert ExitStatus.OK == main(["scan", str(table_posts(tmp_path))])
    out = capsys.readouterr().out
    lines = out.split("\n\n", 1)[0].splitlines()
    assert WIDE in lines
    rows = [line for line in lines if "wrapped" in line or " raw " in line]
    assert rows
    assert all(cell(row, len(row)) <= 80 for row in rows)
    assert any(row.endswith("…") for row in rows)
    monkeypatch.setenv("COLUMNS", "400")
    assert ExitStatus.OK == main(["scan", str(tmp_path / "table")])
    wide = capsys.readouterr().out
    assert any(line.startswith(WIDE) and SRC in line for line in wide.splitlines())


# --- help, version, flags ----------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(helptext.COMMANDS))
def test_every_command_help_explains_itself(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each --help has a paragraph, what PATH means (where it takes one), examples, statuses."""
    assert ExitStatus.OK == main([command, "--help"])
    out = capsys.readouterr().out
    _short, description, _examples = helptext.COMMANDS[command]
    assert " ".join(description.split()[:6]) in " ".join(out.split())
    assert 2 <= len(re.findall(rf"^  mirror {command}\b", out, re.MULTILINE))
    assert ("PATH is a post file" in out) == (command not in helptext.NO_PATH)
    assert "exit status:" in out


def test_main_help_and_readme_list_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    """`mirror --help` and the README list 0, 1, 2, 3 and 130, with the same meanings."""
    assert ExitStatus.OK == main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert [0, 1, 2, 3, 130] == [int(status) for status, _ in EXIT_STATUSES]
    for status, meaning in EXIT_STATUSES:
        assert f"{int(status)} {meaning}" in out
        assert f"| {int(status)} | {meaning} |" in readme


def test_version_short_and_long(capsys: pytest.CaptureFixture[str]) -> None:
    """-V and --version print the version."""
    assert ExitStatus.OK == main(["-V"])
    assert ExitStatus.OK == main(["--version"])
    assert 2 == capsys.readouterr().out.count("mirror 0.")


def test_short_flags() -> None:
    """-o is --out, -j is --jobs, -c is --config, as wget, curl and gallery-dl users expect."""
    args = build_parser().parse_args(["run", "-o", "out", "-j", "3", "-c", "c.toml", "posts"])
    assert (Path("out"), 3, Path("c.toml")) == (args.out, args.jobs, args.config)
    args = build_parser().parse_args(["rewrite", "-o", "copies", "posts"])
    assert Path("copies") == args.out


def test_per_run_flags_override_the_config() -> None:
    """--timeout, --retries, --user-agent, --sources and --base-url override config.toml."""
    argv = ["run", "--timeout", "7", "--retries", "0", "--user-agent", "ua/1"]
    argv += ["--sources", "origin,wayback", "--base-url", "https://cdn.example/m/", "posts"]
    config = with_options(Config(), build_parser().parse_args(argv))
    fetch = config.fetch
    assert (7.0, 7.0, 7.0) == (fetch.total_timeout, fetch.connect_timeout, fetch.read_timeout)
    assert (1, "ua/1", ("origin", "wayback")) == (fetch.attempts, fetch.user_agent, fetch.sources)
    assert "https://cdn.example/m/" == config.rewrite.base_url
    assert Config().fetch == with_options(Config(), build_parser().parse_args(["run", "p"])).fetch


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["run", "--jobs", "0", "p"], "--jobs"),
        (["fetch", "-j", "many", "p"], "--jobs"),
        (["run", "--timeout", "0", "p"], "--timeout"),
        (["run", "--retries", "-1", "p"], "--retries"),
        (["run", "--sources", "origin,ftp", "p"], "--sources"),
        (["run", "--base-url", "https://cdn.example/m", "p"], "--base-url"),
        (["serve", "--workers", "0"], "--workers"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--host", ""], "--host"),
    ],
)
def test_a_bad_value_names_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad per-run value exits 2 naming the flag, not a config key."""
    assert ExitStatus.USAGE == main(argv)
    err = capsys.readouterr().err
    assert flag in err
    assert "config:" not in err
    assert "Traceback" not in err


def test_retry_reason_takes_only_reason_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """--retry-reason accepts the codes (dns, http-404, ...) and lists them on a typo."""
    for code in ("dns", "size-mismatch", "http-404"):
        assert [code] == build_parser().parse_args(
            ["run", "--retry-reason", code, "p"]
        ).retry_reason
    assert ExitStatus.USAGE == main(["run", "--retry-reason", "sizemismatch", "p"])
    err = capsys.readouterr().err
    assert "did you mean size-mismatch?" in err
    assert all(code in err for code in REASONS)


def _readme_reasons(text: str) -> set[str]:
    found = re.search(
        r"`blocked` \(refused by the address policy: ([^)]*)\).*?Reasons: ([^.]*)\.", text, re.S
    )
    assert found is not None
    codes = set(re.findall(r"`([a-zN0-9-]+)`", found[1] + found[2]))
    codes |= set(re.findall(r"reason `([a-z-]+)`", text))
    codes |= set(re.findall(r"reason `[a-z-]+` or `([a-z-]+)`", text))
    codes |= set(re.findall(r"fail with `([a-z-]+)`", text))
    return codes


def test_reason_codes_cover_errors_downloader_and_readme() -> None:
    """The one tuple of reason codes holds every reason errors.py, the stages and README name."""
    source = REPO / "mirror"
    errors = set(re.findall(r'reason = "([a-z-]+)"', (source / "errors.py").read_text()))
    raised: set[str] = set()
    for module in source.glob("*.py"):
        raised |= set(
            re.findall(
                r'(?:Fetch|Verify|Policy)Error\([^)]*?,\s*"([a-z0-9-]+)"\)', module.read_text()
            )
        )
    downloader = set(
        re.findall(r'"([a-z]+(?:-[a-z0-9]+)+)"', (source / "downloader.py").read_text())
    )
    downloader -= {"not-modified"}  # a mirrored row's note (a 304), not a failure
    readme = _readme_reasons((REPO / "README.md").read_text(encoding="utf-8"))
    named = errors | raised | downloader | readme | {"dns"}
    assert {"timeout", "host-down", "size-mismatch", "missing-object", "bad-port"} <= named
    assert [] == sorted(code for code in named if not is_reason(code.replace("NNN", "404")))


# --- stores ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["run", "POSTS"],
        ["fetch", "POSTS"],
        ["rewrite", "POSTS"],
        ["rewrite", "--revert", "POSTS"],
        ["verify"],
        ["gc", "POSTS"],
        ["export", "out"],
        ["report", "--html", "r.html"],
        ["serve"],
    ],
)
def test_store_that_is_a_file_is_refused(
    posts: Path, tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--store afile exits 2 saying it is not a folder."""
    afile = tmp_path / "afile"
    afile.write_text("mine", encoding="utf-8")
    argv = [str(posts) if a == "POSTS" else a for a in command]
    assert ExitStatus.USAGE == main([*argv, "--store", str(afile)])
    assert f"--store {afile}: not a folder" in capsys.readouterr().err
    assert "mine" == afile.read_text(encoding="utf-8")


def test_rewrite_map_creates_no_store(
    posts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rewrite --map in place needs no store and makes none; --store X must be one or --create."""
    mapping = write_map(tmp_path, {SRC: "/mirror/ab/abc.jpg"})
    assert ExitStatus.OK == main(["rewrite", "--map", str(mapping), str(posts)])
    assert not (tmp_path / "cache").exists()
    assert "not recorded for --revert" in capsys.readouterr().err
    store = tmp_path / "store"
    again = write_map(tmp_path, {RAW: "/mirror/cd/raw.jpg"})
    argv = ["rewrite", "--map", str(again), "--store", str(store), str(posts)]
    assert ExitStatus.USAGE == main(argv)
    assert "no such store" in capsys.readouterr().err
    assert not store.exists()
    assert ExitStatus.OK == main([*argv, "--create"])
    assert (store / STORE_MARKER).is_file()
    with Manifest(manifest_path(store), readonly=True) as manifest:
        assert manifest.spans_for(str(posts / "sub dir" / "plain.md"))


def test_a_folder_that_is_not_a_store_is_refused(
    posts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run/fetch make a missing store, refuse a non-empty non-store folder unless --create."""
    before = sorted(p.relative_to(posts) for p in posts.rglob("*"))
    assert ExitStatus.USAGE == main(["run", "--store", str(posts), str(posts)])
    assert f"--store {posts}: not a mirror store" in capsys.readouterr().err
    assert before == sorted(p.relative_to(posts) for p in posts.rglob("*"))
    fresh = tmp_path / "fresh"
    assert ExitStatus.INCOMPLETE == main(
        ["run", "-q", "--dry-run", "--store", str(fresh), str(posts)]
    )
    assert not fresh.exists()  # a dry run writes nothing, not even a store
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.md").write_text("no images here\n", encoding="utf-8")
    assert ExitStatus.OK == main(["fetch", "-q", "--store", str(fresh), str(plain)])
    assert (fresh / STORE_MARKER).is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep", encoding="utf-8")
    assert ExitStatus.USAGE == main(["fetch", "-q", "--store", str(mine), str(plain)])
    assert ExitStatus.OK == main(["fetch", "-q", "--create", "--store", str(mine), str(plain)])
    assert ("keep", True) == ((mine / "notes.txt").read_text(), (mine / STORE_MARKER).is_file())


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_refuses_a_missing_store_before_listening(
    tmp_path: Path, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """A closed-world serve on a --store that does not exist exits 2 and creates nothing."""
    store = tmp_path / "cahce"
    assert ExitStatus.USAGE == main(["serve", "--store", str(store), "--port", str(busy_port)])
    assert f"--store {store}: no such store" in capsys.readouterr().err
    assert not store.exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_is_one_line_and_exit_3(
    tmp_path: Path, busy_port: int, workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another program on the port: one line naming it, exit 3, no traceback."""
    store = tmp_path / "store"
    store.mkdir()
    argv = ["serve", "--store", str(store), "--port", str(busy_port), "--workers", workers]
    assert ExitStatus.FAILED == main(argv)
    err = capsys.readouterr().err
    assert [
        f"mirror: error: cannot listen on 127.0.0.1:{busy_port}: the address is already in use"
        " (another mirror serve?); pick another with --port"
    ] == err.splitlines()


def test_manifest_corrupt_or_newer_is_exit_3(
    posts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corrupt manifest, or one from a newer mirror, fails the run itself: exit 3, not 1."""
    store = tmp_path / "store"
    store.mkdir()
    manifest_path(store).write_bytes(b"not a database at all" * 100)
    assert ExitStatus.FAILED == main(["run", "-q", "--store", str(store), str(posts)])
    assert "corrupt" in capsys.readouterr().err
    manifest_path(store).unlink()
    with Manifest(manifest_path(store)) as manifest:
        manifest.conn.execute("PRAGMA user_version = 999")
    assert ExitStatus.FAILED == main(["fetch", "-q", "--store", str(store), str(posts)])
    assert "schema 999" in capsys.readouterr().err
