"""``mirror serve``: the proxy's replacement, in one process or several."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mirror.cli.options import override
from mirror.config import Config
from mirror.errors import ExitStatus
from mirror.marker import check_store, mark_store


def cmd_serve(args: argparse.Namespace, config: Config) -> ExitStatus:
    """Serve /?<url> and stored objects until SIGTERM."""
    from mirror.serve import check_store as check_serving
    from mirror.store import open_store
    from mirror.workers import run_serve

    serve = config.serve
    for name in ("host", "port", "workers", "open", "accel_redirect"):
        value = getattr(args, name)
        if value is not None:
            serve = override(serve, "--" + name.replace("_", "-"), **{name: value})
    config = dataclasses.replace(config, serve=serve)
    if args.worker_of is None:
        # Here, before any worker starts: each worker would refuse, be restarted, and the owner
        # would end with status 0 once they kept dying.
        check_serving(config, open_store(config))
    if args.worker_of is None and config.store.scheme == "file":
        # Workers get their owner's checked config; only the process that was started checks.
        # Open mode fills its store by itself, so it may start one; the closed world serves
        # only what a store holds, and a missing one is surely a mistyped --store. A bucket is
        # checked by the first request, and /readyz.
        root = Path(config.store.path)
        check_store(root, create=config.store.create, makes_missing=config.serve.open)
        mark_store(root)
    return run_serve(config, args.worker_of)
