"""
Pure: a URL as a post writes it → the source URL that identifies the image everywhere later.

The source is the manifest key, the ``--map`` key and the proxy's lookup key, so its rules are
fixed: the inner URL of a wrapper with entities already decoded; percent-decoded once only when it
starts with ``http%3A``/``https%3A``; otherwise verbatim (a trailing empty ``?`` included); scheme
and host lowercased, a default port and any fragment dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):"
    r"//(?P<userinfo>[^/?#@]*@)?(?P<host>\[[^\]]*\]|[^/?#:]*)(?::(?P<port>[0-9]*))?"
    r"(?P<rest>[^#]*)(?:#.*)?",
    re.DOTALL,
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_ENCODED_INNER = re.compile(r"https?%3a", re.IGNORECASE)
_IMAGE_PATH = re.compile(
    r"\.(?:jpe?g|jfif|png|gif|webp|bmp|avif|heic|heif)(?:![\w.-]*)?$", re.IGNORECASE
)
# A lone trailing "?" is allowed because people copy the base from a wrapped URL.
_WRAPPER_BASE = re.compile(r"https?://[^/?#@\s]+(?:/[^?#\s]*)?\??", re.IGNORECASE)
# Nested wrappers exist (a weserv URL put through the worker); unwrapping is bounded.
_MAX_NESTING = 3
# classify results remembered per Classifier; cleared when full, so memory stays bounded.
_MEMO = 4096


@dataclass(frozen=True, slots=True)
class Classified:
    """What a URL turned out to be."""

    source: str
    proxied: bool


def normalize(url: str) -> str | None:
    """
    Return the canonical form of an absolute http(s) URL, or None when it is not one.

    Only the scheme, host, default port and fragment change; path and query stay byte-identical
    because origins treat them as opaque.
    """
    match = _URL.fullmatch(url)
    if match is None:
        return None
    scheme = match["scheme"].lower()
    host = match["host"].lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    port = match["port"]
    netloc = (match["userinfo"] or "") + host
    if port and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{match['rest']}"


def wrapper_base(url: str) -> str:
    """
    Return the base of a ``<base>?<inner url>`` wrapper (``mirror serve``'s public address).

    The base is normalized like a source and ends in ``/``, so ``https://img.example.com`` and
    ``https://IMG.example.com:443/?`` both give ``https://img.example.com/``; a path is kept.

    Raises:
        ValueError: ``url`` is not an absolute http(s) URL, or has credentials, a query or a
            fragment.
    """
    if _WRAPPER_BASE.fullmatch(url) is None:
        raise ValueError(
            f"{url!r} is not an absolute http(s) URL (no credentials, query or fragment), "
            "e.g. https://img.example.com/"
        )
    base = normalize(url.removesuffix("?"))
    if base is None:
        raise ValueError(f"{url!r} has no host")
    return base if base.endswith("/") else base + "/"


def _absolute(url: str) -> str:
    if url.startswith("//"):
        return "https:" + url
    return url


def inner_absolute(inner: str) -> str:
    """Give a wrapper's inner URL a scheme the way the proxies themselves do."""
    if _ENCODED_INNER.match(inner):
        inner = unquote(inner)
    if inner.startswith("//"):
        return "http:" + inner
    if inner[:4].lower() == "ssl:":
        # images.weserv.nl's own spelling of https.
        return "https://" + inner[4:]
    if "://" not in inner[:12]:
        return "http://" + inner
    return inner


class Classifier:
    """Recognises proxy wrappers; built once from the configured patterns."""

    def __init__(self, wrappers: tuple[str, ...]) -> None:
        self._wrappers = tuple(re.compile(p, re.IGNORECASE) for p in wrappers)
        # All patterns as one, without their groups: a URL no wrapper can match (most raw
        # references) is told apart in one C-level match instead of one per pattern.
        anonymous = (re.sub(r"\(\?P<\w+>", "(?:", p) for p in wrappers)
        self._any = re.compile("|".join(f"(?:{p})" for p in anonymous), re.IGNORECASE)
        self._memo: dict[str, Classified | None] = {}

    def unwrap(self, url: str) -> str | None:
        """Return the inner URL when ``url`` is a wrapper, else None."""
        if self._any.match(url) is None:
            return None
        for pattern in self._wrappers:
            match = pattern.match(url)
            if match is not None and match["url"]:
                return inner_absolute(match["url"])
        return None

    def classify(self, decoded: str) -> Classified | None:
        """
        Classify an entity-decoded URL as a wrapped or raw remote reference.

        Returns:
            None for relative, data: and other non-http URLs, and for wrappers whose inner URL
            is not an absolute http(s) URL.
        """
        # Posts repeat URLs (headimg, thumbnail and the first <img>; src and data-original).
        try:
            return self._memo[decoded]
        except KeyError:
            pass
        if len(self._memo) >= _MEMO:
            self._memo.clear()
        found = self._memo[decoded] = self._classify(decoded)
        return found

    def _classify(self, decoded: str) -> Classified | None:
        url = decoded.strip(" \t\n\r\f")
        inner = self.unwrap(url)
        if inner is None:
            if self._any.match(url + "http://x") is not None:
                return None  # a wrapper with nothing inside: not an image anywhere
            source = normalize(_absolute(url))
            return None if source is None else Classified(source, proxied=False)
        for _ in range(_MAX_NESTING):
            deeper = self.unwrap(inner)
            if deeper is None:
                break
            inner = deeper
        source = normalize(inner)
        return None if source is None else Classified(source, proxied=True)


def looks_like_image(source: str) -> bool:
    """Tell whether the URL's path ends in an image file name (jandan's ``!custom`` allowed)."""
    path = source.split("?", 1)[0]
    return _IMAGE_PATH.search(path) is not None


def hostname(source: str) -> str:
    """Return the host of a normalized source URL without its port (IPv6 keeps its brackets)."""
    host = origin_host(source)
    if host.endswith("]") or ":" not in host:
        return host
    return host.rsplit(":", 1)[0]


def origin_host(source: str) -> str:
    """Return the host (with a non-default port) of a normalized source URL."""
    rest = source.split("://", 1)[-1]
    return re.split(r"[/?#]", rest, maxsplit=1)[0].rsplit("@", 1)[-1]


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Tell whether ``host`` is in the allowlist (empty allows all; ``*.x`` matches subdomains)."""
    if not allowed:
        return True
    host = host.lower()
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False
