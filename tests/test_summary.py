"""What run, fetch, a dry run and scan say at the end: counts that agree, or name the difference."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

from mirror.cli import main
from mirror.errors import ExitStatus
from mirror.pipeline import RunSummary
from mirror.summary import OFFLINE, acting, cut, plan, plural, run_summary

REPO = Path(__file__).resolve().parent.parent
W = "https://cors.zfour.workers.dev/?"


def bench_summary_pattern() -> re.Pattern[str]:
    """The regex bench/archive.py reads the first summary line with."""
    tree = ast.parse((REPO / "bench" / "archive.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SUMMARY":
            assert isinstance(node.value, ast.Call)
            argument = node.value.args[0]
            assert isinstance(argument, ast.Constant)
            assert isinstance(argument.value, str)
            return re.compile(argument.value)
    raise AssertionError("bench/archive.py has no SUMMARY")


def summary(**counts: int) -> RunSummary:
    """A finished run's summary with the given status counts."""
    result = RunSummary(posts=21, found=215, found_wrapped=134, acted_wrapped=134, acted_raw=50)
    result.statuses.update(counts)
    return result


def test_plural() -> None:
    """1 post, 2 posts, 0 posts."""
    assert ["1 post", "2 posts", "0 posts"] == [plural(n, "post") for n in (1, 2, 0)]


def test_acting_line_explains_scan_against_run() -> None:
    """One line says what scan counts, what run acts on, and why they differ."""
    expected = (
        "215 references: 134 wrapped, 81 raw; acting on 184: 134 wrapped + 50 raw copies of them"
    )
    assert expected == acting(215, 134, 134, 50, "paired")
    assert "acting on 215: 134 wrapped + 81 raw (scan.raw)" in acting(215, 134, 134, 81, "all")


def test_cut_list_names_what_it_leaves_out() -> None:
    """A list cut at N says how many more hosts and references there are."""
    counts = Counter({"a.example": 5, "b.example": 4, "c.example": 2, "d.example": 1})
    assert "a.example 5, b.example 4, and 2 more hosts (3 references)" == cut(
        counts, "host", "reference", 2
    )
    assert "a.example 5, b.example 4, c.example 2, and 1 more host (1 reference)" == cut(
        counts, "host", "reference", 3
    )
    assert "a.example 5" == cut(Counter({"a.example": 5}), "host", "reference", 2)


def test_offline_when_every_failure_is_dns() -> None:
    """Every failure dns (host-down after them included) and nothing fetched: are you offline?"""
    offline = summary(failed=184)
    offline.failed_reasons.update({"dns": 77, "host-down": 107})
    assert offline.offline
    assert f"  {OFFLINE}" in run_summary(offline, 1.0, rewrite=True, dry_run=False, raw="paired")
    mixed = summary(failed=184)
    mixed.failed_reasons.update({"dns": 77, "connection": 107})
    fetched = summary(failed=10, mirrored=174)
    fetched.failed_reasons.update({"dns": 10})
    fetched.fetched_bytes = 1000
    assert (False, False, False) == (mixed.offline, fetched.offline, summary(mirrored=1).offline)
    lines = run_summary(mixed, 1.0, rewrite=True, dry_run=False, raw="paired")
    assert not any(OFFLINE in line for line in lines)


def test_run_summary_keeps_the_line_bench_reads() -> None:
    """The first line still matches bench/archive.py's regex; the second explains the counts."""
    done = summary(mirrored=150, failed=34)
    done.rewritten, done.unchanged, done.fetched_bytes = 12, 3, 3_200_000
    lines = run_summary(done, 4.1, rewrite=True, dry_run=False, raw="paired")
    found = bench_summary_pattern().search(lines[0])
    assert found is not None
    assert ("21", "3", "184", "12") == found.group("posts", "unchanged", "refs", "rewritten")
    assert lines[1].startswith("  215 references: 134 wrapped, 81 raw; acting on 184")
    assert "in the 18 posts read" in lines[1]


def test_fetch_and_dry_run_never_claim_rewritten_posts() -> None:
    """fetch says nothing about rewriting; a dry run says 'would be rewritten' and 'to fetch'."""
    fetched = run_summary(summary(mirrored=184), 1.0, rewrite=False, dry_run=False, raw="paired")
    assert "rewritten" not in fetched[0]
    dry = summary(skipped=184)
    dry.reasons["dry-run"] = 184
    dry.rewritten = 0
    lines = run_summary(dry, 0.1, rewrite=True, dry_run=True, raw="paired")
    assert "184 to fetch" in lines[0]
    assert "0 posts would be rewritten" in lines[0]
    assert not any("posts rewritten" in line or "dry-run" in line for line in lines)


def test_plan_on_an_empty_store_says_so() -> None:
    """A dry run on a store holding nothing says so and lists what a real run would fetch."""
    dry = RunSummary()
    dry.planned.update(
        {"http://a.example/1.jpg", "http://a.example/2.jpg", "http://b.example/3.jpg"}
    )
    dry.planned_hosts.update({"a.example": 2, "b.example": 1})
    dry.planned_posts.update({"x.md": 2, "y.md": 1})
    dry.planned_urls.extend(sorted(dry.planned))
    lines = plan(dry, "cache", True)
    text = "\n".join(lines)
    assert "the store cache holds nothing yet" in text
    assert "would fetch 3 sources" in text
    assert "by origin host: a.example 2, b.example 1" in text
    assert "by post: x.md 2, y.md 1" in text
    assert all(f"    {url}" in lines for url in dry.planned_urls)
    assert "holds nothing yet" not in "\n".join(plan(dry, "cache", False))


POST = (
    f"\n---\ntitle: t\nheadimg: '{W}http://a.example/1.jpg'\n---\n\n"
    f'<img src="{W}http://a.example/1.jpg" data-original="http://a.example/1.jpg">'
    f'<img src="{W}http://b.example/2.jpg"><img src="http://c.example/raw.jpg">\n'
)


def test_dry_run_on_an_empty_store_through_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --dry-run` on no store: the plan by host and post, counts equal to scan's."""
    monkeypatch.chdir(tmp_path)
    posts = tmp_path / "posts"
    posts.mkdir()
    for name in ("p1.md", "p2.md"):
        (posts / name).write_text(POST, encoding="utf-8")
    assert ExitStatus.OK == main(["scan", str(posts)])
    scanned = re.search(
        r"`mirror run` acts on (\d+): (\d+) wrapped \+ (\d+) raw", capsys.readouterr().out
    )
    assert scanned is not None
    assert ExitStatus.INCOMPLETE == main(["run", "--dry-run", str(posts)])
    err = capsys.readouterr().err
    assert "the store cache holds nothing yet" in err
    assert "would fetch 2 sources" in err
    assert "by origin host: a.example 1, b.example 1" in err
    assert "by post: p1.md 2, p2.md 2" in err
    acted = re.search(r"acting on (\d+): (\d+) wrapped \+ (\d+) raw", err)
    assert acted is not None
    assert scanned.groups() == acted.groups() == ("8", "6", "2")
    assert "would be rewritten" in err
    assert "posts rewritten" not in err
    assert not (tmp_path / "cache").exists()


def test_report_says_its_sources_are_distinct_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mirror report` names its count as distinct source URLs, not references."""
    from mirror.manifest import Manifest, manifest_path

    store = tmp_path / "store"
    with Manifest(manifest_path(store)):
        pass
    html = tmp_path / "r.html"
    assert ExitStatus.OK == main(["report", "--html", str(html), "--store", str(store)])
    err = capsys.readouterr().err
    assert "0 distinct sources in the manifest" in err
    assert "`mirror scan` and `mirror run` count references" in err


def test_report_dash_writes_json_lines_to_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--report - puts one JSON object per reference on stdout; the summary stays on stderr."""
    import json

    monkeypatch.chdir(tmp_path)
    posts = tmp_path / "posts"
    posts.mkdir()
    # A loopback origin is refused by the address policy before any connection: no network.
    (posts / "a.md").write_text(f'<img src="{W}http://127.0.0.1/x.jpg">\n', encoding="utf-8")
    argv = ["fetch", "--sources", "origin", "--report", "-", str(posts)]
    assert ExitStatus.INCOMPLETE == main(argv)
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [("blocked", "private-address")] == [(r["status"], r["reason"]) for r in rows]
    assert "mirror: 1 post, 1 reference: 1 blocked" in err
    assert not (tmp_path / "-").exists()
    assert ExitStatus.USAGE == main(["run", "--dry-run", "--report", "-", str(posts)])
