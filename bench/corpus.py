"""
A deterministic image archive for the fetch benchmark, and the nginx origins that serve it.

:func:`images` makes N images of realistic web sizes from a seed (80 % JPEG of 30-150 KB via
:func:`run_job.make_image`, 8 % PNG, 6 % GIF, 6 % WebP; noise-based, so sizes are those of real
photos rather than of flat colour), in parallel, and caches them under ``/tmp`` keyed by the
seed and N (``CACHE``), so a second run skips generation. Image ``i`` belongs to origin host
``i % hosts`` (``host00.example`` ...). :func:`write_posts` references every image exactly once
through the cors.zfour.workers.dev wrapper, in the corpus's shapes: front matter ``headimg`` /
``thumbnail``, ``<img src=wrapper data-size="W,H" referrerpolicy="no-referrer">`` and ZAKER's
``data-original`` + wrapped ``src`` pairs. :class:`Origins` is one Debian nginx listening on one
loopback port per host.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from nginx import HOST, Nginx, free_port, wait_listening
from PIL import Image
from run_job import WRAP, make_image

CACHE = Path(tempfile.gettempdir()) / "mirror-bench-fetch-v1-s{seed}-n{n}"
# (format, share) in the order the share thresholds are tested; JPEG takes the rest.
MIX = (("PNG", 0.08), ("GIF", 0.06), ("WEBP", 0.06))
EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}
PER_POST = 10


@dataclass(frozen=True, slots=True)
class Picture:
    """One generated image: ``name`` is its file name in the archive and its URL path's tail."""

    index: int
    name: str
    format: str
    width: int
    height: int
    size: int
    sha256: str


def _blocky(rng: random.Random, size: tuple[int, int], block: int, colours: int) -> Image.Image:
    """Return palette noise in ``block``-pixel squares: compresses like a screenshot or a chart."""
    small = (size[0] // block + 1, size[1] // block + 1)
    grey = Image.frombytes("L", small, rng.randbytes(small[0] * small[1]))
    return grey.resize(size, Image.Resampling.NEAREST).quantize(colours)


def make_picture(seed: int, index: int) -> tuple[str, int, int, bytes]:
    """Return (format, width, height, bytes) of image ``index``; depends only on the arguments."""
    rng = random.Random(f"{seed}:{index}")
    pick, fmt = rng.random(), "JPEG"
    for name, share in MIX:
        if pick < share:
            fmt = name
            break
        pick -= share
    out = io.BytesIO()
    if fmt == "JPEG":
        data, (w, h) = make_image(rng)
        return fmt, w, h, data
    if fmt == "PNG":  # 15-60 KB
        w, h = rng.randint(400, 800), rng.randint(300, 600)
        _blocky(rng, (w, h), 2, 32).save(out, "PNG")
    elif fmt == "GIF":  # 1-3 frames, 15-90 KB
        w, h = rng.randint(160, 320), rng.randint(120, 240)
        frames = [_blocky(rng, (w, h), 2, 32) for _ in range(rng.randint(1, 3))]
        frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    else:  # WebP, 40-90 KB
        w, h = rng.randint(300, 560), rng.randint(200, 420)
        noise = Image.frombytes("L", (w, h), rng.randbytes(w * h)).convert("RGB")
        noise.save(out, "WEBP", quality=rng.randint(40, 80), method=0)
    return fmt, w, h, out.getvalue()


def _make_batch(seed: int, indices: Sequence[int]) -> list[tuple[str, int, int, bytes]]:
    return [make_picture(seed, i) for i in indices]


def images(n: int, seed: int, *, jobs: int | None = None) -> tuple[Path, list[Picture]]:
    """
    Return the folder holding N images for ``seed`` and their descriptions, generating once.

    The cache folder is built beside its final name and renamed into place, so a run that was
    interrupted, or two that raced, never leave a half-filled cache behind.
    """
    final = Path(str(CACHE).format(seed=seed, n=n))
    index = final / "index.json"
    if index.is_file():
        rows = json.loads(index.read_text(encoding="utf-8"))
        return final / "images", [Picture(**row) for row in rows]
    building = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        (building / "images").mkdir()
        pictures: list[Picture] = []
        batches = [range(start, min(n, start + 100)) for start in range(0, n, 100)]
        with ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            futures = [pool.submit(_make_batch, seed, batch) for batch in batches]
            for batch, future in zip(batches, futures, strict=True):
                for i, (fmt, w, h, data) in zip(batch, future.result(), strict=True):
                    name = f"{i}.{EXT[fmt]}"
                    (building / "images" / name).write_bytes(data)
                    sha = hashlib.sha256(data).hexdigest()
                    pictures.append(Picture(i, name, fmt, w, h, len(data), sha))
        rows = [asdict(p) for p in pictures]
        (building / "index.json").write_text(json.dumps(rows), encoding="utf-8")
        try:
            building.rename(final)
        except OSError:  # another run got there first; its images are the same
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return final / "images", pictures


def source_url(picture: Picture, hosts: int) -> str:
    """Return the origin URL a post names for ``picture`` (mirror's manifest key)."""
    return f"http://host{picture.index % hosts:02}.example/img/{picture.name}"


def write_posts(folder: Path, pictures: Sequence[Picture], hosts: int) -> int:
    """
    Write Hexo posts naming every picture once through the wrapper; return how many posts.

    Each post takes ``PER_POST`` pictures: the first is its front matter ``headimg`` (even
    posts) or ``thumbnail`` (odd ones); of the rest every fourth is a ZAKER pair (raw
    ``data-original`` + wrapped ``src``, no declared size), the others plain wrapped ``<img>``
    with ``data-size``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for count, start in enumerate(range(0, len(pictures), PER_POST), 1):
        group = pictures[start : start + PER_POST]
        key = "headimg" if count % 2 else "thumbnail"
        head = f"---\ntitle: 'post {start}'\ndate: 2019-05-{count % 28 + 1:02} 10:00:00\n"
        head += f"{key}: '{WRAP}{source_url(group[0], hosts)}'\n---\n\n"
        body = []
        for j, pic in enumerate(group[1:], 1):
            url = source_url(pic, hosts)
            if j % 4 == 0:
                body.append(f'<p><img data-original="{url}" src="{WRAP}{url}"></p>')
            else:
                body.append(
                    f'<p><img src="{WRAP}{url}" data-size="{pic.width},{pic.height}"'
                    ' referrerpolicy="no-referrer"></p>'
                )
        text = head + f"Post {start}.\n\n<div>\n" + "\n".join(body) + "\n</div>\n"
        (folder / f"post{start:06}.md").write_text(text, encoding="utf-8")
    return count


class Origins:
    """
    One Debian nginx (own prefix and pid file) listening on one 127.0.0.1 port per origin host.

    Every port serves the archive folder under ``/img/``; host ``k``'s images are only ever
    asked of ``ports[k]``.
    """

    name = "nginx (origins)"

    def __init__(self, prefix: Path, folder: Path, hosts: int, *, workers: int) -> None:
        self.ports: list[int] = []
        for _ in range(hosts * 10):  # free_port may hand out the same port twice, rarely
            if (port := free_port()) not in self.ports:
                self.ports.append(port)
            if len(self.ports) == hosts:
                break
        listens = [f"        listen {HOST}:{port} reuseport;" for port in self.ports[1:]]
        self.nginx = Nginx(
            prefix, self.ports[0], {"/img/": folder}, workers=workers, extra="\n".join(listens)
        )

    @property
    def problems(self) -> list[str]:
        """Return what went wrong while stopping nginx."""
        return self.nginx.problems

    def url(self, picture: Picture) -> str:
        """Return the loopback URL of ``picture`` on its host's port (what the peers fetch)."""
        return f"http://{HOST}:{self.ports[picture.index % len(self.ports)]}/img/{picture.name}"

    def connect_to(self) -> list[str]:
        """Return curl-style ``hostNN.example:80:127.0.0.1:PORT`` mappings, one per host."""
        return [f"host{k:02}.example:80:{HOST}:{port}" for k, port in enumerate(self.ports)]

    def cpu_seconds(self) -> float:
        """Return the user+sys CPU seconds nginx's master and workers have used so far."""
        process = self.nginx.process
        return 0.0 if process is None else group_cpu_seconds(process.pid)

    def start(self) -> None:
        """Start nginx and wait until every port accepts connections."""
        self.nginx.start()
        assert self.nginx.process is not None
        for port in self.ports[1:]:
            wait_listening(port, self.nginx.process, self.nginx.start_timeout)

    def stop(self) -> None:
        """Stop nginx (graceful, then forced); safe to call twice."""
        self.nginx.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def group_cpu_seconds(pgid: int) -> float:
    """Return user+sys CPU seconds of the live processes in process group ``pgid`` (Linux)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it ended meanwhile
        if int(fields[2]) == pgid:  # state, ppid, pgrp, ... utime (14th), stime (15th)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
