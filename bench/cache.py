"""
The generated archive, cached in /tmp by seed and size, checked before reuse, and its helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pictures import write_images
from posts import generate_posts

GENERATOR = 2  # bump when posts.py or pictures.py change what they write
STALE_SECONDS = 3600.0  # a half-built archive this old was left by a killed run


def walk(root: Path) -> Iterator[Path]:
    """Every post file under ``root``, in a stable order."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def fingerprint(root: Path, content: bool) -> tuple[int, int, str]:
    """(files, bytes, digest of names, sizes, mtimes, inodes and, with ``content``, bytes)."""
    digest = hashlib.sha256()
    files = total = 0
    for path in walk(root):
        st = path.stat()
        files, total = files + 1, total + st.st_size
        digest.update(f"{path.relative_to(root)}\0{st.st_size}\0".encode())
        digest.update(path.read_bytes() if content else f"{st.st_mtime_ns}:{st.st_ino}".encode())
    return files, total, digest.hexdigest()


@dataclass(slots=True)
class Corpus:
    """The cached archive: posts, a sample of them, the origin's images, and what they hold."""

    root: Path
    meta: dict[str, Any]

    @property
    def posts(self) -> Path:
        return self.root / "posts"


def corpus(posts: int, images: int, sample: int, seed: int) -> tuple[Corpus, float | None]:
    """Reuse the cached archive if intact, else generate it; return it and the generation time."""
    root = Path(tempfile.gettempdir()) / f"mirror-bench-archive-{seed}-{posts}"
    wanted = {"generator": GENERATOR, "images": images, "sample": sample}
    meta_file = root / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if {k: meta.get(k) for k in wanted} == wanted:
            found = fingerprint(root / "posts", content=True)
            if list(found) == meta["fingerprint"]:
                return Corpus(root, meta), None
        print(f"regenerating {root}: it does not match", file=sys.stderr)
    shutil.rmtree(root, ignore_errors=True)
    for stale in root.parent.glob(f"{root.name}.tmp-*"):
        if time.time() - stale.stat().st_mtime > STALE_SECONDS:  # not another run's, building
            shutil.rmtree(stale, ignore_errors=True)
    # Built beside and renamed into place, so a run killed halfway leaves nothing to reuse.
    building = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    started = time.perf_counter()
    made = generate_posts(building / "posts", posts, images, seed)
    for rel in random.Random(seed).sample(made.paths, min(sample, posts)):
        target = building / "sample" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(building / "posts" / rel, target)
    image_bytes = write_images(building / "origin", made.pictures, seed)
    seconds = time.perf_counter() - started
    meta = {
        **wanted,
        "posts": posts,
        "bytes": sum(made.sizes),
        "median": statistics.median(made.sizes),
        "mean": statistics.mean(made.sizes),
        "distinct_images": len(made.pictures),
        "image_bytes": image_bytes,
        "folders": made.folders,
        "fingerprint": list(fingerprint(building / "posts", content=True)),
    }
    (building / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    try:
        building.rename(root)
    except OSError:  # another run finished first: use its copy
        shutil.rmtree(building, ignore_errors=True)
        if not meta_file.is_file():
            raise
        return Corpus(root, json.loads(meta_file.read_text(encoding="utf-8"))), None
    return Corpus(root, meta), seconds


def shards(folders: dict[str, int], n: int) -> list[list[str]]:
    """Split leaf folders into ``n`` groups of about equal bytes (largest first, greedy)."""
    groups: list[list[str]] = [[] for _ in range(n)]
    sizes = [0] * n
    for folder, size in sorted(folders.items(), key=lambda kv: -kv[1]):
        i = sizes.index(min(sizes))
        groups[i].append(folder)
        sizes[i] += size
    return [g for g in groups if g]


def _links(folder: str, dest: Path, names: list[str]) -> None:
    for name in names:
        os.link(f"{folder}/{name}", f"{dest}/{name}")


def hardlink_tree(source: Path, target: Path) -> None:
    """
    Copy a tree of posts as hard links: mirror replaces posts by rename, never in place.

    Threads make the links, one folder each, as creating files can stall on a busy virtual disk.
    """
    with ThreadPoolExecutor(8) as pool:
        futures = []
        for folder, dirs, files in os.walk(source):
            dirs.sort()
            dest = target / Path(folder).relative_to(source)
            dest.mkdir(parents=True, exist_ok=True)
            futures.append(pool.submit(_links, folder, dest, files))
        for future in futures:
            future.result()
