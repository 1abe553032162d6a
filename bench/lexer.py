"""
Measure the scanner on adversarial posts: time and lexer steps per character as posts grow.

Issue #13 row 3: ``'<img ' * n`` took 20 s at 25 KB and 83 s at 50 KB (quadratic); row 12: a post
with 20,000 references took 12 s and 100,000 over 120 s (line numbers counted from the start of
the post for every reference). Each case is scanned by :class:`mirror.extract.Extractor` exactly as
``mirror scan`` does, in three shapes: a .html post, an HTML block of a .md post (``<div>`` with no
blank line) and Markdown text. Linear growth shows as a constant time per MB and a constant number
of steps per character (``Lexer.steps``; "-" when the code measured has no counter).

    python bench/lexer.py                     # 25 KB, 50 KB, 1 MB; 20,000 and 100,000 references
    python bench/lexer.py --smoke             # 25 KB and 2,000 references: does it all work?
    python bench/lexer.py --sizes 25000 50000 # sizes of your choice
    python bench/lexer.py --append BENCHMARKS.md

Run it with ``PYTHONPATH`` pointing at another checkout to measure that code instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from mirror import markup
from mirror.config import ScanConfig
from mirror.extract import Extractor

WRAP = "https://cors.zfour.workers.dev/?"
UNITS = ("<img ", '<img a="', '<a title="x <img ', "![a](b ", f"(see {WRAP}http://x.example/(")
SHAPES = {
    ".html": ("p.html", ""),
    ".md HTML block": ("p.md", "<div>   \n"),
    ".md text": ("p.md", "x "),
}
FRONT = "\n---\ntitle: 'bench'\n---\n\n"


class CountingLexer(markup.Lexer):
    """The lexer, remembering the last instance so its step count can be read."""

    last: markup.Lexer | None = None

    def __init__(self, text: str, *args: bool) -> None:
        super().__init__(text, *args)
        CountingLexer.last = self


def scan(text: str, name: str) -> tuple[float, int, str]:
    """Scan one post; return (seconds, references, steps per character or "-")."""
    extractor = Extractor(ScanConfig())
    started = time.perf_counter()
    refs = extractor(text, name)
    elapsed = time.perf_counter() - started
    lexer = CountingLexer.last
    steps = getattr(lexer, "steps", None)
    return elapsed, len(refs), "-" if steps is None else f"{steps / len(text):.1f}"


def references_post(n: int) -> str:
    """A post with ``n`` wrapped images, one per line, in the 趣头条 shape."""
    body = "".join(
        f'<p><img src="{WRAP}http://h{i % 20}.example/p/{i}.jpeg" data-size="550,412" '
        'referrerpolicy="no-referrer"></p>\n'
        for i in range(n)
    )
    return f"{FRONT}<div>   \n{body}</div>\n            "


def table(rows: list[list[str]]) -> str:
    """Format rows (the first is the header) as a Markdown table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rows = [rows[0], ["-" * w for w in widths], *rows[1:]]
    return "\n".join(
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    """Measure every case; print the tables (and append them to --append FILE)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 1_000_000])
    parser.add_argument("--references", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--smoke", action="store_true", help="25 KB and 2,000 references")
    parser.add_argument("--append", type=Path, help="append the results in Markdown to FILE")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.references = [25_000], [2_000]
    # The extractor builds its lexer through this name; counting needs no other change.
    sys.modules["mirror.extract"].Lexer = CountingLexer  # type: ignore[attr-defined]
    load = os.getloadavg()[0]
    header = ["case", "post", *(f"{s / 1000:g} KB s" for s in args.sizes), "steps/char (last)"]
    rows = [header]
    for unit in UNITS:
        for shape, (name, lead) in SHAPES.items():
            cells = [f"`{unit.strip()}`" if unit.strip() == unit else f"`{unit}`", shape]
            steps = "-"
            for size in args.sizes:
                core = unit * (size // len(unit))
                elapsed, _refs, steps = scan(FRONT + lead + core, name)
                cells.append(f"{elapsed:.2f}")
            rows.append([*cells, steps])
    ref_rows = [["references", "MB", "s", "steps/char"]]
    for n in args.references:
        text = references_post(n)
        elapsed, found, steps = scan(text, "p.md")
        if found != n:
            print(f"*** PROBLEM: {found} references found, {n} written", file=sys.stderr)
            return 1
        ref_rows.append([f"{n:,}", f"{len(text.encode()) / 1e6:.1f}", f"{elapsed:.2f}", steps])
    head = [
        f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()},"
        f" {os.cpu_count()} CPUs; load average (1 min) {load:.2f} at the start,"
        f" {os.getloadavg()[0]:.2f} at the end (other work on the machine skews times)",
        f"mirror imported from {Path(markup.__file__).resolve().parent}",
    ]
    out = "\n".join([*head, "", table(rows), "", table(ref_rows)])
    print(out)
    if args.append:
        with args.append.open("a", encoding="utf-8") as file:
            file.write(f"\n## Scanning adversarial posts\n\n{out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
