"""
The per-reference report (``--report FILE``): one JSON object per reference a run acted on.

``mirror run`` and ``mirror fetch`` write a row as each post's sources end; ``mirror run
--workers N`` writes the same rows from the shared manifest when it rewrites. One builder, so
both say the same of the same outcome.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO

from mirror.downloader import Outcome
from mirror.models import ImageRef
from mirror.rewrite import text_url

# The reason for a mirrored reference in Markdown text left as written (no absolute URL).
TEXT_NEEDS_ABSOLUTE_URL = "text-needs-absolute-url"


def reference_row(
    ref: ImageRef,
    outcome: Outcome,
    url: str | None,
    site_url: str,
    key: Callable[[str, str], str],
) -> dict[str, Any]:
    """
    Return the report's row of ``ref``.

    Args:
        ref: the reference.
        outcome: how its source ended.
        url: what the post now says instead (None: the post was not rewritten to a copy).
        site_url: ``rewrite.site_url``, which a relative URL in prose needs to stay a link.
        key: the store's key of an object (its ``sha256`` and ``ext``).
    """
    reason = outcome.reason
    if url is not None and ref.where == "text":
        # A relative URL in prose is no longer a link: such a reference stays as written.
        url = text_url(url, site_url)
        reason = reason if url is not None else TEXT_NEEDS_ABSOLUTE_URL
    obj = outcome.obj
    return {
        "post": ref.post,
        "line": ref.line,
        "url": ref.decoded,
        "source": ref.source,
        "where": ref.where,
        "declared": list(ref.declared) if ref.declared else None,
        "status": outcome.status,
        "reason": reason,
        "sha256": obj.sha256 if obj else None,
        "bytes": obj.size if obj else None,
        "format": outcome.format,
        "width": outcome.width,
        "height": outcome.height,
        "file": key(obj.sha256, obj.ext) if obj else None,
        "local_url": url,
        "via": outcome.via,
        "fetched_from": outcome.fetched_from,
        "attempts": [
            {"source": a.source, "url": a.url, "outcome": a.outcome, "detail": a.detail}
            for a in outcome.attempts
        ],
    }


def write_row(stream: TextIO, row: dict[str, Any]) -> None:
    """Write ``row`` as one line of JSON."""
    stream.write(json.dumps(row, ensure_ascii=False) + "\n")
