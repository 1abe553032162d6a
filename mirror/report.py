"""
``mirror report --html FILE``: one self-contained HTML page for deciding what to rescue next.

The page shows totals by status, one row per origin host (failures by reason, most failures
first), a bounded gallery of mirrored images as inline JPEG thumbnails (each with how it was found,
``via``, and the URL that delivered it, ``fetched_from``), and every failed or blocked source with
its reason and attempts (each with its detail). Given the posts (PATH arguments), it links images
and failures to the post lines that name them; the manifest alone does not know which post uses
what.

Self-contained on purpose: the file is mailed, attached to issues and opened from disk, and a page
about a dying proxy must not itself depend on anything remote. Its Content-Security-Policy
(``default-src 'none'``, images only as ``data:``, the one stylesheet by hash) makes the browser
enforce that, and every string from the manifest or a post goes through :func:`html.escape`.

I/O stays at the edges (:func:`find_places`, :func:`load_report`, :func:`write_report`);
:func:`render` builds the page from a :class:`Report` and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import io
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageOps

from mirror.config import Config
from mirror.errors import StoreError, UsageError
from mirror.extract import Extractor
from mirror.manifest import manifest_exists, manifest_name, open_manifest
from mirror.manifest.base import Manifest, ReportSource
from mirror.rewrite import decode
from mirror.scan import iter_posts
from mirror.source import origin_host
from mirror.store import ObjectStore, atomic_write, open_store

DEFAULT_GALLERY = 500
THUMB_SIDE = 160
_MAX_PLACES = 20  # per source: a banner every post shares would otherwise fill the page
_NOT_MIRRORED = ("failed", "blocked")
_DIGEST = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


@dataclass(frozen=True, slots=True)
class Place:
    """One line of one post that names a source, with a link relative to the report's folder."""

    post: str
    line: int
    href: str


@dataclass(frozen=True, slots=True)
class Scanned:
    """
    Where the posts name each source, and each object by digest: a rewritten post names no
    source any more, only the local URL ``base_url + ab/<sha256>.<ext>``.
    """

    places: Mapping[str, tuple[Place, ...]]
    objects: Mapping[str, tuple[Place, ...]]
    posts: int
    wrapped: frozenset[str]


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A small JPEG of an object, and its size in pixels."""

    jpeg: bytes
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class GalleryItem:
    """One mirrored object: its thumbnail (or why there is none) and the sources that name it."""

    sha256: str
    size: int
    width: int | None
    height: int | None
    thumbnail: Thumbnail | None
    problem: str | None
    sources: tuple[str, ...]
    via: str | None = None
    fetched_from: str | None = None


@dataclass(frozen=True, slots=True)
class HostRow:
    """One origin host: how many of its sources were mirrored, failed (by reason) or skipped."""

    host: str
    mirrored: int
    failed: int
    skipped: int
    reasons: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Report:
    """Everything the page shows, read once; :func:`render` turns it into HTML."""

    store: str
    generated: str
    sources: tuple[ReportSource, ...]
    objects: int
    object_bytes: int
    gallery: tuple[GalleryItem, ...]
    gallery_total: int
    scanned: Scanned | None


def find_places(paths: Sequence[Path], config: Config, report_dir: Path) -> Scanned:
    """Scan the posts as ``mirror scan`` does and map each source and digest to its lines."""
    extractor = Extractor(config.scan)
    places: defaultdict[str, dict[tuple[str, int], Place]] = defaultdict(dict)
    objects: defaultdict[str, dict[tuple[str, int], Place]] = defaultdict(dict)
    wrapped: set[str] = set()
    posts = 0
    for post in iter_posts(paths, config.scan):
        posts += 1
        # relpath makes both sides absolute; fsencode keeps undecodable file-name bytes, so the
        # percent-encoded link still reaches the file.
        href = quote(os.fsencode(os.path.relpath(post.path, report_dir)), safe="/")
        text = decode(post.data)
        for ref in extractor(text, post.rel):
            if ref.proxied:
                wrapped.add(ref.source)
            place = Place(post.rel, ref.line, f"{href}#L{ref.line}")
            places[ref.source].setdefault((post.rel, ref.line), place)
        line, counted = 1, 0
        for match in _DIGEST.finditer(text):
            line += text.count("\n", counted, match.start())
            counted = match.start()
            place = Place(post.rel, line, f"{href}#L{line}")
            objects[match.group()].setdefault((post.rel, line), place)
    return Scanned(
        {source: tuple(p.values()) for source, p in places.items()},
        {sha256: tuple(p.values()) for sha256, p in objects.items()},
        posts,
        frozenset(wrapped),
    )


def thumbnail(data: bytes, side: int = THUMB_SIDE) -> Thumbnail | None:
    """Return a JPEG at most ``side`` px on its longer side, or None when Pillow cannot read it."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            # JPEG decodes straight at 1/2..1/8 scale: a 4000 px photo costs a fraction.
            opened.draft("RGB", (side, side))
            image = ImageOps.exif_transpose(opened)
            image.thumbnail((side, side))
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                # JPEG has no alpha: lay transparent images on white, as a page would show them.
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, "white")
                image.paste(rgba, mask=rgba.getchannel("A"))
            elif image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            out = io.BytesIO()
            image.save(out, "JPEG", quality=75)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return Thumbnail(out.getvalue(), image.width, image.height)


async def _thumbnail_of(
    store: ObjectStore, sha256: str, ext: str, slots: asyncio.Semaphore
) -> tuple[Thumbnail | None, str | None]:
    # At most `slots` objects in memory at once, however large the gallery's images are.
    async with slots:
        try:
            data = await store.read(sha256, ext)
        except (StoreError, ValueError):
            return None, "missing from the store"
        # Pillow releases the GIL while decoding, so threads make 500 thumbnails faster.
        thumb = await asyncio.to_thread(thumbnail, data)
    return thumb, None if thumb is not None else "no preview (Pillow cannot read it)"


async def load_report(
    manifest: Manifest,
    store: ObjectStore,
    *,
    gallery: int = DEFAULT_GALLERY,
    scanned: Scanned | None = None,
    generated: str = "",
) -> Report:
    """
    Read the manifest and make the gallery's thumbnails (the first ``gallery`` objects).

    Raises:
        ManifestError: the manifest cannot be read.
    """
    rows = await manifest.report_rows()
    objects, object_bytes = rows.objects, rows.object_bytes
    shown = [(g.sha256, g.ext, g.size, g.width, g.height) for g in rows.gallery]
    entries = rows.sources
    by_object: defaultdict[str, list[str]] = defaultdict(list)
    found: dict[str, ReportSource] = {}
    for entry in entries:
        if entry.status == "mirrored" and entry.sha256 is not None:
            by_object[entry.sha256].append(entry.source)
            # The object's first source by name says how it was found, as the caption names it.
            seen = found.get(entry.sha256)
            if seen is None or entry.source < seen.source:
                found[entry.sha256] = entry
    picked = shown[:gallery]
    slots = asyncio.Semaphore(min(8, os.cpu_count() or 1))
    thumbs = await asyncio.gather(*(_thumbnail_of(store, row[0], row[1], slots) for row in picked))
    items = tuple(
        GalleryItem(
            sha,
            size,
            width,
            height,
            thumb,
            problem,
            tuple(sorted(by_object[sha])),
            found[sha].via if sha in found else None,
            found[sha].fetched_from if sha in found else None,
        )
        for (sha, _ext, size, width, height), (thumb, problem) in zip(picked, thumbs, strict=True)
    )
    return Report(
        store.description,
        generated,
        tuple(entries),
        objects,
        object_bytes,
        items,
        len(shown),
        scanned,
    )


def host_rows(sources: Iterable[ReportSource]) -> list[HostRow]:
    """Count each origin host's sources by outcome; most failures first, then by name."""
    counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
    reasons: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for entry in sources:
        host = origin_host(entry.source)
        counts[host][entry.status] += 1
        if entry.status in _NOT_MIRRORED:
            reasons[host][entry.reason or "unknown"] += 1
    rows = [
        HostRow(
            host,
            c["mirrored"],
            c["failed"] + c["blocked"],
            c["skipped"],
            tuple(sorted(reasons[host].items(), key=lambda item: (-item[1], item[0]))),
        )
        for host, c in counts.items()
    ]
    rows.sort(key=lambda r: (-r.failed, -r.skipped, r.host))
    return rows


def _e(value: object) -> str:
    text = str(value)
    # Undecodable bytes of a file name arrive as lone surrogates, which UTF-8 cannot hold.
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return html.escape(text, quote=True)


def _bytes(size: int) -> str:
    if size < 1000:
        return f"{size:,} B"
    value = size / 1000
    for unit in ("KB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _places_of(report: Report, sources: Iterable[str], sha256: str | None = None) -> list[Place]:
    if report.scanned is None:
        return []
    found = [p for source in sources for p in report.scanned.places.get(source, ())]
    if sha256 is not None:
        found += report.scanned.objects.get(sha256, ())
    return list(dict.fromkeys(found))


def _places(report: Report, places: Sequence[Place]) -> str:
    if report.scanned is None:
        return ""
    if not places:
        return '<div class="muted">no scanned post names it</div>'
    links = [f'<a href="{_e(p.href)}">{_e(p.post)}:{p.line}</a>' for p in places[:_MAX_PLACES]]
    more = len(places) - _MAX_PLACES
    if more > 0:
        links.append(f'<span class="muted">and {more} more</span>')
    return '<ul class="places">' + "".join(f"<li>{link}</li>" for link in links) + "</ul>"


def _totals(report: Report) -> str:
    counts = Counter(entry.status for entry in report.sources)
    cards = [
        (status, f'<dd id="total-{status}">{counts[status]:,}</dd>')
        for status in ("mirrored", "failed", "blocked", "skipped")
    ]
    cards.append(("objects", f'<dd id="total-objects">{report.objects:,}</dd>'))
    size = f'<dd id="total-bytes" data-bytes="{report.object_bytes}">'
    cards.append(("bytes", f"{size}{_bytes(report.object_bytes)}</dd>"))
    body = "".join(f'<div class="card {name}"><dt>{name}</dt>{dd}</div>' for name, dd in cards)
    if report.scanned is None:
        note = "<p>No posts were scanned: pass the posts as PATH to link images and failures.</p>"
    else:
        known = {entry.source for entry in report.sources}
        unknown = len(report.scanned.wrapped - known)
        note = f"<p>{report.scanned.posts:,} posts scanned"
        if unknown:
            note += f"; {unknown:,} wrapped sources they name are not in the manifest yet"
        note += ".</p>"
    return f'<section id="totals"><h2>Totals</h2><dl class="cards">{body}</dl>{note}</section>'


def _hosts(rows: Sequence[HostRow]) -> str:
    body = "".join(
        f'<tr data-host="{_e(r.host)}"><td><code>{_e(r.host)}</code></td>'
        f'<td class="num{" failed" if r.failed else ""}">{r.failed:,}</td><td>'
        + "".join(f'<span class="reason">{_e(reason)} {n:,}</span> ' for reason, n in r.reasons)
        + f'</td><td class="num">{r.mirrored:,}</td><td class="num">{r.skipped:,}</td></tr>'
        for r in rows
    )
    return (
        '<section id="hosts"><h2>By origin host</h2><table><thead><tr><th>host</th>'
        "<th>not mirrored</th><th>by reason</th><th>mirrored</th><th>skipped</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


def _figure(report: Report, item: GalleryItem) -> str:
    name = item.sources[0] if item.sources else item.sha256
    size = f"{item.width}×{item.height} · " if item.width and item.height else ""
    places = _places_of(report, item.sources, item.sha256)
    if item.thumbnail is None:
        picture = f'<div class="noimg">{_e(item.problem)}</div>'
    else:
        data = base64.b64encode(item.thumbnail.jpeg).decode("ascii")
        picture = (
            f'<img loading="lazy" decoding="async" width="{item.thumbnail.width}" '
            f'height="{item.thumbnail.height}" alt="{_e(name)}" title="{_e(name)}" '
            f'src="data:image/jpeg;base64,{data}">'
        )
        if places:
            picture = f'<a href="{_e(places[0].href)}">{picture}</a>'
    found = ""
    if item.via or item.fetched_from:
        via = f'via <span class="via">{_e(item.via or "unknown")}</span>'
        url = (
            f' from <code class="from">{_e(item.fetched_from)}</code>' if item.fetched_from else ""
        )
        found = f'<div class="found">{via}{url}</div>'
    return (
        f'<figure data-sha256="{_e(item.sha256)}">{picture}<figcaption>'
        f"<code>{_e(origin_host(name))}</code><br>{size}{_bytes(item.size)}{found}"
        f"{_places(report, places)}</figcaption></figure>"
    )


def _gallery(report: Report) -> str:
    shown, total = len(report.gallery), report.gallery_total
    note = f"{shown:,} of {total:,} mirrored objects, oldest first"
    if total > shown:
        note += f"; {total - shown:,} left out (<code>--gallery N</code> shows more)"
    figures = "".join(_figure(report, item) for item in report.gallery)
    return (
        f'<section id="gallery"><h2>Mirrored images</h2><p id="gallery-note">{note}.</p>'
        f'<div class="grid">{figures}</div></section>'
    )


def _attempts(entry: ReportSource) -> str:
    tried = "".join(
        f'<li title="{_e(a.url)}">{_e(a.source)}: {_e(a.outcome)}'
        + (f' <span class="detail">({_e(a.detail)})</span>' if a.detail else "")
        + "</li>"
        for a in entry.attempts
    )
    runs = f"{entry.failures:,} failed run{'s' if entry.failures != 1 else ''}"
    return f'{runs}<ol class="attempts">{tried}</ol>'


def _failures(report: Report, hosts: Sequence[HostRow]) -> str:
    rank = {row.host: index for index, row in enumerate(hosts)}
    failed = sorted(
        (e for e in report.sources if e.status in _NOT_MIRRORED),
        key=lambda e: (rank[origin_host(e.source)], e.source),
    )
    linked = report.scanned is not None
    body = "".join(
        f'<tr class="{_e(e.status)}"><td><code>{_e(e.source)}</code></td><td>{_e(e.status)}</td>'
        f'<td><span class="reason">{_e(e.reason or "unknown")}</span></td><td>{_attempts(e)}</td>'
        + (f"<td>{_places(report, _places_of(report, [e.source]))}</td>" if linked else "")
        + "</tr>"
        for e in failed
    )
    posts = "<th>named in</th>" if linked else ""
    return (
        f'<section id="failures"><h2>Not mirrored ({len(failed):,})</h2><table><thead><tr>'
        f"<th>source</th><th>status</th><th>reason</th><th>latest try</th>{posts}</tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{margin:0 0 .2em}h2{margin:1.5em 0 .5em;border-bottom:1px solid #ccc}.muted,header p{color:#666}
code{font:12px ui-monospace,monospace;overflow-wrap:anywhere}ul,ol{margin:0;padding-left:1.2em}
.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:0}.card dt{color:#666}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:7em}
.card dd{margin:0;font-size:1.6em;font-weight:600}.card.mirrored dd{color:#17803d}
.card.failed dd,.card.blocked dd,td.failed,.noimg{color:#b3261e}
table{border-collapse:collapse;background:#fff;width:100%}td.num{text-align:right}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eee;position:sticky;top:0}figcaption{text-align:left;margin-top:.3em}
.reason{display:inline-block;background:#fdecea;border-radius:3px;padding:0 .3em;margin:1px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:.6em}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.4em;font-size:12px}
figure img{display:block;margin:0 auto;max-width:160px;max-height:160px;height:auto}
.noimg{height:100px;padding-top:2em;text-align:center}.detail,.found{color:#666}
.via{font-weight:600}
"""
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode("ascii")
# Nothing may load from anywhere but the page itself: data: images and this exact stylesheet.
_CSP = f"default-src 'none'; img-src data:; style-src 'sha256-{_CSS_HASH}'; form-action 'none'"


def render(report: Report) -> str:
    """Return the whole page for ``report``: pure, every outside string escaped."""
    hosts = host_rows(report.sources)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # An explicit empty icon stops the browser asking the server for /favicon.ico.
        '<link rel="icon" href="data:,"><title>mirror report</title>'
        f"<style>{_CSS}</style></head><body><header><h1>mirror report</h1>"
        f"<p>Store <code>{_e(report.store)}</code>, generated {_e(report.generated)}.</p>"
        '<nav><a href="#hosts">by host</a> · <a href="#failures">not mirrored</a> · '
        '<a href="#gallery">mirrored images</a></nav></header>'
        f"{_totals(report)}{_hosts(hosts)}{_failures(report, hosts)}{_gallery(report)}"
        "</body></html>\n"
    )


async def write_report(
    config: Config, out: Path, paths: Sequence[Path], *, gallery: int = DEFAULT_GALLERY
) -> Report:
    """
    Build the report of the store (linking ``paths``' posts) and write it to ``out``.

    Raises:
        UsageError: the store has no manifest.
        ManifestError: the manifest cannot be read.
        StoreError: ``out`` cannot be written; it is then unchanged.
    """
    if not await manifest_exists(config):
        raise UsageError(
            f"no manifest at {manifest_name(config)}: run `mirror fetch` first, or pass --store DIR"
        )
    scanned = find_places(paths, config, out.parent) if paths else None
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    async with open_manifest(config, readonly=True) as manifest, open_store(config) as store:
        report = await load_report(
            manifest, store, gallery=gallery, scanned=scanned, generated=generated
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {out.parent}: {exc.strerror or exc}") from exc
    atomic_write(out, render(report).encode("utf-8"))
    return report
