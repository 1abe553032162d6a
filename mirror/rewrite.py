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
from urllib.parse import urljoin

from mirror.extract import Extractor
from mirror.markup import JS_SPACE, TRAILING
from mirror.models import ImageRef, Span
from mirror.source import wrapper_base

# A plain YAML scalar that reads back as itself: no indicator first, no " #", no ": ", and no
# ":" last. In a flow list ([a, b]) the flow indicators ,[]{} end a plain scalar as well.
_YAML_PLAIN_SAFE = re.compile(r"[^\s\-?:,\[\]{}#&*!|>'\"%@`](?:[^\s#:]|:(?=\S)|#(?<!\s#))*")
_YAML_FLOW_PLAIN_SAFE = re.compile(
    r"[^\s\-?:,\[\]{}#&*!|>'\"%@`](?:[^\s#:,\[\]{}]|:(?=[^\s,\[\]{}])|#(?<!\s#))*"
)
_HTML_UNQUOTED_UNSAFE = re.compile(r"[\s\"'=<>`]")
# In Markdown text: what ends or breaks a GFM autolink (white space, "<", parentheses, quotes),
# and what Markdown would read as syntax around it (emphasis, code, brackets, table cells).
_TEXT_UNSAFE = re.compile(rf"[{JS_SPACE}\x00-\x1f\x7f<>()\"'`\[\]\\*_~|]")
_ANGLE_UNSAFE = re.compile(rf"[{JS_SPACE}\x00-\x1f\x7f<>]")
_TEXT_SYNTAXES = frozenset({"text", "text-angle"})
_ABSOLUTE = re.compile(r"https?://", re.IGNORECASE)


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


def _utf8_percent(match: re.Match[str]) -> str:
    # Every byte, "_", "~" and "." included: urllib's quote keeps those as they are.
    return "".join(f"%{byte:02X}" for byte in match.group().encode())


def _text(url: str) -> str:
    """Encode ``url`` to stand in Markdown text and be autolinked exactly as it is."""
    encoded = _TEXT_UNSAFE.sub(_utf8_percent, url)
    tail = ""
    # marked drops a trailing "&name;" and trailing punctuation from an autolink.
    if encoded and (encoded[-1] in TRAILING or encoded[-1] == "&"):
        encoded, tail = encoded[:-1], f"%{ord(encoded[-1]):02X}"
    return encoded.replace("&", "&amp;") + tail


def text_url(url: str, site_url: str) -> str | None:
    """
    Return what a reference in Markdown text can be rewritten to, or None.

    Text is autolinked only when it is an absolute URL, so ``url`` must be one, or be made one
    from ``site_url`` the way a browser resolves it on a page of that site.
    """
    if _ABSOLUTE.match(url):
        return url
    if site_url:
        return urljoin(site_url, url)
    return None


def encode_url(url: str, syntax: str, quote: str) -> str:
    """Encode ``url`` for a span of the given syntax and quoting (see :class:`ImageRef`)."""
    if syntax in ("yaml", "yaml-flow"):
        if quote == "'":
            return url.replace("'", "''")
        if quote == '"':
            return url.replace("\\", "\\\\").replace('"', '\\"')
        plain = _YAML_PLAIN_SAFE if syntax == "yaml" else _YAML_FLOW_PLAIN_SAFE
        if plain.fullmatch(url):
            return url
        return "'" + url.replace("'", "''") + "'"
    if syntax == "text":
        return _text(url)
    if syntax == "text-angle":
        return _ANGLE_UNSAFE.sub(_utf8_percent, url).replace("&", "&amp;")
    # Markdown reads backslash escapes and entities in a destination, so neither may be left.
    if syntax == "md":
        return _percent(url, " \t\n()<>\\").replace("&", "&amp;")
    if syntax == "md-angle":
        return _percent(url, "\n<>\\").replace("&", "&amp;")
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
    site_url: str = "",
) -> tuple[str, tuple[Span, ...]]:
    """
    Replace the spans of ``refs`` whose source is in ``mapping``.

    With ``proxied_only``, raw references keep their URL even when their source is mapped.
    References in Markdown text take only an absolute URL (see :func:`text_url`); they keep
    theirs when the new one is relative and there is no ``site_url`` to resolve it against.

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
        if ref.syntax in _TEXT_SYNTAXES:
            target = text_url(target, site_url)
            if target is None:
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
    site_url: str = "",
) -> Rewritten:
    new_text, spans = replace(text, refs, mapping, proxied_only=proxied_only, site_url=site_url)
    return Rewritten(data if not spans else encode(new_text), spans, tuple(refs))


def rewrite(
    data: bytes,
    mapping: Mapping[str, str],
    extractor: Extractor,
    post: str,
    *,
    proxied_only: bool = False,
    site_url: str = "",
) -> Rewritten:
    """
    Rewrite one post's bytes.

    Args:
        data: the post as read.
        mapping: source URL → new URL.
        extractor: finds the references.
        post: the post's name, for the references returned.
        proxied_only: leave raw references alone even when their source is mapped.
        site_url: resolves a relative new URL for references in Markdown text
            (``rewrite.site_url``).
    """
    text = decode(data)
    return _rewritten(data, text, extractor(text, post), mapping, proxied_only, site_url)


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
