"""
Read the EXIF orientation by hand: tag 0x0112 of IFD0, from where each format keeps EXIF.

JPEG keeps it in an APP1 segment starting ``Exif\\0\\0``, PNG in an ``eXIf`` chunk (before or
after the image data), WebP in an ``EXIF`` chunk. Each is found by walking headers and read with
one bounded read; nothing is decoded (Pillow's ``getexif()`` decodes a whole PNG to find a late
eXIf chunk). Any other format, or anything malformed, counts as upright (1): a broken EXIF block
does not make the pixels wrong.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from mirror.verify.formats import jpeg_segments, png_chunks, read_at, riff_chunks

ORIENTATION_TAG = 0x0112
_EXIF_PREFIX = b"Exif\x00\x00"
# IFD0 sits right after the 8-byte TIFF header in every writer seen; an EXIF block is at most
# 64 KiB in a JPEG, so more than that is never needed to reach it.
MAX_EXIF_READ = 64 * 1024
_SHORT, _LONG = 3, 4


def tiff_orientation(payload: bytes) -> int:
    """
    Return the orientation (1-8) in a TIFF-structured EXIF payload, 1 when absent or malformed.

    Only IFD0 is read and no offset is followed except the one to IFD0, so a loop of IFDs or an
    offset out of range costs nothing; an entry count larger than the payload is cut to what
    the payload holds.
    """
    if payload.startswith(_EXIF_PREFIX):
        payload = payload[len(_EXIF_PREFIX) :]
    if len(payload) < 8:
        return 1
    if payload[:4] == b"II*\x00":
        order = "<"
    elif payload[:4] == b"MM\x00*":
        order = ">"
    else:
        return 1
    (ifd,) = struct.unpack_from(order + "I", payload, 4)
    if ifd < 8 or ifd + 2 > len(payload):
        return 1
    (count,) = struct.unpack_from(order + "H", payload, ifd)
    count = min(count, (len(payload) - ifd - 2) // 12)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, values = struct.unpack_from(order + "HHI", payload, entry)
        if tag != ORIENTATION_TAG:
            continue
        if values != 1 or kind not in (_SHORT, _LONG):
            return 1
        (value,) = struct.unpack_from(order + ("H" if kind == _SHORT else "I"), payload, entry + 8)
        return value if 1 <= value <= 8 else 1
    return 1


def orientation(kind: str, f: BinaryIO, size: int) -> int:
    """
    Return the EXIF orientation of the image file ``f`` of format ``kind``; 1 when it has none.

    Args:
        kind: the format :func:`mirror.verify.formats.sniff` named.
        f: the file, seekable.
        size: its length in bytes.
    """
    payload = _exif_payload(kind, f, size)
    return 1 if payload is None else tiff_orientation(payload)


def _exif_payload(kind: str, f: BinaryIO, size: int) -> bytes | None:
    """
    Find the first EXIF block of ``f`` and read (at most :data:`MAX_EXIF_READ` bytes of) it.
    """
    if kind == "JPEG":
        for marker, offset, length in jpeg_segments(f, size):
            if marker == 0xE1 and read_at(f, offset, len(_EXIF_PREFIX)) == _EXIF_PREFIX:
                return read_at(f, offset, min(length, MAX_EXIF_READ))
        return None
    if kind == "PNG":
        found = next((c for c in png_chunks(f, size) if c[0] == b"eXIf"), None)
    elif kind == "WEBP":
        found = next((c for c in riff_chunks(f, size) if c[0] == b"EXIF"), None)
    else:
        return None
    if found is None:
        return None
    _, offset, length = found
    return read_at(f, offset, min(length, MAX_EXIF_READ))
