"""
Tests for mirror.verify: format sniffing, pixel bombs, truncation, decode mode and size checks.
"""

# The project writes asserts as `expected == actual`, which SIM300 calls a Yoda condition.

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from mirror.config import VerifyConfig
from mirror.errors import NotAnImage, VerifyError
from mirror.models import ImageInfo
from mirror.verify import pillow_supports, sniff, verify

DEFAULT = VerifyConfig()
DECODE = VerifyConfig(mode="decode")
EXACT = VerifyConfig(size_check="exact")
OFF = VerifyConfig(size_check="off")


def encode(fmt: str, size: tuple[int, int] = (64, 48), **options: Any) -> bytes:
    """
    Encode a noisy (so not trivially compressible) RGB image of ``size`` as ``fmt``.
    """
    im = Image.effect_noise(size, 40).convert("RGB")
    buffer = io.BytesIO()
    im.save(buffer, fmt, **options)
    return buffer.getvalue()


def animated(fmt: str) -> bytes:
    """
    Encode a three-frame animation as ``fmt``.
    """
    frames = [Image.new("RGB", (32, 24), color) for color in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """
    Frame one PNG chunk with its length and CRC.
    """
    crc = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """
    Build a tiny, structurally complete PNG whose IHDR claims ``width`` x ``height``.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_orientation(orientation: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """
    Encode a JPEG whose EXIF says ``orientation``.
    """
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode("JPEG", size, exif=exif.tobytes())


def reason_of(data: bytes, config: VerifyConfig = DEFAULT, **kwargs: Any) -> str:
    """
    Run verify and return the reason it failed with.
    """
    with pytest.raises(VerifyError) as info:
        verify(data, config, **kwargs)
    return info.value.reason


FORMATS = [
    ("JPEG", "jpg", "image/jpeg"),
    ("PNG", "png", "image/png"),
    ("GIF", "gif", "image/gif"),
    ("WEBP", "webp", "image/webp"),
    ("BMP", "bmp", "image/bmp"),
]
if pillow_supports("AVIF"):
    FORMATS.append(("AVIF", "avif", "image/avif"))


@pytest.mark.parametrize(("fmt", "ext", "mime"), FORMATS)
def test_each_format_verifies_with_its_image_info(fmt: str, ext: str, mime: str) -> None:
    """
    A whole image of every allowed format yields its format, extension, MIME type and size.
    """
    assert ImageInfo(fmt, ext, mime, 64, 48) == verify(encode(fmt), DEFAULT)


@pytest.mark.parametrize(("fmt", "ext"), [("GIF", "gif"), ("WEBP", "webp")])
def test_animations_verify_with_their_canvas_size(fmt: str, ext: str) -> None:
    """
    An animated GIF or WebP verifies, in both modes, with its canvas size.
    """
    data = animated(fmt)
    for config in (DEFAULT, DECODE):
        assert ImageInfo(fmt, ext, f"image/{ext}", 32, 24) == verify(data, config)


@pytest.mark.parametrize(("fmt", "ext", "mime"), FORMATS)
def test_decode_mode_accepts_whole_images(fmt: str, ext: str, mime: str) -> None:
    """
    Decode mode passes every intact format.
    """
    assert ImageInfo(fmt, ext, mime, 64, 48) == verify(encode(fmt), DECODE)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0rest", "JPEG"),
        (b"\x89PNG\r\n\x1a\nrest", "PNG"),
        (b"GIF87a....", "GIF"),
        (b"GIF89a....", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM" + bytes(12) + b"\x28\x00\x00\x00", "BMP"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "AVIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif", "AVIF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", None),
        (b"BMW builds cars, not bitmaps", None),
        (b"<!DOCTYPE html><html>", None),
        (b"", None),
    ],
)
def test_sniff_names_formats_by_magic_bytes(data: bytes, expected: str | None) -> None:
    """
    Sniff reads the format from magic bytes alone and returns None for everything else.
    """
    assert expected == sniff(data)


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE html><html><head><title>404 Not Found</title></head></html>",
        b"<html>\r\n<body>Rate limited</body></html>",
        b'{"error": "blocked"}',
        b"plain text error page\n",
        b"",
        b"\x00" * 100,
        b"BMW builds cars, not bitmaps",
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(100),
    ],
)
def test_non_images_are_not_an_image(data: bytes) -> None:
    """
    HTML, text, JSON, empty and video bodies fail with NotAnImage.
    """
    with pytest.raises(NotAnImage) as info:
        verify(data, DEFAULT)
    assert "not-an-image" == info.value.reason


def test_format_outside_the_allowlist_is_not_an_image() -> None:
    """
    A valid JPEG is refused when config.formats allows only PNG.
    """
    with pytest.raises(NotAnImage):
        verify(encode("JPEG"), VerifyConfig(formats=("PNG",)))


def test_image_magic_over_garbage_is_not_an_image() -> None:
    """
    PNG magic followed by a complete-looking but unparsable body is not an image.
    """
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"JUNK", b"x" * 40) + png_chunk(b"IEND", b"")
    with pytest.raises(NotAnImage):
        verify(data, DEFAULT)


@pytest.mark.skipif(pillow_supports("HEIF"), reason="pillow-heif is installed here")
def test_heif_without_a_pillow_plugin_is_not_an_image() -> None:
    """
    HEIF is refused cleanly rather than crashing when this Pillow cannot read it.
    """
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    with pytest.raises(NotAnImage):
        verify(data, DEFAULT)


@pytest.mark.parametrize(
    ("size", "config"),
    [
        # Pillow itself raises DecompressionBombError above twice its limit.
        ((40000, 40000), DEFAULT),
        # Between Pillow's limit and twice it, Pillow only warns; the suite turns warnings into
        # errors, so this proves the warning is contained.
        ((10000, 10000), DEFAULT),
        # Under Pillow's limit, only our cap catches it.
        ((8000, 8000), DEFAULT),
        ((1001, 1000), VerifyConfig(max_pixels=1_000_000)),
    ],
)
def test_header_over_the_pixel_cap_is_a_pixel_bomb(
    size: tuple[int, int], config: VerifyConfig
) -> None:
    """
    A tiny PNG whose header declares more pixels than the cap is a pixel bomb.
    """
    data = png_header_only(*size)
    assert len(data) < 200
    assert "pixel-bomb" == reason_of(data, config)
    assert "pixel-bomb" == reason_of(
        data, VerifyConfig(max_pixels=config.max_pixels, mode="decode")
    )


def test_cap_above_pillows_limit_passes_without_warnings() -> None:
    """
    With max_pixels raised past Pillow's own limit, a big header verifies and no warning escapes.
    """
    info = verify(png_header_only(10000, 10000), VerifyConfig(max_pixels=200_000_000))
    assert (10000, 10000) == (info.width, info.height)


def test_corrupt_exif_warning_does_not_escape() -> None:
    """
    Pillow's corrupt-EXIF warning is contained; the JPEG still verifies and size checks run.
    """
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x010E, 2, 400, 5000) + bytes(4)
    data = encode("JPEG", exif=b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd)
    assert 64 == verify(data, EXACT, declared=(64, 48)).width
    assert "size-mismatch" == reason_of(data, EXACT, declared=(48, 64))


@pytest.mark.parametrize("fmt", [f for f, _, _ in FORMATS])
@pytest.mark.parametrize("keep", [0.99, 0.5, 0.1])
def test_truncated_images_are_truncated(fmt: str, keep: float) -> None:
    """
    Every format cut short (near the end, in the middle, in the header) is truncated.
    """
    data = encode(fmt, (128, 96))
    cut = data[: min(int(len(data) * keep), len(data) - 1)]
    assert "truncated" == reason_of(cut, DEFAULT)


@pytest.mark.parametrize("fmt", [f for f, _, _ in FORMATS])
def test_last_byte_missing_is_truncated(fmt: str) -> None:
    """
    Losing only the final byte of any format is caught.
    """
    assert "truncated" == reason_of(encode(fmt)[:-1], DEFAULT)


def test_truncated_animated_gif_is_truncated() -> None:
    """
    An animated GIF cut before its last frame is truncated.
    """
    data = animated("GIF")
    assert "truncated" == reason_of(data[: len(data) - 20], DEFAULT)


def test_jpeg_cut_right_after_an_embedded_eoi_is_truncated() -> None:
    """
    A JPEG cut just after an FFD9 inside a header segment (an EXIF thumbnail) is truncated.
    """
    data = encode("JPEG")
    sos = data.index(b"\xff\xda")
    comment = b"\xff\xfe\x00\x0cthumb\xff\xd9\x00\x00\x00"
    spliced = data[:sos] + comment + data[sos:]
    assert "truncated" == reason_of(spliced[: sos + len(comment) - 3], DEFAULT)


@pytest.mark.parametrize(
    ("padding", "ok"),
    [
        (b"\r\n", True),
        (b"\x00" * 512, True),
        (b"\xff" * 16, True),
        (b"\x00" * 4096, False),
        (b"<html>ad</html>", False),
    ],
)
def test_jpeg_trailing_padding_is_bounded(padding: bytes, ok: bool) -> None:
    """
    A little NUL/0xFF/newline padding after EOI is tolerated; a lot, or anything else, is not.
    """
    data = encode("JPEG") + padding
    if ok:
        assert "JPEG" == verify(data, DEFAULT).format
    else:
        assert "truncated" == reason_of(data, DEFAULT)


@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00", b"RIFFjunk"])
def test_webp_longer_than_its_riff_size_is_refused(tail: bytes) -> None:
    """
    Bytes past the RIFF size mean a splice or a wrong body, so the WebP is not accepted.
    """
    assert "truncated" == reason_of(encode("WEBP") + tail, DEFAULT)


def test_decode_mode_catches_corruption_that_structure_mode_lets_through() -> None:
    """
    A JPEG with its start spliced over its middle (a server ignoring Range) fails only in decode.
    """
    data = encode("JPEG", (256, 192), quality=90)
    middle = len(data) // 2
    corrupt = data[:middle] + data[:600] + data[middle + 600 :]
    assert len(data) == len(corrupt)
    assert "JPEG" == verify(corrupt, DEFAULT).format
    assert "truncated" == reason_of(corrupt, DECODE)


SIZE_TABLE = [
    # actual, declared, size_check, ok
    ((64, 48), (64, 48), "exact", True),
    ((64, 48), (64, 48), "aspect", True),
    ((64, 48), (48, 64), "exact", False),
    ((64, 48), (48, 64), "aspect", False),
    ((64, 48), (48, 64), "off", True),
    # A ZAKER-style `_1024` variant declares the original's size.
    ((1024, 683), (3000, 2000), "aspect", True),
    ((1024, 683), (3000, 2000), "exact", False),
    ((1024, 683), (3000, 2000), "off", True),
    # Rounding on a small thumbnail is more than 2% but only one pixel.
    ((10, 7), (3000, 2000), "aspect", True),
    # Within 2% of the declared shape, and just outside it.
    ((200, 101), (200, 100), "aspect", True),
    ((200, 120), (200, 100), "aspect", False),
    ((640, 480), (480, 480), "aspect", False),
    ((640, 480), (480, 480), "off", True),
]


@pytest.mark.parametrize(("actual", "declared", "check", "ok"), SIZE_TABLE)
def test_declared_size_checks(
    actual: tuple[int, int], declared: tuple[int, int], check: str, ok: bool
) -> None:
    """
    Exact needs the same size, aspect accepts the same shape, off accepts anything.
    """
    data = encode("PNG", actual)
    config = VerifyConfig(size_check=check)
    if ok:
        info = verify(data, config, declared=declared)
        assert actual == (info.width, info.height)
    else:
        assert "size-mismatch" == reason_of(data, config, declared=declared)


def test_size_mismatch_message_gives_both_sizes() -> None:
    """
    The size-mismatch message names the declared and the real size.
    """
    with pytest.raises(VerifyError) as info:
        verify(encode("PNG", (64, 48)), EXACT, declared=(300, 200))
    assert "size-mismatch" == info.value.reason
    assert "300x200" in str(info.value)
    assert "64x48" in str(info.value)


@pytest.mark.parametrize("config", [EXACT, DEFAULT])
def test_exif_rotation_swaps_the_declared_size(config: VerifyConfig) -> None:
    """
    A JPEG stored 64x48 with EXIF orientation 6 displays 48x64 and matches that declaration.
    """
    info = verify(jpeg_with_orientation(6), config, declared=(48, 64))
    assert (64, 48) == (info.width, info.height)


def test_swapped_size_without_rotation_is_a_mismatch() -> None:
    """
    The same swapped declaration fails when the EXIF orientation is upright.
    """
    assert "size-mismatch" == reason_of(jpeg_with_orientation(1), EXACT, declared=(48, 64))


def test_display_sizes_are_never_checked() -> None:
    """
    A CSS/display size says nothing about the pixels, even under the exact check.
    """
    info = verify(encode("PNG"), EXACT, declared=(999, 5), declared_kind="display")
    assert 64 == info.width


@pytest.mark.parametrize("declared", [(0, 0), (0, 48), (64, 0), (-64, 48), (10**9, 48)])
def test_nonsense_declared_sizes_are_ignored(declared: tuple[int, int]) -> None:
    """
    Zero, negative or absurd declared sizes count as undeclared.
    """
    assert 64 == verify(encode("PNG"), EXACT, declared=declared).width
