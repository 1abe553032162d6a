"""
Tests for mirror.verify: sniffing, pixel bombs, truncation, size checks, EXIF, decode workers.
"""

# The project writes asserts as `expected == actual`, which SIM300 calls a Yoda condition.

from __future__ import annotations

import functools
import io
import os
import resource
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mirror.config import VerifyConfig
from mirror.errors import ConfigError, NotAnImage, VerifyError
from mirror.models import ImageInfo
from mirror.verify import (
    HEADER_BUDGET,
    POOL,
    core,
    pillow_supports,
    sniff,
    verify,
    verify_async,
    verify_file,
)
from mirror.verify.decode import TASKS_PER_WORKER, DecodePool
from mirror.verify.exif import orientation, tiff_orientation

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


# --- the file-based core: headers and tails, never bodies -------------------------------------


class CountingFile(io.FileIO):
    """
    A real file that counts the bytes read from it.
    """

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


@functools.cache
def black_idat(width: int, height: int) -> bytes:
    """
    Compress the rows of a black greyscale image of ``width`` x ``height``.
    """
    return zlib.compress(bytes((1 + width) * height), 6)


def big_png(width: int, height: int, exif: bytes | None = None, *, after: bool = False) -> bytes:
    """
    Build a black greyscale PNG of ``width`` x ``height`` by hand, with an eXIf chunk if given.
    """
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    extra = b"" if exif is None else png_chunk(b"eXIf", exif)
    idat = png_chunk(b"IDAT", black_idat(width, height))
    body = idat + extra if after else extra + idat
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + png_chunk(b"IEND", b"")


def tiff_block(orientation: int, order: str = "<", *, entries: list[bytes] | None = None) -> bytes:
    """
    Build a TIFF header and an IFD0 holding the orientation (or the raw ``entries`` given).
    """
    mark = b"II*\x00" if order == "<" else b"MM\x00*"
    if entries is None:
        entries = [struct.pack(f"{order}HHIHH", 0x0112, 3, 1, orientation, 0)]
    count = struct.pack(f"{order}H", len(entries))
    return mark + struct.pack(f"{order}I", 8) + count + b"".join(entries) + bytes(4)


@pytest.mark.parametrize(("fmt", "ext", "mime"), FORMATS)
def test_verify_file_reads_a_path_as_verify_reads_bytes(
    fmt: str, ext: str, mime: str, tmp_path: Path
) -> None:
    """
    verify_file over a path or an open file gives what verify gives over the same bytes.
    """
    data = encode(fmt)
    path = tmp_path / f"image.{ext}"
    path.write_bytes(data)
    expected = verify(data, DEFAULT, (64, 48))
    assert expected == verify_file(path, DEFAULT, (64, 48))
    with path.open("rb") as f:
        assert expected == verify_file(f, DEFAULT, (64, 48))
    assert "truncated" == reason_of(data[:-1], DEFAULT)
    path.write_bytes(data[:-1])
    with pytest.raises(VerifyError) as info:
        verify_file(path, DEFAULT)
    assert "truncated" == info.value.reason


@pytest.mark.parametrize(
    ("exif", "after", "declared", "reason"),
    [
        (False, False, (3500, 3500), None),  # scaled: no orientation needed
        (False, False, (700, 400), "size-mismatch"),  # looks for an orientation, finds none
        (True, False, (5000, 7000), None),
        (True, True, (5000, 7000), None),  # eXIf after the image data, as some writers put it
    ],
)
def test_structure_mode_reads_headers_not_the_pixels(
    tmp_path: Path, exif: bool, after: bool, declared: tuple[int, int], reason: str | None
) -> None:
    """
    A 49-megapixel PNG is verified from a few kilobytes: the image data is never read.
    """
    width, height = (7000, 5000) if exif else (7000, 7000)
    data = big_png(width, height, tiff_block(6) if exif else None, after=after)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with CountingFile(path, "rb") as f:
        if reason is None:
            info = verify_file(f, DEFAULT, declared)
            assert (width, height) == (info.width, info.height)
        else:
            with pytest.raises(VerifyError) as caught:
                verify_file(f, DEFAULT, declared)
            assert reason == caught.value.reason
        assert len(data) > 30_000
        assert f.read_bytes < 4096


def test_a_header_past_the_budget_is_not_an_image(tmp_path: Path) -> None:
    """
    A JPEG whose segments before the first scan run past the header budget is refused.
    """
    data = encode("JPEG")
    filler = b"\xff\xfe\xff\xff" + bytes(65533)  # a maximal COM segment
    count = HEADER_BUDGET // len(filler) + 2
    huge = data[:2] + filler * count + data[2:]
    path = tmp_path / "huge.jpg"
    path.write_bytes(huge)
    with CountingFile(path, "rb") as f, pytest.raises(NotAnImage) as info:
        verify_file(f, DEFAULT)
    assert "header runs past" in str(info.value)
    assert f.read_bytes < HEADER_BUDGET + 70_000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_file_past_the_header_budget_verifies_through_the_window(
    fmt: str, tmp_path: Path
) -> None:
    """
    A file larger than the header budget verifies from its header and tail alone.
    """
    filler = bytes(range(255)) * (HEADER_BUDGET // 255 + 4096)  # no 0xFF: plain scan data
    if fmt == "PNG":
        ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4000, 3000, 8, 2, 0, 0, 0))
        body = ihdr + png_chunk(b"IDAT", filler)
        data = b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")
    else:
        small = encode("JPEG", (4000, 3000), quality=10)
        data = small[:-2] + filler + b"\xff\xd9"
    path = tmp_path / "large"
    path.write_bytes(data)
    with CountingFile(path, "rb") as f:
        info = verify_file(f, DEFAULT, (4000, 3000))
        assert len(data) > HEADER_BUDGET
        assert f.read_bytes < 16384
    assert (fmt, 4000, 3000) == (info.format, info.width, info.height)


def test_the_header_window_ends_at_its_limit() -> None:
    """
    Reads through the header window stop at its limit, also after a seek past it.
    """
    window = core._Window(io.BytesIO(bytes(range(100))), 10)
    assert bytes(range(8)) == window.read(8)
    assert bytes([8, 9]) == window.read(5)
    assert window.exhausted
    assert 50 == window.seek(40, os.SEEK_CUR)
    assert b"" == window.read()
    assert b"" == window.read(3)


def test_errors_hold_no_pillow_frame_or_image() -> None:
    """
    A refused file's exception chains no Pillow traceback, so it keeps no image alive.
    """
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"JUNK", b"x" * 40) + png_chunk(b"IEND", b"")
    with pytest.raises(NotAnImage) as info:
        verify(data, DEFAULT)
    error: BaseException | None = info.value
    frames = []
    while error is not None:
        tb = error.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    assert [] == [f.f_code.co_filename for f in frames if "/PIL/" in f.f_code.co_filename]
    held = [v for f in frames for v in f.f_locals.values() if isinstance(v, Image.Image)]
    assert [] == held


# --- EXIF orientation, by hand ----------------------------------------------------------------


def jpeg_with_app1(payload: bytes) -> bytes:
    """
    Splice an APP1 segment holding ``payload`` right after a JPEG's SOI.
    """
    data = encode("JPEG")
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def webp_with_exif(block: bytes) -> bytes:
    """
    Rebuild a (VP8X) WebP with an EXIF chunk holding ``block``.
    """
    data = encode("WEBP", exif=b"Exif\x00\x00" + block)
    assert b"EXIF" in data
    return data


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("value", [1, 3, 6, 8])
@pytest.mark.parametrize("container", ["jpeg", "png-before", "png-after", "webp"])
def test_orientation_is_read_from_each_container(order: str, value: int, container: str) -> None:
    """
    The orientation is found in JPEG APP1, PNG eXIf (before or after IDAT) and WebP EXIF.
    """
    block = tiff_block(value, order)
    if container == "jpeg":
        data = jpeg_with_app1(b"Exif\x00\x00" + block)
    elif container == "webp":
        data = webp_with_exif(block)
    else:
        png = encode("PNG")
        iend = png.rindex(b"IEND") - 4
        exif = png_chunk(b"eXIf", block)
        if container == "png-before":
            idat = png.index(b"IDAT") - 4
            data = png[:idat] + exif + png[idat:]
        else:
            data = png[:iend] + exif + png[iend:]
    kind = sniff(data)
    assert kind is not None
    assert value == orientation(kind, io.BytesIO(data), len(data))
    rotated = value in (6, 8)
    if rotated:
        assert 64 == verify(data, EXACT, declared=(48, 64)).width
    else:
        assert "size-mismatch" == reason_of(data, EXACT, declared=(48, 64))


def entry(tag: int, kind: int, count: int, value: int, order: str = "<") -> bytes:
    """
    Pack one 12-byte IFD entry with a SHORT value.
    """
    return struct.pack(f"{order}HHIHH", tag, kind, count, value, 0)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (tiff_block(6), 6),
        (b"Exif\x00\x00" + tiff_block(5, ">"), 5),
        (tiff_block(0, entries=[entry(0x010F, 2, 4, 0), entry(0x0112, 3, 1, 7)]), 7),
        (tiff_block(0, entries=[struct.pack("<HHII", 0x0112, 4, 1, 8)]), 8),
        # Hostile or broken: each reads as upright.
        (b"", 1),
        (b"II*\x00", 1),
        (b"XX*\x00" + bytes(20), 1),
        (b"II*\x00" + struct.pack("<I", 1 << 31), 1),  # IFD0 far outside the block
        (b"II*\x00" + struct.pack("<I", 4) + bytes(20), 1),  # IFD0 inside the header
        (b"II*\x00" + struct.pack("<IH", 8, 0xFFFF) + entry(0x0112, 3, 1, 6)[:6], 1),
        (b"II*\x00" + struct.pack("<IH", 8, 0xFFFF) + entry(0x0112, 3, 1, 6), 6),  # count cut
        (tiff_block(0, entries=[entry(0x0112, 3, 2, 6)]), 1),  # two values
        (tiff_block(0, entries=[entry(0x0112, 2, 1, 6)]), 1),  # ASCII
        (tiff_block(0), 1),
        (tiff_block(9), 1),
        # IFD0 without the tag whose next-IFD offset points back at itself: never followed.
        (b"II*\x00" + struct.pack("<IH", 8, 1) + entry(0x010F, 2, 4, 0) + struct.pack("<I", 8), 1),
    ],
)
def test_tiff_orientation_survives_hostile_exif(payload: bytes, expected: int) -> None:
    """
    Only tag 0x0112 of IFD0 counts; bad offsets, loops, huge counts and odd types give 1.
    """
    assert expected == tiff_orientation(payload)


@pytest.mark.parametrize(
    "make",
    [
        lambda: jpeg_with_app1(b"Exif\x00\x00" + b"MM\x00*" + struct.pack(">I", 70000)),
        lambda: jpeg_with_app1(b"Exif\x00\x00"),
        lambda: jpeg_with_app1(b"http://ns.adobe.com/xap/1.0/\x00<x/>"),
        lambda: encode("GIF"),
        lambda: encode("BMP"),
    ],
)
def test_missing_or_broken_exif_is_upright(make: Any) -> None:
    """
    No EXIF, an EXIF of another kind, a broken one, or a format without EXIF: orientation 1.
    """
    data = make()
    kind = sniff(data)
    assert kind is not None
    assert 1 == orientation(kind, io.BytesIO(data), len(data))


def test_a_chunk_longer_than_the_file_ends_the_walk() -> None:
    """
    A PNG chunk claiming gigabytes stops the eXIf search instead of reading on.
    """
    data = encode("PNG")
    iend = data.rindex(b"IEND") - 4
    lying = struct.pack(">I", 0x7FFFFFFF) + b"eXIf" + tiff_block(6)
    spliced = data[:iend] + lying + data[iend:]
    assert 1 == orientation("PNG", io.BytesIO(spliced), len(spliced))


# --- decode mode: a worker process, with caps --------------------------------------------------


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    """
    The process-wide decode pool, stopped after the test.
    """
    yield POOL
    POOL.shutdown()


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (VerifyConfig(mode="decode", max_frames=3), None),
        (VerifyConfig(mode="decode", max_frames=2), "pixel-bomb"),
        (VerifyConfig(mode="decode", max_total_pixels=3 * 32 * 24), None),
        (VerifyConfig(mode="decode", max_total_pixels=3 * 32 * 24 - 1), "pixel-bomb"),
        (VerifyConfig(mode="structure", max_frames=1, max_total_pixels=1), None),
    ],
)
def test_frame_and_total_pixel_caps(
    pool: DecodePool, config: VerifyConfig, reason: str | None
) -> None:
    """
    Decode mode refuses more frames, or more pixels summed over frames, than its caps allow.
    """
    data = animated("GIF")  # three frames of 32x24
    if reason is None:
        assert 32 == verify(data, config).width
    else:
        assert reason == reason_of(data, config)


async def test_verify_async_decodes_in_a_worker(pool: DecodePool, tmp_path: Path) -> None:
    """
    verify_async decodes bytes or a path in a worker and reports corruption as verify does.
    """
    data = encode("JPEG", (256, 192), quality=90)
    middle = len(data) // 2
    corrupt = data[:middle] + data[:600] + data[middle + 600 :]
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(corrupt)
    assert 256 == (await verify_async(data, DECODE)).width
    assert 256 == (await verify_async(corrupt, DEFAULT)).width
    for source in (corrupt, path):
        with pytest.raises(VerifyError) as info:
            await verify_async(source, DECODE)
        assert "truncated" == info.value.reason
    assert 0 == pool.pending


def test_workers_limit_their_address_space(pool: DecodePool) -> None:
    """
    Each worker runs under RLIMIT_AS = verify.decode_memory; a bigger allocation fails there.
    """
    config = VerifyConfig(mode="decode", decode_memory=300 * 1024 * 1024)
    executor = pool.executor(config)
    limit = config.decode_memory
    assert (limit, limit) == executor.submit(resource.getrlimit, resource.RLIMIT_AS).result()
    with pytest.raises(MemoryError):
        executor.submit(bytearray, limit).result()
    assert os.getpid() != executor.submit(os.getpid).result()


def test_workers_are_recycled(pool: DecodePool) -> None:
    """
    A worker is replaced by a fresh process after TASKS_PER_WORKER images.
    """
    executor = pool.executor(VerifyConfig(mode="decode", decode_workers=1))
    pids = [executor.submit(os.getpid).result() for _ in range(TASKS_PER_WORKER + 1)]
    assert TASKS_PER_WORKER == pids.count(pids[0])
    assert 2 == len(set(pids))


def test_a_dead_worker_is_replaced(pool: DecodePool) -> None:
    """
    After a worker dies (the pool breaks), the next decode runs in a rebuilt pool.
    """
    executor = pool.executor(DECODE)
    with pytest.raises(BrokenProcessPool):
        executor.submit(os._exit, 1).result()
    assert 64 == verify(encode("PNG"), DECODE).width
    assert executor is not pool.executor(DECODE)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_frames", 0),
        ("max_total_pixels", 0),
        ("decode_workers", 0),
        ("decode_memory", 1024 * 1024),
    ],
)
def test_decode_caps_are_validated(key: str, value: int) -> None:
    """
    A zero cap or a worker memory too small to start Python is a config error naming the key.
    """
    overrides: dict[str, Any] = {key: value}
    with pytest.raises(ConfigError) as info:
        VerifyConfig(**overrides)
    assert f"verify.{key}" == info.value.key
