"""
Pure: (post, mapping source → new URL) → new post bytes and the spans replaced.

:func:`rewrite` applies a mapping; :func:`rewrap` moves wrapped references to another wrapper.

Only the URL spans of mapped references change; every other byte (quoting, entities, line
endings, BOM, trailing spaces, undecodable bytes) stays identical. Parser output is never written
back. The new URL is encoded for where it stands.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mirror.extract import Extractor
from mirror.models import ImageRef, Span
from mirror.source import wrapper_base

_YAML_PLAIN_SAFE = re.compile(r"[^\s\-?:,\[\]{}#&*!|>'\"%@`](?:[^\s#:]|:(?!\s)|#(?<!\s#))*")
_HTML_UNQUOTED_UNSAFE = re.compile(r"[\s\"'=<>`]")


@dataclass(frozen=True, slots=True)
class Rewritten:
    """A rewrite's outcome: the new bytes and what was replaced, in document order."""

    data: bytes
    spans: tuple[Span, ...]
    refs: tuple[ImageRef, ...]


def decode(data: bytes) -> str:
    """Decode a post so that :func:`encode` gives back the same bytes, whatever they are."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    """Encode text made by :func:`decode`."""
    return text.encode("utf-8", "surrogateescape")


def _percent(url: str, unsafe: str) -> str:
    return "".join(f"%{ord(c):02X}" if c in unsafe else c for c in url)


def encode_url(url: str, syntax: str, quote: str) -> str:
    """Encode ``url`` for a span of the given syntax and quoting (see :class:`ImageRef`)."""
    if syntax == "yaml":
        if quote == "'":
            return url.replace("'", "''")
        if quote == '"':
            return url.replace("\\", "\\\\").replace('"', '\\"')
        if _YAML_PLAIN_SAFE.fullmatch(url):
            return url
        return "'" + url.replace("'", "''") + "'"
    if syntax == "md":
        return _percent(url, " \t\n()<>")
    if syntax == "md-angle":
        return _percent(url, "\n<>")
    if syntax == "srcset":
        url = _percent(url, " \t\n\r\f")
        if url.endswith(","):
            url = url[:-1] + "%2C"
    elif syntax == "css":
        url = _percent(url, " \t\n\r\f\"'()\\")
    escaped = url.replace("&", "&amp;")
    if quote == '"':
        return escaped.replace('"', "&quot;")
    if quote == "'":
        return escaped.replace("'", "&#39;")
    if syntax == "attr" and (not escaped or _HTML_UNQUOTED_UNSAFE.search(escaped)):
        return '"' + escaped.replace('"', "&quot;") + '"'
    if syntax != "attr":
        return _percent(escaped, " \t\n\r\f\"'=<>`")
    return escaped


def replace(
    text: str,
    refs: Sequence[ImageRef],
    mapping: Mapping[str, str],
    *,
    proxied_only: bool = False,
) -> tuple[str, tuple[Span, ...]]:
    """
    Replace the spans of ``refs`` whose source is in ``mapping``.

    With ``proxied_only``, raw references keep their URL even when their source is mapped.

    Returns:
        The new text and the spans, with byte offsets into the original's UTF-8 encoding.
    """
    pieces: list[str] = []
    spans: list[Span] = []
    char_at = 0
    byte_at = 0
    for ref in sorted(refs, key=lambda r: r.start):
        target = mapping.get(ref.source)
        if target is None or (proxied_only and not ref.proxied):
            continue
        new = encode_url(target, ref.syntax, ref.quote)
        old = text[ref.start : ref.end]
        if new == old:
            continue
        before = text[char_at : ref.start]
        byte_at += len(encode(before))
        pieces.append(before)
        pieces.append(new)
        spans.append(Span(byte_at, old, new, ref.source))
        byte_at += len(encode(old))
        char_at = ref.end
    if not spans:
        return text, ()
    pieces.append(text[char_at:])
    return "".join(pieces), tuple(spans)


def _rewritten(
    data: bytes,
    text: str,
    refs: Sequence[ImageRef],
    mapping: Mapping[str, str],
    proxied_only: bool,
) -> Rewritten:
    new_text, spans = replace(text, refs, mapping, proxied_only=proxied_only)
    return Rewritten(data if not spans else encode(new_text), spans, tuple(refs))


def rewrite(
    data: bytes,
    mapping: Mapping[str, str],
    extractor: Extractor,
    post: str,
    *,
    proxied_only: bool = False,
) -> Rewritten:
    """
    Rewrite one post's bytes.

    Args:
        data: the post as read.
        mapping: source URL → new URL.
        extractor: finds the references.
        post: the post's name, for the references returned.
        proxied_only: leave raw references alone even when their source is mapped.
    """
    text = decode(data)
    return _rewritten(data, text, extractor(text, post), mapping, proxied_only)


def rewrap(data: bytes, base: str, extractor: Extractor, post: str) -> Rewritten:
    """
    Point every wrapped reference at ``base`` in the proxy's ``<base>?<source>`` form.

    ``cors.zfour.workers.dev`` cannot be repointed, but ``mirror serve`` answers the same
    requests, so only the wrapper changes hands. Raw references never needed the proxy and stay.
    Give ``extractor`` the new form as a wrapper (:func:`mirror.config.with_public_wrapper`) so
    that rewrapped references are still reported as wrapped, with the same source.

    Args:
        data: the post as read.
        base: where ``mirror serve`` answers, e.g. ``https://img.example.com/``.
        extractor: finds the references.
        post: the post's name, for the references returned.

    Raises:
        ValueError: ``base`` is not an absolute http(s) URL without a query or fragment.
    """
    base = wrapper_base(base)
    text = decode(data)
    refs = extractor(text, post)
    mapping = {ref.source: f"{base}?{ref.source}" for ref in refs if ref.proxied}
    return _rewritten(data, text, refs, mapping, proxied_only=True)


def undo(data: bytes, spans: Sequence[Span]) -> bytes:
    """
    Put back the original text of ``spans`` in the rewritten ``data``.

    Raises:
        ValueError: the bytes at a span are no longer what the rewrite wrote.
    """
    out = bytearray()
    shift = 0
    at = 0
    for span in sorted(spans, key=lambda s: s.offset):
        new, old = encode(span.new), encode(span.old)
        start = span.offset + shift
        if data[start : start + len(new)] != new:
            raise ValueError(f"the text at byte {span.offset} changed since it was rewritten")
        out += data[at:start]
        out += old
        at = start + len(new)
        shift += len(new) - len(old)
    out += data[at:]
    return bytes(out)


def post_diff(before: bytes, after: bytes, rel: str) -> list[str]:
    """A unified diff of a post's two versions (``a/rel``, ``b/rel``), every line ending in \\n."""
    lines = difflib.unified_diff(
        decode(before).splitlines(keepends=True),
        decode(after).splitlines(keepends=True),
        f"a/{rel}",
        f"b/{rel}",
    )
    return [line if line.endswith("\n") else line + "\n" for line in lines]
