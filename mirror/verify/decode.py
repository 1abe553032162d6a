"""
Decode mode: decode every frame in a separate process, under caps, never on the event loop.

A full decode costs CPU and memory in proportion to the pixels, which a small file can make
enormous (a 190 KB PNG of 49 million pixels, a GIF of 20,000 frames). So it runs in a small pool
of worker processes created on first use: each worker limits its own address space to
``verify.decode_memory`` (a decoder that wants more gets a MemoryError, not the machine), is
replaced after :data:`TASKS_PER_WORKER` images (so a fragmented heap is handed back), and stops
at ``verify.max_frames`` frames or ``verify.max_total_pixels`` pixels summed over the frames
(``pixel-bomb``). A worker that dies breaks the pool; the pool is rebuilt and the image tried
once more, so the images queued beside a crash are not blamed for it.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import resource
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from mirror.config import VerifyConfig
from mirror.errors import NotAnImage, VerifyError
from mirror.verify.formats import pillow_quiet

# Images a worker decodes before it is replaced by a fresh process.
TASKS_PER_WORKER = 64

# What a worker is given: the image's bytes, or the path of a file holding them.
Payload = bytes | str


def _limit_memory(limit: int) -> None:
    """
    Cap this worker's address space (the pool's initializer, run in each new worker).
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _frames(im: Image.Image, kind: str, max_frames: int, max_total: int) -> tuple[str, str] | None:
    """
    Decode the frames of ``im`` one by one; stop with a reason at the first cap passed.
    """
    frames = pixels = 0
    while True:
        frames += 1
        width, height = im.size
        pixels += width * height
        if frames > max_frames:
            return "pixel-bomb", f"{kind} has more than {max_frames} frames (verify.max_frames)"
        if pixels > max_total:
            return "pixel-bomb", (
                f"{kind} frames add up to more than {max_total} pixels (verify.max_total_pixels)"
            )
        im.load()
        try:
            im.seek(im.tell() + 1)
        except EOFError:
            return None


def decode_task(
    payload: Payload, kind: str, max_frames: int, max_total: int
) -> tuple[str, str] | None:
    """
    Decode every frame of an image (runs in a worker).

    Only plain values cross back to the caller: no image, no traceback holding one.

    Returns:
        None when every frame decodes, else (reason, message).
    """
    try:
        opened = Path(payload).open("rb") if isinstance(payload, str) else io.BytesIO(payload)  # noqa: SIM115 - the with below closes it
        with opened as source, pillow_quiet(), Image.open(source, formats=[kind]) as im:
            return _frames(im, kind, max_frames, max_total)
    except Image.DecompressionBombError as exc:
        return "pixel-bomb", f"{kind} frame is a pixel bomb: {exc}"
    except MemoryError:
        return "pixel-bomb", f"{kind} needs more memory than verify.decode_memory to decode"
    except Exception as exc:
        # Pillow's decoders raise a zoo of types on corrupt data; all mean "does not decode".
        return "truncated", f"{kind} does not decode: {exc}"


class DecodePool:
    """
    The worker processes of decode mode, created on first use and rebuilt when broken.

    ``pending`` counts the awaited decodes not yet answered (queued or running).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._key: tuple[int, int] | None = None
        self.pending = 0

    def executor(self, config: VerifyConfig) -> ProcessPoolExecutor:
        """
        Return the pool for ``config``'s worker count and memory cap, starting it if needed.
        """
        key = (config.decode_workers, config.decode_memory)
        with self._lock:
            if self._executor is None or self._key != key:
                old, self._key = self._executor, key
                # spawn: forking a process that runs an event loop and threads is unsafe, and
                # max_tasks_per_child needs a start method other than fork.
                self._executor = ProcessPoolExecutor(
                    max_workers=config.decode_workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_limit_memory,
                    initargs=(config.decode_memory,),
                    max_tasks_per_child=TASKS_PER_WORKER,
                )
                if old is not None:
                    old.shutdown(wait=False, cancel_futures=False)
            return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """
        Stop the workers (they are started again on the next decode).
        """
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _submit(
        self, executor: ProcessPoolExecutor, config: VerifyConfig, payload: Payload, kind: str
    ) -> Future[tuple[str, str] | None]:
        args = (payload, kind, config.max_frames, config.max_total_pixels)
        return executor.submit(decode_task, *args)

    async def decode(self, config: VerifyConfig, payload: Payload, kind: str) -> None:
        """
        Decode every frame of the image in a worker; the event loop waits without blocking.

        Raises:
            VerifyError: reason ``pixel-bomb`` (a cap passed) or ``truncated`` (corrupt data).
            NotAnImage: the decoder's process died on this image twice.
        """
        self.pending += 1
        try:
            for _ in range(2):
                executor = self.executor(config)
                try:
                    future = self._submit(executor, config, payload, kind)
                    outcome = await asyncio.wrap_future(future)
                except BrokenProcessPool:
                    self._discard(executor)
                    continue
                return _raise_for(outcome)
        finally:
            self.pending -= 1
        raise NotAnImage(f"{kind}: the decoder's process died on it twice")

    def decode_sync(self, config: VerifyConfig, payload: Payload, kind: str) -> None:
        """
        Decode as :meth:`decode` does, blocking the calling thread until the worker answers.
        """
        for _ in range(2):
            executor = self.executor(config)
            try:
                outcome = self._submit(executor, config, payload, kind).result()
            except BrokenProcessPool:
                self._discard(executor)
                continue
            return _raise_for(outcome)
        raise NotAnImage(f"{kind}: the decoder's process died on it twice")


def _raise_for(outcome: tuple[str, str] | None) -> None:
    if outcome is not None:
        reason, message = outcome
        raise VerifyError(message, reason)


def payload_of(f: BinaryIO) -> Payload:
    """
    Return what a worker needs to reopen ``f``: its path when it has one, else its bytes.
    """
    name = getattr(f, "name", None)
    if isinstance(name, str) and Path(name).is_file():
        return name
    f.seek(0)
    return f.read()


# One pool per process, shared by every caller (run, fetch, serve), started on first use.
POOL = DecodePool()
