"""``mirror scan``: every image reference under some PATHs, as a table or JSON Lines."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from mirror.cli.options import check_paths
from mirror.config import Config
from mirror.errors import ExitStatus
from mirror.extract import Extractor
from mirror.models import ImageRef
from mirror.rewrite import decode
from mirror.scan import find_posts, iter_posts
from mirror.source import origin_host
from mirror.summary import scan_totals
from mirror.table import WHERE_WIDTH, ScanTable, terminal_columns, width

# What json.dumps(..., ensure_ascii=False) uses for strings; calling it directly is several times
# faster than json.dumps on a dict, with byte-identical output (tests/test_cli.py checks it).
_JSON_STR = json.encoder.encode_basestring


def ref_json(ref: ImageRef) -> str:
    declared = f"[{ref.declared[0]}, {ref.declared[1]}]" if ref.declared else "null"
    kind = "null" if ref.declared_kind is None else _JSON_STR(ref.declared_kind)
    return (
        f'{{"post": {_JSON_STR(ref.post)}, "line": {ref.line}, "url": {_JSON_STR(ref.url)}, '
        f'"decoded": {_JSON_STR(ref.decoded)}, "source": {_JSON_STR(ref.source)}, '
        f'"where": {_JSON_STR(ref.where)}, "declared": {declared}, "declared_kind": {kind}, '
        f'"proxied": {"true" if ref.proxied else "false"}}}'
    )


def cmd_scan(args: argparse.Namespace, config: Config) -> ExitStatus:
    """List every image reference under the given paths, streaming: memory stays flat."""
    check_paths(args.paths, config)
    extractor = Extractor(config.scan)
    by_where: Counter[str] = Counter()
    wrapped_by_where: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    posts = copies = 0
    table = None
    if not args.json:
        # A walk without reading, for the widest post path: whole paths, aligned.
        widest = max((width(rel) for _path, rel in find_posts(args.paths, config.scan)), default=0)
        table = ScanTable(widest, terminal_columns(sys.stdout))
        print(table.header(), file=sys.stdout)
    for post in iter_posts(args.paths, config.scan):
        posts += 1
        found = extractor(decode(post.data), post.rel)
        if not found:
            continue
        if table is None:
            sys.stdout.write("\n".join(map(ref_json, found)) + "\n")
        else:
            sys.stdout.write("\n".join(table.rows(found)) + "\n")
            by_where.update(r.where for r in found)
            wrapped_by_where.update(r.where for r in found if r.proxied)
            hosts.update(origin_host(r.source) for r in found)
            wrapped = {r.source for r in found if r.proxied}
            copies += sum(1 for r in found if not r.proxied and r.source in wrapped)
    if table is not None:
        where = [(w, n, wrapped_by_where[w]) for w, n in by_where.most_common()]
        totals = scan_totals(
            posts,
            sum(by_where.values()),
            sum(wrapped_by_where.values()),
            copies,
            config.scan.raw,
            where,
            hosts.most_common(),
            WHERE_WIDTH + 2,
        )
        print("\n".join(totals), file=sys.stdout)
    return ExitStatus.OK
