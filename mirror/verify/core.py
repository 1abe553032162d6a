"""
Prove that an image file is complete, of an allowed format and of the declared size.

The bytes decide; a Content-Type is never consulted. Structure mode (the default) decodes
nothing: Pillow reads the header through a window of :data:`HEADER_BUDGET` bytes (WebP's canvas
is read by hand, since libwebp would take the whole file), completeness is judged from the tail
or a length field, and the EXIF orientation is read by hand from its segment or chunk, only
when a declared size needs it. That keeps it cheap on thousands of small JPEGs and flat on a
190 KB PNG claiming 49 million pixels. Decode mode then decodes every frame in a worker process
(:mod:`mirror.verify.decode`).

No image object outlives the function that opened it, and no exception raised here carries a
Pillow traceback (whose frames would keep an image, and its file, alive as long as the error).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, BinaryIO, cast

from PIL import Image

from mirror.config import VerifyConfig
from mirror.errors import NotAnImage, VerifyError
from mirror.models import ImageInfo
from mirror.verify.decode import POOL, payload_of
from mirror.verify.exif import orientation
from mirror.verify.formats import (
    HEAD,
    KINDS,
    file_size,
    is_complete,
    jpeg_segments,
    pillow_quiet,
    pillow_supports,
    read_at,
    sniff,
    webp_size,
)

# How far into a file Pillow may read to find the size: JPEG segments up to the first scan, PNG
# chunks up to the first IDAT, GIF blocks up to the first frame. Real headers, ICC profiles and
# XMP included, are well under this; a "header" of megabytes is an attack on the parser.
HEADER_BUDGET = 4 * 1024 * 1024
# Pillow's AVIF and HEIF plugins hand the whole file to their library, so no window applies.
_WHOLE_FILE = frozenset({"AVIF", "HEIF"})
# Plausibility bounds for sizes scraped from HTML/Markdown; outside them the post is wrong, not
# the image.
_MAX_DECLARED_SIDE = 1_000_000


class _Window:
    """
    A read-only view of the first ``limit`` bytes of a file: Pillow sees end-of-file there.
    """

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self._f = f
        self._limit = limit
        self._pos = 0
        self.exhausted = False

    def read(self, count: int = -1) -> bytes:
        # Past the limit (Pillow may seek over a chunk that ends beyond it) nothing is left.
        room = max(0, self._limit - self._pos)
        if count < 0 or count > room:
            count = room
            self.exhausted = True
        self._f.seek(self._pos)
        data = self._f.read(count)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence == os.SEEK_END:
            offset += self._limit
        self._pos = max(0, offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _pillow_size(kind: str, f: BinaryIO, size: int) -> tuple[int, int]:
    """
    Read the size from the header with Pillow, restricted to the format the magic bytes named.
    """
    window = None
    if size > HEADER_BUDGET and kind not in _WHOLE_FILE:
        window = _Window(f, HEADER_BUDGET)
    # A file within the budget is given as it is: the window costs a Python call per read.
    fp = f if window is None else cast(IO[bytes], window)
    problem: VerifyError | None = None
    try:
        f.seek(0)
        with pillow_quiet(), Image.open(fp, formats=[kind]) as im:
            dims: tuple[int, int] = im.size
            scanned = bool(getattr(im, "tile", None))
    except Image.DecompressionBombError as exc:
        problem = VerifyError(f"{kind} header declares a pixel bomb: {exc}", "pixel-bomb")
    except Exception as exc:
        # Pillow's parsers raise a zoo of types on hostile input; all mean "cannot read it".
        problem = _unreadable(kind, f, size, window, exc)
    # Raised here, outside the except clause, so the error chains no Pillow traceback.
    if problem is not None:
        raise problem
    if kind == "JPEG" and not scanned:
        # Pillow stops quietly at end of data; no tile means the walk never reached a scan.
        raise VerifyError("JPEG ends before its first scan", "truncated")
    return dims


def _unreadable(
    kind: str, f: BinaryIO, size: int, window: _Window | None, exc: Exception
) -> VerifyError:
    """
    Tell a file cut inside its header from bytes that are no image at all.
    """
    # A JPEG with no scan at all was cut inside its header, perhaps just after an EXIF
    # thumbnail's EOI, which fools the end-marker check.
    no_scan = kind == "JPEG" and all(m != 0xDA for m, _, _ in jpeg_segments(f, size))
    if not is_complete(kind, f, size) or no_scan:
        return VerifyError(f"{kind} is cut short before its header ends", "truncated")
    if window is not None and window.exhausted:
        return NotAnImage(f"{kind} header runs past {HEADER_BUDGET} bytes")
    return NotAnImage(f"{kind} magic but Pillow cannot parse it: {exc}")


def _plausible(declared: tuple[int, int] | None) -> tuple[int, int] | None:
    """
    Return ``declared`` if it can be a real size, else None.
    """
    if declared is None or len(declared) != 2:
        return None
    width, height = declared
    ok = all(isinstance(v, int) and 0 < v <= _MAX_DECLARED_SIDE for v in declared)
    return (width, height) if ok else None


def _same_shape(actual: tuple[int, int], declared: tuple[int, int], tolerance: float) -> bool:
    """
    Say whether ``actual`` is ``declared`` scaled, allowing ``tolerance`` or one pixel rounding.
    """
    (w, h), (dw, dh) = actual, declared
    # A scaled thumbnail rounds one side to a whole pixel, which on a small image is more than
    # the relative tolerance; accept the size the rounding could have produced.
    if abs(h - w * dh / dw) <= 1 or abs(w - h * dw / dh) <= 1:
        return True
    return abs((w / h) / (dw / dh) - 1) <= tolerance


def _check_size(
    kind: str,
    f: BinaryIO,
    size: int,
    dims: tuple[int, int],
    config: VerifyConfig,
    declared: tuple[int, int],
) -> None:
    """
    Compare the real size with the declared one; the EXIF rotation may swap the sides.
    """
    candidates = [dims]
    if dims != declared and orientation(kind, f, size) in (5, 6, 7, 8):
        candidates.append((dims[1], dims[0]))
    if declared in candidates:
        return
    if config.size_check == "aspect" and any(
        _same_shape(c, declared, config.aspect_tolerance) for c in candidates
    ):
        return
    raise VerifyError(
        f"declared {declared[0]}x{declared[1]}, image is {dims[0]}x{dims[1]}"
        f" ({config.size_check} check)",
        "size-mismatch",
    )


def check_structure(
    f: BinaryIO,
    config: VerifyConfig,
    declared: tuple[int, int] | None = None,
    declared_kind: str | None = None,
) -> ImageInfo:
    """
    Run every check of structure mode on the seekable file ``f``; decode nothing.

    Raises:
        NotAnImage: unknown magic, a format outside ``config.formats`` or unsupported by this
            Pillow, or a header Pillow cannot parse.
        VerifyError: reason ``pixel-bomb``, ``truncated`` or ``size-mismatch``.
    """
    size = file_size(f)
    head = read_at(f, 0, HEAD)
    kind = sniff(head)
    if kind is None:
        raise NotAnImage(f"no image magic in {size} bytes starting {head[:16]!r}")
    if kind not in config.formats:
        raise NotAnImage(f"{kind} is not an allowed format")
    if not pillow_supports(kind):
        raise NotAnImage(f"{kind} is not supported by this Pillow build")
    if kind == "WEBP":
        found = webp_size(f, size)
        if found is None:
            if not is_complete(kind, f, size):
                raise VerifyError("WEBP is cut short before its header ends", "truncated")
            raise NotAnImage("WEBP magic but no readable VP8X, VP8 or VP8L header")
        width, height = found
    else:
        width, height = _pillow_size(kind, f, size)
    if width <= 0 or height <= 0:
        raise NotAnImage(f"{kind} header declares {width}x{height}")
    if width * height > config.max_pixels:
        raise VerifyError(
            f"{kind} header declares {width}x{height}, over {config.max_pixels} pixels",
            "pixel-bomb",
        )
    if not is_complete(kind, f, size):
        raise VerifyError(f"{kind} of {size} bytes lacks its end", "truncated")
    checked = _plausible(declared)
    if checked is not None and declared_kind != "display" and config.size_check != "off":
        _check_size(kind, f, size, (width, height), config, checked)
    ext, mime = KINDS[kind]
    return ImageInfo(format=kind, ext=ext, mime=mime, width=width, height=height)


def verify_file(
    file: str | os.PathLike[str] | BinaryIO,
    config: VerifyConfig,
    declared: tuple[int, int] | None = None,
    declared_kind: str | None = None,
) -> ImageInfo:
    """
    Prove the image file is whole, of an allowed format and, if declared, of the right size.

    Structure mode reads the header (at most :data:`HEADER_BUDGET` bytes), the tail and, when
    a declared size needs it, the EXIF block: never the body. Decode mode then decodes every
    frame in a worker process and blocks until it answers; on an event loop, await
    :func:`mirror.verify.verify_async` instead.

    Args:
        file: a path, or a seekable binary file (read from wherever it is; left open).
        config: the ``verify`` section.
        declared: the size the post declares, if any.
        declared_kind: how the post declared it; ``"display"`` sizes are never checked.

    Returns:
        The format, extension, MIME type and size.

    Raises:
        NotAnImage: unknown magic, a format outside ``config.formats`` or unsupported by this
            Pillow, or bytes Pillow cannot parse.
        VerifyError: reason ``pixel-bomb``, ``truncated`` or ``size-mismatch``.
        OSError: the path cannot be read.
    """
    if isinstance(file, str | os.PathLike):
        with Path(file).open("rb") as f:
            info = check_structure(f, config, declared, declared_kind)
        if config.mode == "decode":
            POOL.decode_sync(config, os.fspath(file), info.format)
        return info
    info = check_structure(file, config, declared, declared_kind)
    if config.mode == "decode":
        POOL.decode_sync(config, payload_of(file), info.format)
    return info


def verify(
    data: bytes,
    config: VerifyConfig,
    declared: tuple[int, int] | None = None,
    declared_kind: str | None = None,
) -> ImageInfo:
    """
    Prove the bytes ``data`` are a whole image: :func:`verify_file` over them, without a copy.

    Raises:
        NotAnImage: as :func:`verify_file`.
        VerifyError: as :func:`verify_file`.
    """
    # BytesIO over bytes shares the buffer until written to: no copy of the body.
    info = check_structure(io.BytesIO(data), config, declared, declared_kind)
    if config.mode == "decode":
        POOL.decode_sync(config, data, info.format)
    return info
