"""``mirror rewrite``: rewrite mapped, rewrapped or (``--revert``) restored references."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path

from mirror.cli.options import absolute_paths, check_paths, print_diff
from mirror.config import Config, with_public_wrapper
from mirror.errors import ExitStatus, UsageError
from mirror.extract import Extractor
from mirror.lock import command_line
from mirror.manifest import manifest_exists, manifest_name, open_manifest
from mirror.marker import check_folder, check_out, check_store, is_store, mark_out, mark_store
from mirror.rewrite import rewrap, rewrite
from mirror.scan import iter_posts, write_recorded
from mirror.source import wrapper_base
from mirror.summary import plural


def _load_map(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--map {path}: cannot read it: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"--map {path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise UsageError(f"--map {path}: must be a JSON object of source URL -> new URL strings")
    return data


async def _manifest_mapping(config: Config) -> dict[str, str]:
    if not await manifest_exists(config):
        raise UsageError(
            f"no --map given and no manifest at {manifest_name(config)}: run `mirror fetch` first"
        )
    async with open_manifest(config, readonly=True) as manifest:
        return await manifest.mirrored_mapping(config.base_url)


def _rewrap_base(args: argparse.Namespace) -> str | None:
    if args.rewrap is None:
        return None
    if args.map is not None:
        raise UsageError("--map and --rewrap cannot be combined: --rewrap needs no map")
    try:
        return wrapper_base(args.rewrap)
    except ValueError as exc:
        raise UsageError(f"--rewrap: {exc}") from exc


async def _records(args: argparse.Namespace, config: Config, mapped: bool) -> bool:
    """
    Whether an in-place rewrite records its spans in the manifest (for ``--revert``).

    From the manifest's mapping the store exists already. With ``--map`` or ``--rewrap`` no
    store is needed: one that exists is used; none is made unless asked (--store, --create).
    """
    if config.store.scheme != "file":
        return not mapped or config.store.create or await manifest_exists(config)
    root = Path(config.store.path)
    if mapped and not is_store(root) and args.store is None and not config.store.create:
        return False
    check_store(root, create=config.store.create, makes_missing=False)
    mark_store(root)
    return True


def cmd_rewrite(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Rewrite mapped (or, with --rewrap, wrapped) references in place, into --out, or as a diff."""
    if config.store.scheme == "file":
        check_folder(Path(config.store.path))
    if args.revert:
        return _revert(args, config)
    check_paths(args.paths, config)
    return asyncio.run(_rewrite(args, config))


async def _rewrite(args: argparse.Namespace, config: Config) -> ExitStatus:
    base = _rewrap_base(args)
    mapping: dict[str, str] = {}
    if base is not None:
        # Posts rewrapped by an earlier run then read as wrapped, as `mirror scan` reports them.
        config = with_public_wrapper(config, base)
    elif args.map is not None:
        mapping = _load_map(args.map)
    else:
        mapping = await _manifest_mapping(config)
    if args.out is not None:
        check_out(args.out, args.paths)
    extractor = Extractor(config.scan)
    posts = changed = spans = skipped = 0
    paths = args.paths
    unrecorded = None
    async with contextlib.AsyncExitStack() as stack:
        manifest = None
        if not args.dry_run and args.out is None:
            if not await _records(args, config, base is not None or args.map is not None):
                unrecorded = config.store.location
            else:
                # In place: under the store lock, and recorded so `--revert` can undo it.
                manifest = await stack.enter_async_context(open_manifest(config))
                await stack.enter_async_context(manifest.lock(command_line()))
                paths = absolute_paths(paths)
        elif not args.dry_run:
            mark_out(args.out)
        for post in iter_posts(paths, config.scan):
            posts += 1
            if base is not None:
                result = rewrap(post.data, base, extractor, post.rel)
            else:
                result = rewrite(
                    post.data, mapping, extractor, post.rel, site_url=config.rewrite.site_url
                )
            if args.dry_run:
                print_diff(post, result.data)
            elif (result.spans or args.out is not None) and not await write_recorded(
                post, result.data, result.spans, manifest, args.out
            ):
                skipped += 1
                continue
            if result.spans:
                changed += 1
                spans += len(result.spans)
    if args.dry_run:
        verb = "would rewrite" if base is None else "would rewrap"
    else:
        verb = "rewrote" if base is None else "rewrapped"
    print(
        f"mirror: {plural(posts, 'post')}, {verb} {plural(spans, 'reference')} in "
        f"{plural(changed, 'post')}"
        + (f", {skipped} changed on disk meanwhile and were left alone" if skipped else ""),
        file=sys.stderr,
    )
    if unrecorded is not None and spans:
        print(
            f"  not recorded for --revert: {unrecorded} is no store (--create makes one)",
            file=sys.stderr,
        )
    return ExitStatus.INCOMPLETE if skipped else ExitStatus.OK


def _revert(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Put back what mirror replaced in the posts, from the manifest's recorded spans."""
    from mirror.revert import revert

    if args.map is not None or args.rewrap is not None or args.out is not None:
        raise UsageError("--revert cannot be combined with --map, --rewrap or --out")
    check_paths(args.paths, config)
    paths = absolute_paths(args.paths)
    result = asyncio.run(revert(config, paths, show=print_diff if args.dry_run else None))
    print(result.summary(args.dry_run), file=sys.stderr)
    return result.exit_status
