"""
Generate ``mirror/examples/origin/``, the files ``mirror demo`` serves instead of the internet.

One real image per row of ``examples/IMAGES.tsv`` at ``origin/<host>/<url path>`` (the path kept
literally; see :func:`mirror.demo.relative_file`), at the declared size and format, with the row's
fault: ``placeholder-of-another-size`` puts a 200x200 "hotlinking not allowed" image at the origin
and the right image under ``origin/_proxy/<host>/<url path>`` (what the proxy serves); ``404``
writes nothing; ``not-an-image`` writes an HTML page. ``origin/hosts.txt`` lists every host.

    python examples/make_origin.py          # deterministic: rerun after editing IMAGES.tsv
    python examples/make_origin.py --tls    # also a new demo CA and server certificate (once)

The generated folders are wiped and rebuilt on every run; ``tls/`` and README.md are kept.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mirror.demo import HOSTS_FILE, PROXY_DIR, PROXY_HOST, relative_file

HERE = Path(__file__).resolve().parent
TABLE = HERE / "IMAGES.tsv"
# Package data, so that `pip install .` (not only an editable install) can run `mirror demo`.
ORIGIN = HERE.parent / "mirror" / "examples" / "origin"
PLACEHOLDER_SIZE = (200, 200)
KEEP = {"tls", "README.md"}

NOT_AN_IMAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>403 Forbidden</title></head>
<body><h1>403 Forbidden</h1><p>Hotlinking is not allowed. Visit {host} to see this image.</p>
</body></html>
"""


@dataclass(frozen=True)
class Row:
    """One line of IMAGES.tsv."""

    path: str
    host: str
    width: int
    height: int
    format: str
    fault: str


def read_rows(table: Path = TABLE) -> list[Row]:
    """Every row of the table, in order."""
    with table.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        return [
            Row(
                r["url-path-on-origin"],
                r["host"].lower(),
                int(r["width"]),
                int(r["height"]),
                r["format"].upper(),
                r["fault"] or "",
            )
            for r in reader
        ]


def _font(draw: ImageDraw.ImageDraw, lines: list[str], width: int) -> ImageFont.FreeTypeFont:
    size = max(10, min(48, width // 14))
    while True:
        font = ImageFont.load_default(size)
        assert isinstance(font, ImageFont.FreeTypeFont)
        widest = max(draw.textlength(line, font=font) for line in lines)
        if widest <= width * 0.92 or size <= 8:
            return font
        size -= 1


def picture(size: tuple[int, int], fmt: str, lines: list[str], seed: int) -> bytes:
    """A non-blank image: banded gradient, a few shapes and a text label, encoded small."""
    width, height = size
    hue = (seed * 53) % 256
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    bands = 24
    for band in range(bands):  # horizontal bands compress well in PNG and GIF
        top, bottom = band * height // bands, (band + 1) * height // bands
        shade = band * 255 // (bands - 1)
        draw.rectangle((0, top, width, bottom), fill=(hue, shade, 255 - shade))
    unit = min(width, height)
    draw.ellipse(
        (width // 10, height // 10, width // 10 + unit // 3, height // 10 + unit // 3),
        fill=(255, 220 - hue // 2, 40),
        outline=(0, 0, 0),
        width=max(1, unit // 100),
    )
    draw.rectangle(
        (
            width - width // 10 - unit // 4,
            height - height // 10 - unit // 4,
            width - width // 10,
            height - height // 10,
        ),
        fill=(40, 200, hue),
        outline=(255, 255, 255),
    )
    font = _font(draw, lines, width)
    em = int(font.size)
    box_height = int(em * 1.25) * len(lines) + em
    top = (height - box_height) // 2
    draw.rectangle((0, top, width, top + box_height), fill=(255, 255, 255))
    for number, line in enumerate(lines):
        y = top + em // 2 + int(em * 1.25) * number
        draw.text((width // 2, y), line, fill=(20, 20, 20), font=font, anchor="ma")
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=70, optimize=True)
    elif fmt == "WEBP":
        image.save(out, "WEBP", quality=70, method=6)
    elif fmt == "GIF":
        image.quantize(32, dither=Image.Dither.NONE).save(out, "GIF", optimize=True)
    else:
        image.quantize(64, dither=Image.Dither.NONE).save(out, fmt, optimize=True)
    return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_images(rows: list[Row], origin: Path = ORIGIN) -> None:
    """Wipe and rebuild every generated file under ``origin`` (``tls/`` and README.md stay)."""
    origin.mkdir(parents=True, exist_ok=True)
    for child in origin.iterdir():
        if child.name not in KEEP:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for seed, row in enumerate(rows):
        relative = relative_file(row.host, row.path)
        if relative is None:
            raise SystemExit(f"{row.host}{row.path}: not usable as a file name")
        name = row.path.rsplit("/", 1)[-1] or "/"
        label = [row.host, name, f"{row.width}x{row.height} {row.format}"]
        real = picture((row.width, row.height), row.format, label, seed)
        if row.fault == "":
            _write(origin / relative, real)
        elif row.fault == "placeholder-of-another-size":
            lines = ["hotlinking", "not allowed", row.host]
            _write(origin / relative, picture(PLACEHOLDER_SIZE, row.format, lines, 0))
            _write(origin / PROXY_DIR / relative, real)
        elif row.fault == "not-an-image":
            _write(origin / relative, NOT_AN_IMAGE.format(host=row.host).encode())
        elif row.fault != "404":
            raise SystemExit(f"{row.host}{row.path}: unknown fault {row.fault!r}")
    hosts = sorted({row.host for row in rows})
    (origin / HOSTS_FILE).write_text("".join(f"{host}\n" for host in hosts), encoding="utf-8")


def make_tls(rows: list[Row], origin: Path = ORIGIN) -> None:
    """A new demo CA and one server certificate for the proxy and every host, valid to 2999."""
    import trustme  # a dev dependency: only needed to regenerate, never at runtime

    not_after = datetime.datetime(2999, 12, 31)
    ca = trustme.CA(organization_name="mirror demo CA (no value, do not trust)")
    names = [PROXY_HOST, *sorted({row.host for row in rows})]
    leaf = ca.issue_cert(*names, common_name=PROXY_HOST, not_after=not_after)
    tls = origin / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(tls / "server-key.pem"))
    (tls / "server.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))


def main() -> None:
    """Parse the flags and generate."""
    parser = argparse.ArgumentParser(
        description="Generate mirror/examples/origin/ for mirror demo."
    )
    parser.add_argument("--tls", action="store_true", help="also regenerate the demo CA and cert")
    args = parser.parse_args()
    rows = read_rows()
    make_images(rows)
    if args.tls:
        make_tls(rows)
    total = sum(p.stat().st_size for p in ORIGIN.rglob("*") if p.is_file())
    print(f"{ORIGIN}: {len(rows)} rows, {total} bytes")


if __name__ == "__main__":
    main()
