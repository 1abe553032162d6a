"""
Read the structure of an image file without decoding it: magic bytes, ends and containers.

Everything here works on a seekable binary file and its size, reads a bounded number of bytes at
known offsets (a head, a tail, one segment or chunk header at a time) and never the body, so its
cost does not grow with the pixels a file claims.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from PIL import Image, features

# format -> (ext, mime); the ext is what the store names objects by.
KINDS: dict[str, tuple[str, str]] = {
    "JPEG": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "GIF": ("gif", "image/gif"),
    "WEBP": ("webp", "image/webp"),
    "BMP": ("bmp", "image/bmp"),
    "AVIF": ("avif", "image/avif"),
    "HEIF": ("heic", "image/heic"),
}

# Enough for every magic-byte test, the ISO-BMFF ftyp brands included.
HEAD = 256

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# BITMAPCOREHEADER, BITMAPINFOHEADER and its V2..V5 successors; anything else starting with "BM"
# is far more likely to be text ("BMW ...") than a bitmap.
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_MIF_BRANDS = frozenset({b"mif1", b"msf1"})

# Bytes a server or an old encoder may leave after an end marker: NUL and 0xFF fill, and a
# newline from a text-mode transfer. Bounded, because a long run of NULs is what an unfinished
# preallocated download (aria2c --file-allocation) looks like, not padding.
_PADDING = b"\x00\xff\r\n\t "
_MAX_PADDING = 1024

# How many segments, chunks or boxes a walk visits before giving up. A real file has a few dozen
# before its image data (a few thousand PNG IDAT chunks at most); a hostile one may have millions
# of empty ones, and each visit is a seek and a read.
MAX_WALK = 10_000

# JPEG markers without a length: TEM, RST0..7, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})


def read_at(f: BinaryIO, offset: int, count: int) -> bytes:
    """
    Read up to ``count`` bytes of ``f`` at ``offset`` (fewer at the end of the file).
    """
    f.seek(offset)
    return f.read(count)


def file_size(f: BinaryIO) -> int:
    """
    Return the length of ``f`` in bytes.
    """
    return f.seek(0, os.SEEK_END)


def sniff(data: bytes) -> str | None:
    """
    Name the image format from the magic bytes (the first :data:`HEAD` bytes are enough).

    Returns:
        The Pillow format name, or None for anything else.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_DIB_SIZES:
        return "BMP"
    if data[4:8] == b"ftyp":
        return _sniff_isobmff(data)
    return None


def _sniff_isobmff(data: bytes) -> str | None:
    """
    Tell AVIF from HEIF by the ftyp brands; other ISO-BMFF files (MP4 video) are not images.
    """
    box_end = min(int.from_bytes(data[:4], "big"), len(data), HEAD)
    major = data[8:12]
    compatible = {data[i : i + 4] for i in range(16, box_end - 3, 4)}
    if major in _AVIF_BRANDS:
        return "AVIF"
    if major in _HEIF_BRANDS:
        return "HEIF"
    if major in _MIF_BRANDS or compatible & _MIF_BRANDS:
        if compatible & _AVIF_BRANDS:
            return "AVIF"
        # A bare mif1 with no codec brand is still a HEIF container; Pillow decides the rest.
        return "HEIF"
    return None


@functools.cache
def pillow_supports(kind: str) -> bool:
    """
    Say whether this Pillow can open ``kind`` (AVIF needs libavif, HEIF needs pillow-heif).
    """
    if kind == "AVIF":
        return bool(features.check_module("avif"))
    Image.init()
    return kind in Image.OPEN


@contextmanager
def pillow_quiet() -> Iterator[None]:
    """
    Silence Pillow's warnings (bomb, malformed MPO, corrupt EXIF) for the duration.

    Our own pixel cap and exceptions say everything those warnings would, and an escaped warning
    is an exception under ``-W error``. Filtering by module rather than everything keeps the
    damage small if concurrent threads interleave catch_warnings (not thread-safe before 3.14).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        yield


def _ends_with(f: BinaryIO, size: int, marker: bytes) -> bool:
    """
    Say whether the file ends with ``marker``, allowing a little trailing padding.
    """
    span = min(size, _MAX_PADDING + len(marker))
    tail = read_at(f, size - span, span)
    return tail.endswith(marker) or tail.rstrip(_PADDING).endswith(marker)


def _isobmff_complete(f: BinaryIO, size: int) -> bool:
    """
    Walk the top-level boxes; a complete file ends exactly where its last box does.
    """
    pos = 0
    for _ in range(MAX_WALK):
        if pos == size:
            return True
        header = read_at(f, pos, 16)
        if len(header) < 8:
            return False
        box = int.from_bytes(header[:4], "big")
        if box == 0:  # "extends to the end of the file"
            return True
        if box == 1:
            if len(header) < 16:
                return False
            box = int.from_bytes(header[8:16], "big")
            if box < 16:
                return False
        elif box < 8:
            return False
        pos += box
        if pos > size:
            return False
    return False


def is_complete(kind: str, f: BinaryIO, size: int) -> bool:
    """
    Judge from end markers and length fields, without decoding, whether the file is whole.

    Args:
        kind: the format :func:`sniff` named.
        f: the file, seekable.
        size: its length in bytes.
    """
    if kind == "JPEG":
        # FFD9 cannot occur inside entropy-coded data (0xFF is stuffed there), so a final EOI
        # means the last scan was delivered; an EOI from an EXIF thumbnail is ruled out by the
        # caller checking that the header walk reached a scan.
        return _ends_with(f, size, b"\xff\xd9")
    if kind == "PNG":
        return _ends_with(f, size, _PNG_IEND)
    if kind == "GIF":
        # The trailer follows a block terminator; requiring both makes a cut that happens to
        # end in 0x3B a 1-in-65536 rather than a 1-in-256 false pass.
        return _ends_with(f, size, b"\x00\x3b")
    head = read_at(f, 0, 8)
    if kind == "WEBP":
        # The RIFF size counts every chunk's pad byte, so a whole file is exactly even; libwebp
        # refuses a size that excludes the pad, so there is no laxer reading worth allowing.
        return int.from_bytes(head[4:8], "little") == size - 8
    if kind == "BMP":
        return int.from_bytes(head[2:6], "little") == size
    return _isobmff_complete(f, size)


def jpeg_segments(f: BinaryIO, size: int) -> Iterator[tuple[int, int, int]]:
    """
    Walk a JPEG's marker segments up to its first scan, reading only their headers.

    Yields:
        (marker, payload offset, payload length) per segment, the scan's (0xDA) last; the walk
        ends early at EOI, at anything that is not a marker, or after :data:`MAX_WALK` segments.
    """
    pos = 2
    for _ in range(MAX_WALK):
        head = read_at(f, pos, 2)
        if len(head) < 2 or head[0] != 0xFF:
            return
        marker = head[1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            return
        length = int.from_bytes(read_at(f, pos + 2, 2), "big")
        if length < 2 or pos + 2 + length > size:
            return
        yield marker, pos + 4, length - 2
        if marker == 0xDA:
            return
        pos += 2 + length


def png_chunks(f: BinaryIO, size: int) -> Iterator[tuple[bytes, int, int]]:
    """
    Walk a PNG's chunks, reading only their headers.

    Yields:
        (type, payload offset, payload length) per chunk, IEND last; the walk ends early at a
        chunk running past the end of the file or after :data:`MAX_WALK` chunks.
    """
    pos = len(_PNG_SIGNATURE)
    for _ in range(MAX_WALK):
        head = read_at(f, pos, 8)
        if len(head) < 8:
            return
        length, kind = int.from_bytes(head[:4], "big"), head[4:]
        if pos + 12 + length > size:
            return
        yield kind, pos + 8, length
        if kind == b"IEND":
            return
        pos += 12 + length


def riff_chunks(f: BinaryIO, size: int) -> Iterator[tuple[bytes, int, int]]:
    """
    Walk a WebP's RIFF chunks, reading only their headers.

    Yields:
        (fourcc, payload offset, payload length) per chunk; the walk ends at the end of the
        RIFF data or the file, at a chunk running past either, or after :data:`MAX_WALK` chunks.
    """
    end = min(size, 8 + int.from_bytes(read_at(f, 4, 4), "little"))
    pos = 12
    for _ in range(MAX_WALK):
        head = read_at(f, pos, 8)
        if len(head) < 8:
            return
        fourcc, length = head[:4], int.from_bytes(head[4:], "little")
        if pos + 8 + length > end:
            return
        yield fourcc, pos + 8, length
        pos += 8 + length + (length & 1)


def webp_size(f: BinaryIO, size: int) -> tuple[int, int] | None:
    """
    Read a WebP's canvas size from its first chunk (VP8X, VP8 or VP8L), without libwebp.

    Libwebp reads the whole file to answer this; the header alone says it. A VP8X file must
    also hold an image (VP8, VP8L or an animation frame) within the walk's bounds.

    Returns:
        (width, height), or None when the first chunk is none of those or is malformed.
    """
    chunks = riff_chunks(f, size)
    first = next(chunks, None)
    if first is None:
        return None
    fourcc, offset, length = first
    body = read_at(f, offset, min(length, 30))
    if fourcc == b"VP8X" and len(body) >= 10:
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        has_image = any(c in (b"VP8 ", b"VP8L", b"ANMF") for c, _, _ in chunks)
        return (width, height) if has_image else None
    if fourcc == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        if body[0] & 1:  # an inter frame cannot start a still image
            return None
        return (
            int.from_bytes(body[6:8], "little") & 0x3FFF,
            int.from_bytes(body[8:10], "little") & 0x3FFF,
        )
    if fourcc == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        if bits >> 29:  # the version field must be 0
            return None
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None
