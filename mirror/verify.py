"""
Prove that downloaded bytes are a complete image of an allowed format and the declared size.

Pure: bytes in, :class:`ImageInfo` or an exception out. The bytes decide; a Content-Type is
never consulted. By default nothing is decoded: Pillow reads the header, and completeness is
judged from each format's end marker or length field, which is what keeps this on par with the
downloader on thousands of small JPEGs.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageSequence, features

from mirror.config import VerifyConfig
from mirror.errors import NotAnImage, VerifyError
from mirror.models import ImageInfo

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

_ORIENTATION_TAG = 0x0112
# Plausibility bounds for sizes scraped from HTML/Markdown; outside them the post is wrong, not
# the image.
_MAX_DECLARED_SIDE = 1_000_000


def sniff(data: bytes) -> str | None:
    """
    Name the image format from the magic bytes, or return None for anything else.
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
    box_end = min(int.from_bytes(data[:4], "big"), len(data), 256)
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
def _pillow_quiet() -> Iterator[None]:
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


def _ends_with(data: bytes, marker: bytes) -> bool:
    """
    Say whether ``data`` ends with ``marker``, allowing a little trailing padding.
    """
    if data.endswith(marker):
        return True
    # Slicing copies only the tail, never the whole body.
    tail = data[-(_MAX_PADDING + len(marker)) :].rstrip(_PADDING)
    return tail.endswith(marker)


def _isobmff_complete(data: bytes) -> bool:
    """
    Walk the top-level boxes; a complete file ends exactly where its last box does.
    """
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            return False
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size == 0:  # "extends to the end of the file"
            return True
        if size == 1:
            if end - pos < 16:
                return False
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            if size < 16:
                return False
        elif size < 8:
            return False
        pos += size
    return pos == end


def is_complete(kind: str, data: bytes) -> bool:
    """
    Judge from end markers and length fields, without decoding, whether ``data`` is whole.
    """
    if kind == "JPEG":
        # FFD9 cannot occur inside entropy-coded data (0xFF is stuffed there), so a final EOI
        # means the last scan was delivered; an EOI from an EXIF thumbnail is ruled out by the
        # caller checking that the header walk reached a scan.
        return _ends_with(data, b"\xff\xd9")
    if kind == "PNG":
        return _ends_with(data, _PNG_IEND)
    if kind == "GIF":
        # The trailer follows a block terminator; requiring both makes a cut that happens to
        # end in 0x3B a 1-in-65536 rather than a 1-in-256 false pass.
        return _ends_with(data, b"\x00\x3b")
    if kind == "WEBP":
        # The RIFF size counts every chunk's pad byte, so a whole file is exactly even; libwebp
        # refuses a size that excludes the pad, so there is no laxer reading worth allowing.
        return int.from_bytes(data[4:8], "little") == len(data) - 8
    if kind == "BMP":
        return int.from_bytes(data[2:6], "little") == len(data)
    return _isobmff_complete(data)


def _open(kind: str, data: bytes) -> Image.Image:
    """
    Read the header with Pillow, restricted to the one format the magic bytes named.
    """
    try:
        # BytesIO over bytes shares the buffer until written to: no copy of the body.
        im = Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError as exc:
        raise VerifyError(f"{kind} header declares a pixel bomb: {exc}", "pixel-bomb") from exc
    except Exception as exc:
        # Pillow's parsers raise a zoo of types on hostile input; all mean "cannot read it".
        # A JPEG with no scan at all was cut inside its header, perhaps just after an EXIF
        # thumbnail's EOI, which fools the end-marker check.
        if not is_complete(kind, data) or (kind == "JPEG" and b"\xff\xda" not in data):
            raise VerifyError(f"{kind} is cut short before its header ends", "truncated") from exc
        raise NotAnImage(f"{kind} magic but Pillow cannot parse it: {exc}") from exc
    if kind == "JPEG" and not getattr(im, "tile", None):
        # Pillow stops quietly at end of data; no tile means the walk never reached a scan.
        raise VerifyError("JPEG ends before its first scan", "truncated")
    return im


def _decode(im: Image.Image, kind: str) -> None:
    """
    Decode every frame, so corruption anywhere surfaces as an exception.
    """
    try:
        for frame in ImageSequence.Iterator(im):
            frame.load()
    except Image.DecompressionBombError as exc:
        raise VerifyError(f"{kind} frame is a pixel bomb: {exc}", "pixel-bomb") from exc
    except Exception as exc:
        raise VerifyError(f"{kind} does not decode: {exc}", "truncated") from exc


def _orientation(im: Image.Image) -> int:
    """
    Return the EXIF orientation, 1 when absent or unreadable.
    """
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        # A broken EXIF block does not make the pixels wrong; treat it as absent.
        return 1
    return value if isinstance(value, int) else 1


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


def _check_size(im: Image.Image, config: VerifyConfig, declared: tuple[int, int]) -> None:
    """
    Compare the real size with the declared one; the EXIF rotation may swap the sides.
    """
    size: tuple[int, int] = im.size
    candidates = [size]
    if size != declared and _orientation(im) in (5, 6, 7, 8):
        candidates.append((size[1], size[0]))
    if declared in candidates:
        return
    if config.size_check == "aspect" and any(
        _same_shape(c, declared, config.aspect_tolerance) for c in candidates
    ):
        return
    raise VerifyError(
        f"declared {declared[0]}x{declared[1]}, image is {size[0]}x{size[1]}"
        f" ({config.size_check} check)",
        "size-mismatch",
    )


def verify(
    data: bytes,
    config: VerifyConfig,
    declared: tuple[int, int] | None = None,
    declared_kind: str | None = None,
) -> ImageInfo:
    """
    Prove ``data`` is a whole image of an allowed format and, if declared, of the right size.

    Raises:
        NotAnImage: unknown magic, a format outside ``config.formats`` or unsupported by this
            Pillow, or bytes Pillow cannot parse.
        VerifyError: reason ``pixel-bomb``, ``truncated`` or ``size-mismatch``.
    """
    kind = sniff(data)
    if kind is None:
        raise NotAnImage(f"no image magic in {len(data)} bytes starting {bytes(data[:16])!r}")
    if kind not in config.formats:
        raise NotAnImage(f"{kind} is not an allowed format")
    if not pillow_supports(kind):
        raise NotAnImage(f"{kind} is not supported by this Pillow build")
    with _pillow_quiet(), _open(kind, data) as im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise NotAnImage(f"{kind} header declares {width}x{height}")
        if width * height > config.max_pixels:
            raise VerifyError(
                f"{kind} header declares {width}x{height}, over {config.max_pixels} pixels",
                "pixel-bomb",
            )
        if not is_complete(kind, data):
            raise VerifyError(f"{kind} of {len(data)} bytes lacks its end", "truncated")
        if config.mode == "decode":
            _decode(im, kind)
        checked = _plausible(declared)
        if checked is not None and declared_kind != "display" and config.size_check != "off":
            _check_size(im, config, checked)
    ext, mime = KINDS[kind]
    return ImageInfo(format=kind, ext=ext, mime=mime, width=width, height=height)
