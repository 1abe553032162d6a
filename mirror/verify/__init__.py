"""
Verification: prove downloaded bytes are a complete image of an allowed format and size.

::

    formats.py  magic bytes, end markers, segment/chunk/box walks (reads headers, never bodies)
    exif.py     the EXIF orientation, read by hand from JPEG APP1, PNG eXIf, WebP EXIF
    core.py     verify_file(path or file) and verify(bytes): structure mode, then decode mode
    decode.py   decode mode's worker processes: memory limit, frame and pixel caps

:func:`verify_async` is what the event loop awaits: structure mode runs inline (it reads a few
kilobytes and decodes nothing, and measured cheaper than a thread hop); decode mode waits on a
worker process without blocking the loop.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from mirror.config import VerifyConfig
from mirror.models import ImageInfo
from mirror.verify.core import HEADER_BUDGET, check_structure, verify, verify_file
from mirror.verify.decode import POOL
from mirror.verify.formats import KINDS, is_complete, pillow_supports, sniff

__all__ = [
    "HEADER_BUDGET",
    "KINDS",
    "POOL",
    "check_structure",
    "is_complete",
    "pillow_supports",
    "sniff",
    "verify",
    "verify_async",
    "verify_file",
]


async def verify_async(
    source: bytes | str | os.PathLike[str],
    config: VerifyConfig,
    declared: tuple[int, int] | None = None,
    declared_kind: str | None = None,
) -> ImageInfo:
    """
    Verify the bytes or the file at a path as :func:`verify_file` does, never blocking the loop
    on a decode.

    Returns:
        The format, extension, MIME type and size.

    Raises:
        NotAnImage: as :func:`verify_file`.
        VerifyError: as :func:`verify_file`.
        OSError: the path cannot be read.
    """
    if isinstance(source, bytes):
        # BytesIO over bytes shares the buffer until written to: no copy of the body.
        info = check_structure(io.BytesIO(source), config, declared, declared_kind)
        payload: bytes | str = source
    else:
        payload = os.fspath(source)
        # A local file's header and tail: microseconds, less than a thread hop costs.
        with Path(payload).open("rb") as f:  # noqa: ASYNC230 - measured, see the docstring
            info = check_structure(f, config, declared, declared_kind)
    if config.mode == "decode":
        await POOL.decode(config, payload, info.format)
    return info
