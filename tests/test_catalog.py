"""serve's URL map: loaded once, then kept current from the manifest's change feed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from mirror.catalog import Catalog, Entry
from mirror.manifest import Manifest, SourceResult


def mirrored(source: str, data: bytes) -> SourceResult:
    """A mirrored result for ``source`` naming the object of ``data``."""
    sha = hashlib.sha256(data).hexdigest()
    return SourceResult(source, "mirrored", sha256=sha, ext="png", size=len(data), format="PNG")


def url(n: int) -> str:
    return f"http://origin.example/{n}.png"


def test_new_rows_are_read_alone_after_the_first_load(tmp_path: Path) -> None:
    """2,000 sources load once; 100 new ones cost 100 rows read, not 2,100."""
    path = tmp_path / "manifest.sqlite3"
    with Manifest(path) as manifest:
        manifest.record_results(mirrored(url(n), b"%d" % n) for n in range(2000))
    catalog = Catalog(path)
    assert catalog.reload()
    assert (1, 2000, 2000) == (catalog.full_loads, catalog.rows_read, len(catalog.entries))
    assert not catalog.reload()  # nothing new in the catalog
    with Manifest(path) as manifest:
        manifest.record_results(mirrored(url(n), b"%d" % n) for n in range(2000, 2100))
    assert catalog.reload()
    assert (1, 2100, 2100) == (catalog.full_loads, catalog.rows_read, len(catalog.entries))
    entry = catalog.lookup(url(2050))
    assert entry == Entry(hashlib.sha256(b"2050").hexdigest(), "png", 4)
    assert catalog.knows(url(2050))


def test_a_changed_or_failed_source_replaces_what_the_map_had(tmp_path: Path) -> None:
    """A source re-fetched to other bytes points at them; a forgotten object leaves the map."""
    path = tmp_path / "manifest.sqlite3"
    with Manifest(path) as manifest:
        manifest.record_results([mirrored(url(1), b"one"), mirrored(url(2), b"two")])
    catalog = Catalog(path)
    catalog.reload()
    with Manifest(path) as manifest:
        manifest.record_results([mirrored(url(1), b"uno")])
        manifest.forget_objects({hashlib.sha256(b"two").hexdigest(): "missing-object"})
    assert catalog.reload()
    assert 1 == catalog.full_loads
    first = catalog.lookup(url(1))
    assert first is not None
    assert hashlib.sha256(b"uno").hexdigest() == first.sha256
    assert catalog.lookup(url(2)) is None
    assert catalog.knows(url(2))  # still named by a post: the closed world keeps it


def test_a_manifest_replaced_by_another_file_is_loaded_whole(tmp_path: Path) -> None:
    """Another file at the path (a restore) has its own feed: the map is loaded again in full."""
    path = tmp_path / "manifest.sqlite3"
    other = tmp_path / "other.sqlite3"
    with Manifest(path) as manifest:
        manifest.record_results([mirrored(url(1), b"one")])
    with Manifest(other) as manifest:
        manifest.record_results([mirrored(url(2), b"two")])
    catalog = Catalog(path)
    catalog.reload()
    staged = tmp_path / "staged.sqlite3"
    shutil.copyfile(other, staged)
    staged.replace(path)
    assert catalog.reload()
    assert 2 == catalog.full_loads
    assert catalog.lookup(url(1)) is None
    assert catalog.lookup(url(2)) is not None
