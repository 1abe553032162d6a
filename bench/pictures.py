"""
The origin's images: one per distinct source URL, on the host and in the URL style of its site.

Each is small (2-10 KB: a flat colour and a noise patch, so no two are alike), of the format its
URL promises (JPEG, PNG, GIF, WebP for 掘金's ``.awebp?``), and declares a size in posts that is
its own or twice it (a scaled variant, as aspect checks allow). Files go under
``origin/<host>/<decoded path>`` for a local origin to serve by Host header.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from PIL import Image


@dataclass(frozen=True, slots=True)
class Picture:
    """One origin image: its source URL as posts write it, its file and its sizes."""

    host: str
    path: str  # path and query as written after the host
    fmt: str
    size: tuple[int, int]
    declared: tuple[int, int]

    @property
    def url(self) -> str:
        """The origin URL (the source), as an attribute writes it once entities are decoded."""
        return f"http://{self.host}{self.path}"

    @property
    def file(self) -> str:
        """Where the origin keeps it: the decoded path, without the query."""
        return f"{self.host}{unquote(self.path.partition('?')[0])}"


def _host_path(host: str, i: int, h: str) -> tuple[str, str]:
    """Return (path as written, format) for image ``i`` on ``host`` in that site's style."""
    m, d = 1 + i % 12, 1 + i % 28
    if host == "static.1sapp.com":
        return f"/qupost/img/2022/{m:02}/{d:02}/{h[:32]}.jpeg", "JPEG"
    if host.endswith("myzaker.com"):
        return f"/2021{m:02}/{h[:24]}_1024.jpg", "JPEG"
    if host == "img.jandan.net":
        return f"/news/2019/{m:02}/{h[:32]}.jpg!custom", "JPEG"
    if host.endswith("sinaimg.cn"):
        if i % 5 == 0:
            return f"/bmiddle/{h[:8]}ly1g{h[8:20]}.gif", "GIF"
        return f"/mw690/{h[:8]}gy1h{h[8:22]}.jpg", "JPEG"
    if host.endswith("juejin.byteimg.com"):
        return (
            f"/tos-cn-i-k3u1fbpfcp/{h[:32]}~tplv-k3u1fbpfcp-zoom-in-crop-mark:4536:0:0:0.awebp?",
            "WEBP",
        )
    if host == "img.pmcaff.com":
        return f"/{h[:32]}-picture", "PNG" if i % 3 else "JPEG"
    if host == "dockone.io":
        return f"/uploads/article/2022{m:02}{d:02}/{h[:32]}.png", "PNG"
    if host == "static.oschina.net":
        return f"/uploads/space/2021/{m:02}{d:02}/{h[:6]}_{h[6:10]}_{i}.png", "PNG"
    if host == "oscimg.oschina.net":
        return f"/oscnet/up-{h[:40]}.png", "PNG"
    if host == "image.woshipm.com":
        return f"/wp-files/2022/{m:02}/{h[:20]}.jpg", "JPEG"
    if host == "mmbiz.qpic.cn":
        extra = "&wxfrom=5&wx_lazy=1" if i % 2 else ""
        return f"/mmbiz_png/{h[:28]}/640?wx_fmt=png{extra}", "PNG"
    if host == "upload-images.jianshu.io":
        return f"/upload_images/{i}-{h[:16]}.png", "PNG"
    if host == "i.loli.net":
        name = f"%E6%88%AA%E5%9B%BE{h[:6]}" if i % 7 == 0 else h[:15]  # 截图…: percent-encoded
        return f"/2021/{m:02}/{d:02}/{name}.png", "PNG"
    return f"/v2-{h[:32]}_r.jpg", "JPEG"  # pic1.zhimg.com


@dataclass(slots=True)
class Pools:
    """The distinct images, per host; posts take most in turn and some popular ones again."""

    by_host: dict[str, list[Picture]]
    cursor: dict[str, int] = field(default_factory=dict)
    used: dict[str, Picture] = field(default_factory=dict)

    def pick(self, rng: random.Random, host: str, taken: set[str]) -> Picture:
        pool = self.by_host[host]
        for _ in range(8):  # a few tries for an image this post does not show yet
            if rng.random() < 0.75:
                n = self.cursor.get(host, 0)
                self.cursor[host] = n + 1
                picture = pool[n % len(pool)]
            else:
                picture = pool[rng.randrange(max(1, len(pool) // 20))]
            if picture.url not in taken:
                break
        self.used[picture.file] = picture
        return picture


def make_pools(seed: int, count: int, weights: dict[str, float]) -> Pools:
    """Spread ``count`` distinct images over the hosts in proportion to how often posts use them."""
    total = sum(weights.values())
    rng = random.Random(f"{seed}-pool")
    by_host: dict[str, list[Picture]] = {}
    i = 0
    for host, weight in weights.items():
        pool = []
        for _ in range(max(8, round(count * weight / total))):
            digest = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
            path, fmt = _host_path(host, i, digest)
            size = (rng.randint(120, 360), rng.randint(90, 270))
            scale = rng.choice((1, 1, 2))
            pool.append(Picture(host, path, fmt, size, (size[0] * scale, size[1] * scale)))
            i += 1
        by_host[host] = pool
    return Pools(by_host)


def _image_bytes(picture: Picture, seed: int) -> bytes:
    """A small image (2-10 KB): a flat colour with a noise patch, so every one is distinct."""
    rng = random.Random(f"{seed}:{picture.file}")
    w, h = picture.size
    mode = "L" if picture.fmt == "GIF" else "RGB"
    colour = rng.randrange(256) if mode == "L" else tuple(rng.randbytes(3))
    image = Image.new(mode, (w, h), colour)
    pw, ph = min(w, 64), min(h, 32)
    patch = Image.frombytes(mode, (pw, ph), rng.randbytes(pw * ph * len(mode)))
    image.paste(patch, (rng.randrange(w - pw + 1), rng.randrange(h - ph + 1)))
    out = io.BytesIO()
    fast = {"JPEG": {"quality": 75}, "PNG": {"compress_level": 1}, "WEBP": {"method": 0}}
    image.save(out, picture.fmt, **fast.get(picture.fmt, {}))
    return out.getvalue()


def _write_images(root: Path, pictures: list[Picture], seed: int) -> int:
    total = 0
    for picture in pictures:
        data = _image_bytes(picture, seed)
        with open(f"{root}/{picture.file}", "wb") as f:  # noqa: PTH123  # the cheapest create
            f.write(data)
        total += len(data)
    return total


def _chunks(items: list[Picture], size: int) -> Iterator[list[Picture]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_images(root: Path, pictures: list[Picture], seed: int) -> int:
    """
    Write every picture under ``root``; return the bytes written.

    Threads, not processes: Pillow's encoders and file writes release the GIL, and creating a
    file can stall for a millisecond on a busy virtual disk.
    """
    for folder in sorted({(root / p.file).parent for p in pictures}):
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(lambda c: _write_images(root, c, seed), _chunks(pictures, 100)))
