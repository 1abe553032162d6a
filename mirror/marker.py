"""
Marker files: how mirror proves a folder is its own before it writes into it or removes from it.

``.mirror-store``  in a store folder (objects/, manifest.sqlite3, mirror.lock); a folder that
                   holds a manifest (or a store lock) counts as a store too and gets the marker
                   on its next write.
``.mirror-out``    in a folder ``--out`` wrote copies of posts into.
``.mirror-demo``   in a ``mirror demo --dir`` folder; it lists what the demo made there, and a
                   later demo removes exactly those entries and nothing else.

A folder mirror did not make is never written into unless it is empty (or the user says
``--create``), and never removed: a mistyped ``--store`` or ``--dir`` is an error (exit 2), not
a new store in the middle of someone's files or a wiped home folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from mirror.atomic import atomic_write
from mirror.errors import StoreError, UsageError
from mirror.lock import LOCK_NAME
from mirror.manifest import MANIFEST_NAME

STORE_MARKER = ".mirror-store"
OUT_MARKER = ".mirror-out"
DEMO_MARKER = ".mirror-demo"
# What `mirror demo` makes in its folder; a marker naming anything else is not believed.
DEMO_ENTRIES = ("posts", "cache", "report.jsonl")

_STORE_TEXT = "This folder is a mirror store (objects/, manifest.sqlite3); mirror made it.\n"
_OUT_TEXT = "mirror wrote copies of posts here (--out); it may overwrite them on the next run.\n"


def _state(folder: Path, flag: str) -> str:
    """Return ``missing``, ``empty`` or ``full``; a path that is not a folder is an error."""
    if not folder.exists():
        return "missing"
    if not folder.is_dir():
        raise UsageError(f"{flag} {folder}: not a folder")
    try:
        with os.scandir(folder) as entries:
            return "full" if any(True for _ in entries) else "empty"
    except OSError as exc:
        raise StoreError(f"{flag} {folder}: cannot list it: {exc.strerror or exc}") from exc


def check_folder(folder: Path, flag: str = "--store") -> None:
    """
    Refuse a path that exists but is not a folder (``--store afile``).

    Raises:
        UsageError: ``folder`` is a file.
    """
    _state(folder, flag)


def is_store(folder: Path) -> bool:
    """Tell whether ``folder`` is a mirror store: it has the marker, a manifest or a lock file."""
    return any((folder / name).is_file() for name in (STORE_MARKER, MANIFEST_NAME, LOCK_NAME))


def _mark(folder: Path, name: str, text: str) -> None:
    marker = folder / name
    if not marker.is_file():
        atomic_write(marker, text.encode(), fsync=False)


def check_store(folder: Path, *, create: bool, makes_missing: bool, flag: str = "--store") -> bool:
    """
    Check that ``folder`` may be used as a store; return whether it is one already.

    A store, an empty folder and (when ``makes_missing``, as for run and fetch) a missing one
    are fine; a missing folder otherwise, and a non-empty folder that is not a store, are refused
    unless ``create``.

    Raises:
        UsageError: ``folder`` is a file, is missing, or holds files and is not a store.
    """
    state = _state(folder, flag)
    if state == "full":
        if is_store(folder):
            return True
        if not create:
            raise UsageError(
                f"{flag} {folder}: not a mirror store (no {STORE_MARKER} or {MANIFEST_NAME}) and "
                "not empty; is the path right? --create makes a store in it anyway"
            )
    elif state == "missing" and not (create or makes_missing):
        raise UsageError(f"{flag} {folder}: no such store; --create makes a new one there")
    return False


def mark_store(folder: Path) -> None:
    """
    Create ``folder`` if needed and put the store marker in it (once).

    Raises:
        StoreError: the folder or the marker cannot be written.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the store {folder}: {exc.strerror or exc}") from exc
    _mark(folder, STORE_MARKER, _STORE_TEXT)


def _inside(inner: Path, outer: Path) -> bool:
    return Path(os.path.abspath(inner)).is_relative_to(os.path.abspath(outer))  # noqa: PTH100


def check_out(folder: Path, paths: Sequence[Path], flag: str = "--out") -> None:
    """
    Check that copies of posts may be written under ``folder``.

    Raises:
        UsageError: ``folder`` is a file, lies inside a PATH (its copies would be read as posts),
            or holds files and is not an earlier ``--out`` of mirror's.
    """
    for path in paths:
        if path.is_dir() and _inside(folder, path):
            raise UsageError(
                f"{flag} {folder} is inside PATH {path}: its copies would be read as posts"
            )
    if _state(folder, flag) == "full" and not (folder / OUT_MARKER).is_file():
        raise UsageError(
            f"{flag} {folder}: not empty, and not a folder mirror wrote copies into (no "
            f"{OUT_MARKER}): mirror never overwrites files it did not write; choose a new or "
            "empty folder"
        )


def mark_out(folder: Path) -> None:
    """
    Create ``folder`` if needed and mark it as mirror's ``--out`` folder.

    Raises:
        StoreError: the folder or the marker cannot be written.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    _mark(folder, OUT_MARKER, _OUT_TEXT)


def _demo_made(marker: Path) -> list[str]:
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    made = data.get("made") if isinstance(data, dict) else None
    if not isinstance(made, list):
        return []
    # Only names the demo makes: a marker must not be able to point anywhere else.
    return [name for name in DEMO_ENTRIES if name in made]


def _remove(entry: Path) -> None:
    if entry.is_symlink():
        raise UsageError(f"--dir: {entry} is a symbolic link, which mirror demo never makes")
    try:
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()
    except OSError as exc:
        raise StoreError(f"--dir: cannot remove {entry}: {exc.strerror or exc}") from exc


def prepare_demo_dir(folder: Path) -> None:
    """
    Make ``folder`` ready for a new demo: create it, or clear what an earlier demo made there.

    Only the entries an earlier demo's marker names (posts/, cache/, report.jsonl) are removed;
    any other file in the folder stays. The marker is written before anything else, so even an
    interrupted demo can be cleared by the next one.

    Raises:
        UsageError: ``folder`` is a file, or holds files and no marker of an earlier demo.
        StoreError: what the earlier demo made cannot be removed, or the folder not written.
    """
    marker = folder / DEMO_MARKER
    state = _state(folder, "--dir")
    if state == "full":
        if not marker.is_file():
            raise UsageError(
                f"--dir {folder}: not empty, and not an earlier demo's folder (no {DEMO_MARKER}); "
                "mirror never deletes a folder it did not make: pass a new or empty folder"
            )
        for name in _demo_made(marker):
            _remove(folder / name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"--dir {folder}: cannot create it: {exc.strerror or exc}") from exc
    text = json.dumps({"made": list(DEMO_ENTRIES), "by": "mirror demo"}) + "\n"
    atomic_write(marker, text.encode(), fsync=False)
