"""
One frozen config tree, loaded once from ``config.toml`` and passed down.

Defaults live here; the file is optional and only overrides. Every key is validated when the tree
is built, and a bad key or value raises :class:`ConfigError` naming ``section.key``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror.errors import ConfigError
from mirror.source import wrapper_base

DEFAULT_WRAPPERS: tuple[str, ...] = (
    # cors.zfour.workers.dev and every other Cloudflare worker taking the inner URL as the query.
    r"^(?:https?:)?//[a-z0-9.-]+\.workers\.dev/?\?(?P<url>.+)$",
    r"^(?:https?:)?//(?:images\.weserv\.nl|wsrv\.nl)/?\?(?:[^#]*?&)?url=(?P<url>[^&#]+)",
    r"^(?:https?:)?//corsproxy\.io/?\?(?:url=)?(?P<url>.+)$",
    r"^(?:https?:)?//[^/?#]*cors-anywhere[^/?#]*/(?P<url>(?:https?:)?//.+)$",
)

DEFAULT_FRONT_MATTER_KEYS = ("headimg", "thumbnail", "cover", "top_img", "banner", "photos")
DEFAULT_INCLUDE = ("*.md", "*.markdown", "*.html", "*.htm")
MiB = 1024 * 1024
GiB = 1024 * MiB


def _need(key: str, ok: bool, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _need(key, value in allowed, f"must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def _positive(key: str, value: float) -> None:
    _need(key, value > 0, f"must be positive, not {value!r}")


@dataclass(frozen=True, slots=True)
class ScanConfig:
    """Which files are posts and what counts as an image reference in them."""

    include: tuple[str, ...] = DEFAULT_INCLUDE
    front_matter_keys: tuple[str, ...] = DEFAULT_FRONT_MATTER_KEYS
    raw: str = "paired"
    wrappers: tuple[str, ...] = DEFAULT_WRAPPERS
    # 200 times the largest real post seen (20 KB); 64 posts in flight stay under 256 MiB.
    max_post_bytes: int = 4 * MiB

    def __post_init__(self) -> None:
        _need("scan.include", bool(self.include), "needs at least one glob")
        _one_of("scan.raw", self.raw, ("paired", "all"))
        _positive("scan.max_post_bytes", self.max_post_bytes)
        for pattern in self.wrappers:
            try:
                compiled = re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ConfigError("scan.wrappers", f"{pattern!r} is not a regex: {exc}") from exc
            _need("scan.wrappers", "url" in compiled.groupindex, f"{pattern!r} has no (?P<url>...)")


SOURCES = ("origin", "proxy", "https", "alternates", "wayback")


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """
    One per-host request profile, tried in order when a host answers 403 or a placeholder.

    ``referer``: ``"none"``, ``"origin"`` (the origin's home page) or a fixed URL.
    """

    name: str
    hosts: tuple[str, ...] = ()
    referer: str = "none"
    user_agent: str = ""
    headers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _need("fetch.profiles.name", re.fullmatch(r"[\w.-]+", self.name) is not None, "a word")
        ok = self.referer in ("none", "origin") or re.match(r"https?://", self.referer) is not None
        _need("fetch.profiles.referer", ok, f'"none", "origin" or a URL, not {self.referer!r}')
        for header in self.headers:
            ok = re.fullmatch(r"[A-Za-z0-9-]+:[^\r\n]*", header) is not None
            _need("fetch.profiles.headers", ok, f'{header!r} is not "Name: value"')

    def header_map(self, source_origin: str) -> dict[str, str]:
        """The request headers this profile adds, for a source whose origin is given."""
        headers = dict(h.split(":", 1) for h in self.headers)
        headers = {k.strip(): v.strip() for k, v in headers.items()}
        if self.user_agent:
            headers["User-Agent"] = self.user_agent
        if self.referer == "origin":
            headers["Referer"] = source_origin
        elif self.referer != "none":
            headers["Referer"] = self.referer
        return headers


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """How images are downloaded."""

    jobs: int = 32
    per_host: int = 6
    sources: tuple[str, ...] = ("origin", "proxy")
    user_agent: str = "Mozilla/5.0 (compatible; mirror/0.1; +image rescue)"
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0
    attempts: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    retry_after_cap: float = 10.0
    max_bytes: int = 20 * MiB
    min_rate: int = 2048
    min_rate_window: float = 10.0
    max_redirects: int = 5
    failure_backoff: float = 600.0
    host_failures: int = 5
    profiles: tuple[ProfileConfig, ...] = ()

    def __post_init__(self) -> None:
        for name in ("jobs", "per_host", "attempts", "max_bytes", "host_failures"):
            _positive(f"fetch.{name}", getattr(self, name))
        for name in ("connect_timeout", "read_timeout", "total_timeout", "backoff_max"):
            _positive(f"fetch.{name}", getattr(self, name))
        for name in ("failure_backoff",):
            _positive(f"fetch.{name}", getattr(self, name))
        _need("fetch.backoff_initial", self.backoff_initial >= 0, "must not be negative")
        _need("fetch.retry_after_cap", self.retry_after_cap >= 0, "must not be negative")
        _need("fetch.max_redirects", self.max_redirects >= 0, "must not be negative")
        _need("fetch.min_rate", self.min_rate >= 0, "must not be negative (0 turns it off)")
        _positive("fetch.min_rate_window", self.min_rate_window)
        _need("fetch.sources", bool(self.sources), "needs at least one source")
        for source in self.sources:
            _one_of("fetch.sources", source, SOURCES)
        names = [p.name for p in self.profiles]
        _need("fetch.profiles", len(names) == len(set(names)), "profile names must differ")


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """How downloaded bytes are proven to be the declared image."""

    mode: str = "structure"
    size_check: str = "aspect"
    aspect_tolerance: float = 0.02
    max_pixels: int = 50_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "AVIF", "HEIF")
    max_frames: int = 1000
    max_total_pixels: int = 200_000_000
    decode_workers: int = 2
    decode_memory: int = 1 * GiB

    def __post_init__(self) -> None:
        _one_of("verify.mode", self.mode, ("structure", "decode"))
        _one_of("verify.size_check", self.size_check, ("aspect", "exact", "off"))
        _need("verify.aspect_tolerance", 0 <= self.aspect_tolerance < 1, "must be in [0, 1)")
        for name in ("max_pixels", "max_frames", "max_total_pixels", "decode_workers"):
            _positive(f"verify.{name}", getattr(self, name))
        # Below this a worker cannot even start Python and Pillow.
        _need("verify.decode_memory", self.decode_memory >= 256 * MiB, "must be at least 256 MiB")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Where connections may go."""

    connect_to: tuple[str, ...] = ()
    cacert: str = ""
    allow_private: bool = False
    allowed_ports: tuple[int, ...] = (80, 443)

    def __post_init__(self) -> None:
        for entry in self.connect_to:
            parse_connect_to(entry)
        for port in self.allowed_ports:
            _need("network.allowed_ports", 0 < port < 65536, f"{port} is not a TCP port")


S3_ADDRESSING = ("auto", "path", "virtual")
# S3's canned ACLs; "" sends none (the bucket's policy decides).
S3_ACLS = (
    "",
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
# S3's limits on a multipart upload's parts.
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * GiB
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class S3Config:
    """
    How an ``s3://bucket/prefix`` store reaches its bucket.

    Credentials never come from here: botocore's chain reads them from the environment,
    ``~/.aws/`` or an instance role.
    """

    endpoint_url: str = ""
    region: str = ""
    addressing: str = "auto"
    public_url: str = ""
    profile: str = ""
    acl: str = ""
    multipart_threshold: int = 8 * MiB
    part_size: int = 8 * MiB

    def __post_init__(self) -> None:
        ok = not self.endpoint_url or _matches(r"https?://[^/?#]+/?", self.endpoint_url)
        _need("store.s3.endpoint_url", ok, f"{self.endpoint_url!r} is not an http(s) URL")
        ok = not self.region or _matches(r"[a-z0-9-]+", self.region)
        _need("store.s3.region", ok, f"{self.region!r} is not a region name")
        _one_of("store.s3.addressing", self.addressing, S3_ADDRESSING)
        ok = not self.public_url or _matches(r"https?://[^/?#]+/(?:[^?#]*/)?", self.public_url)
        _need("store.s3.public_url", ok, f"{self.public_url!r} is not an http(s) URL ending /")
        ok = not self.profile or _matches(r"[\w.@+-]+", self.profile)
        _need("store.s3.profile", ok, f"{self.profile!r} is not a profile name")
        _one_of("store.s3.acl", self.acl, S3_ACLS)
        _positive("store.s3.multipart_threshold", self.multipart_threshold)
        ok = S3_MIN_PART <= self.part_size <= S3_MAX_PART
        _need("store.s3.part_size", ok, f"must be between {S3_MIN_PART} and {S3_MAX_PART} bytes")


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


def _store_folder(url: str) -> str | None:
    """Return the folder a local store URL names, or None for a URL with another scheme."""
    if url.startswith("file://"):
        rest = url.removeprefix("file://")
        _need("store.url", rest.startswith(("/", "localhost/")), f"{url!r}: file:///abs/path")
        return "/" + rest.removeprefix("localhost/").lstrip("/")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
        return None
    return url


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """
    Where verified objects (and the manifest) live.

    ``url`` is ``./cache``, ``/abs``, ``file:///abs`` (a local folder) or ``s3://bucket/prefix``;
    ``path`` is its deprecated alias and stays the local folder that callers read.
    """

    url: str = ""
    path: str = ""
    staging: str = ""
    durability: str = "crash"
    s3: S3Config = field(default_factory=S3Config)
    # Whether serve and rewrite may make a store where there is none (run and fetch always may).
    create: bool = False

    def __post_init__(self) -> None:
        _one_of("store.durability", self.durability, ("crash", "power"))
        if not self.url:
            object.__setattr__(self, "path", self.path or "cache")
            return
        folder = _store_folder(self.url)
        # A stored path equal to the URL's own folder is the one filled in below, carried over
        # by dataclasses.replace; only a different one is a second, conflicting setting.
        derived = folder if folder is not None else "cache"
        if self.path and Path(self.path) != Path(derived):
            raise ConfigError("store.url", "and store.path (its deprecated alias) are both set")
        if folder is None:
            self._check_s3()
        else:
            ok = not self.staging
            _need("store.staging", ok, "only for s3:// stores (a local store stages in .staging)")
        object.__setattr__(self, "path", derived)

    def _check_s3(self) -> None:
        scheme, _, rest = self.url.partition("://")
        _need("store.url", scheme == "s3", f"unknown scheme {scheme!r}: ./folder, file:// or s3://")
        bucket, _, prefix = rest.partition("/")
        ok = _BUCKET.fullmatch(bucket) is not None and ".." not in bucket
        _need("store.url", ok, f"{bucket!r} is not an S3 bucket name")
        for part in prefix.strip("/").split("/") if prefix.strip("/") else ():
            ok = _PREFIX_PART.fullmatch(part) is not None and part not in (".", "..")
            _need("store.url", ok, f"prefix part {part!r}: letters, digits and _ . - only")

    @property
    def location(self) -> str:
        """Return the store's URL: ``url``, or the deprecated ``path`` when that is unset."""
        return self.url or self.path

    @property
    def scheme(self) -> str:
        """Return ``"file"`` for a local folder, else the URL's scheme (``"s3"``)."""
        return "file" if _store_folder(self.location) is not None else "s3"

    @property
    def bucket(self) -> str:
        """Return an ``s3://`` store's bucket ("" for a local one)."""
        return "" if self.scheme == "file" else self.location.split("://")[1].split("/")[0]

    @property
    def prefix(self) -> str:
        """Return an ``s3://`` store's key prefix without slashes at its ends ("" for none)."""
        if self.scheme == "file":
            return ""
        return self.location.split("://")[1].partition("/")[2].strip("/")


# A password in the manifest's URL would sit in config.toml; libpq reads it from these instead.
_PG_SECRETS = "PGPASSWORD, ~/.pgpass (PGPASSFILE) or a service file (PGSERVICEFILE, ?service=)"


def _check_postgres_url(url: str) -> None:
    """Refuse a ``postgresql://`` URL that carries a password or names no database server."""
    rest = url.split("://", 1)[1]
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    userinfo = netloc.rpartition("@")[0]
    query = rest.partition("?")[2]
    params = {part.partition("=")[0].strip().lower() for part in query.split("&") if part}
    ok = ":" not in userinfo and "password" not in params
    _need("manifest.url", ok, f"holds a password: put it in {_PG_SECRETS}")


@dataclass(frozen=True, slots=True)
class ManifestConfig:
    """
    Where the manifest lives: ``url`` is "" (``<store>/manifest.sqlite3``), a path, or a URL.

    ``sqlite:///abs/path`` or a plain path is a SQLite file; ``postgresql://user@host:port/db``
    (or ``postgres://``) a PostgreSQL database, whose password libpq reads from the environment
    or a file, never from here.
    """

    url: str = ""

    def __post_init__(self) -> None:
        scheme = self.scheme
        if scheme == "postgresql":
            _check_postgres_url(self.url)
        elif self.url.startswith("sqlite:"):
            ok = re.fullmatch(r"sqlite:///[^?#]+", self.url) is not None
            _need("manifest.url", ok, f"{self.url!r}: write sqlite:///abs/path")
        elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", self.url):
            why = f"unknown scheme in {self.url!r}: a path, sqlite:///abs/path or postgresql://"
            raise ConfigError("manifest.url", why)

    @property
    def scheme(self) -> str:
        """Return ``"postgresql"`` for a PostgreSQL URL, else ``"sqlite"``."""
        return "postgresql" if self.url.startswith(("postgresql://", "postgres://")) else "sqlite"

    @property
    def path(self) -> Path | None:
        """Return the SQLite file the URL names, or None for the default (or PostgreSQL)."""
        if self.scheme != "sqlite" or not self.url:
            return None
        return Path(self.url.removeprefix("sqlite://"))


# What rewritten posts point at when rewrite.base_url is "" and the store has no public URL.
DEFAULT_BASE_URL = "/mirror/"
# The SQLite manifest of a remote store (s3://) without [manifest] url: beside config.toml.
REMOTE_MANIFEST = "mirror.sqlite3"
LOCAL_MANIFEST = "manifest.sqlite3"


@dataclass(frozen=True, slots=True)
class RewriteConfig:
    """What rewritten posts point at; ``base_url`` "" is :attr:`Config.base_url`'s default."""

    base_url: str = ""
    on_failure: str = "keep"
    # For references in Markdown text, which must be absolute: the site a relative base_url is on.
    site_url: str = ""

    def __post_init__(self) -> None:
        ends = not self.base_url or self.base_url.endswith("/")
        _need("rewrite.base_url", ends, "must end with '/'")
        _one_of("rewrite.on_failure", self.on_failure, ("keep", "unwrap"))
        ok = not self.site_url or re.fullmatch(r"https?://[^/?#\s]+(?:/[^?#\s]*)?", self.site_url)
        _need("rewrite.site_url", bool(ok), 'must be "" or an absolute http(s) URL')


SERVE_HITS = ("stream", "redirect")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """How ``mirror serve`` answers as the CORS proxy's replacement."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    open: bool = False
    allow_hosts: tuple[str, ...] = ()
    max_store_bytes: int = GiB
    fallback_proxy: str = ""
    public_url: str = ""
    admin_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    memory_cache_bytes: int = 64 * MiB
    request_timeout: float = 30.0
    negative_ttl: float = 60.0
    min_free_bytes: int = 256 * MiB
    refresh_interval: float = 1.0
    accel_redirect: str = ""
    access_log: str = ""
    hits: str = "stream"

    def __post_init__(self) -> None:
        _one_of("serve.hits", self.hits, SERVE_HITS)
        _need("serve.host", bool(self.host), "must not be empty")
        _need("serve.port", 0 <= self.port < 65536, f"{self.port} is not a TCP port")
        _need("serve.workers", 1 <= self.workers <= 64, "must be between 1 and 64")
        for name in ("max_store_bytes", "request_timeout", "negative_ttl", "refresh_interval"):
            _positive(f"serve.{name}", getattr(self, name))
        for name in ("memory_cache_bytes", "min_free_bytes"):
            _need(f"serve.{name}", getattr(self, name) >= 0, "must not be negative")
        for host in self.allow_hosts:
            ok = re.fullmatch(r"(\*\.)?[a-z0-9.-]+", host) is not None
            _need("serve.allow_hosts", ok, f"{host!r} is not a lowercase host or *.domain")
        for network in self.admin_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ConfigError("serve.admin_networks", f"{network!r}: {exc}") from exc
        ok = not self.accel_redirect or re.fullmatch(r"/[\w./-]*/", self.accel_redirect) is not None
        _need("serve.accel_redirect", ok, "must be a path like /_mirror_objects/")
        ok = "\x00" not in self.access_log and "\n" not in self.access_log
        _need("serve.access_log", ok, 'must be "-", "" or a file path')
        for name in ("fallback_proxy", "public_url"):
            value = getattr(self, name)
            ok = not value or re.match(r"https?://[^/?#]+", value) is not None
            _need(f"serve.{name}", ok, f"{value!r} is not an http(s) URL")


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """
    The fetch queue of ``mirror enqueue`` / ``mirror worker`` / ``mirror run --workers``.

    It lives in the PostgreSQL database ``[manifest] url`` names (procrastinate's tables).
    ``concurrency`` 0 means ``fetch.jobs`` sources at once per worker; ``batch`` is how many
    sources of one origin host a task holds at most.
    """

    concurrency: int = 0
    batch: int = 25
    heartbeat: float = 10.0
    stalled_after: float = 30.0
    retries: int = 5
    host_down_for: float = 600.0
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        _need("queue.concurrency", self.concurrency >= 0, "must not be negative (0: fetch.jobs)")
        for name in ("heartbeat", "stalled_after", "host_down_for", "poll_interval"):
            _positive(f"queue.{name}", getattr(self, name))
        _need("queue.retries", self.retries >= 0, "must not be negative")
        _need("queue.batch", 1 <= self.batch <= 1000, "must be 1 to 1000")
        # A live worker must never look stalled between two of its heartbeats.
        ok = self.stalled_after >= 2 * self.heartbeat
        _need("queue.stalled_after", ok, "must be at least twice queue.heartbeat")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole tree; build it with :func:`load_config`, change it with ``dataclasses.replace``."""

    scan: ScanConfig = field(default_factory=ScanConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)

    @property
    def base_url(self) -> str:
        """
        Return what rewritten references start with: ``rewrite.base_url`` when set, else the
        public base of an S3 store with ``store.s3.public_url``, else ``/mirror/``.
        """
        if self.rewrite.base_url:
            return self.rewrite.base_url
        store = self.store
        if store.scheme == "s3" and store.s3.public_url:
            return store.s3.public_url + (f"{store.prefix}/" if store.prefix else "")
        return DEFAULT_BASE_URL

    @property
    def manifest_file(self) -> Path | None:
        """
        Return the SQLite manifest's file, or None for a PostgreSQL one: ``manifest.url``'s
        path, else ``<store folder>/manifest.sqlite3`` for a local store, else (a remote
        store) ``./mirror.sqlite3``; :func:`with_manifest_beside` puts that beside config.toml.
        """
        if self.manifest.scheme == "postgresql":
            return None
        if self.manifest.path is not None:
            return self.manifest.path
        if self.store.scheme == "file":
            return Path(self.store.path) / LOCAL_MANIFEST
        return Path(REMOTE_MANIFEST)

    @property
    def home(self) -> Path:
        """
        Return the local folder of the store's bookkeeping: the manifest's folder, where the
        store lock lives (a local store's own folder by default); the working folder for a
        PostgreSQL manifest of a remote store.
        """
        found = self.manifest_file
        if found is not None:
            return found.parent
        return Path(self.store.path) if self.store.scheme == "file" else Path()


@dataclass(frozen=True, slots=True)
class ConnectTo:
    """One curl-style ``HOST:PORT:HOST2:PORT2`` entry; an empty left side matches any."""

    host: str
    port: int | None
    to_host: str
    to_port: int | None


def parse_connect_to(entry: str) -> ConnectTo:
    """
    Parse ``HOST:PORT:HOST2:PORT2`` (IPv6 literals in brackets).

    Raises:
        ConfigError: the entry is malformed.
    """
    parts = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*):(\d*):(\[[^\]]*\]|[^:\[\]]*):(\d*)", entry)
    if parts is None:
        raise ConfigError("network.connect_to", f"{entry!r} is not HOST:PORT:HOST2:PORT2")
    host, port, to_host, to_port = parts.groups()
    return ConnectTo(
        host.strip("[]").lower(),
        int(port) if port else None,
        to_host.strip("[]"),
        int(to_port) if to_port else None,
    )


def _convert(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        _need(key, isinstance(value, list), f"must be a list, not {type(value).__name__}")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(_convert(key, item, item_hint) for item in value)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _need(key, ok, f"must be a number, not {value!r}")
        return float(value)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _need(key, ok, f"must be an integer, not {value!r}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _section(key, hint, value)
    _need(key, isinstance(value, hint), f"must be a {hint.__name__}, not {value!r}")
    return value


def _section(name: str, cls: type[Any], table: Any) -> Any:
    _need(name, isinstance(table, dict), "must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        _need(f"{name}.{key}", key in known, "unknown key")
        kwargs[key] = _convert(f"{name}.{key}", value, hints[key])
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in required:
        _need(f"{name}.{key}", key in kwargs, "is required")
    return cls(**kwargs)


def config_from_mapping(data: Mapping[str, Any]) -> Config:
    """
    Build a validated :class:`Config` from parsed TOML.

    Raises:
        ConfigError: an unknown section or key, or a bad value.
    """
    hints = typing.get_type_hints(Config)
    sections = {}
    for name, table in data.items():
        _need(name, name in hints, "unknown section")
        sections[name] = _section(name, hints[name], table)
    return Config(**sections)


def load_config(path: Path | None) -> Config:
    """
    Load ``path``, or ./config.toml when it exists and no path is given, else the defaults.

    Raises:
        ConfigError: the file is missing, is not TOML, or holds a bad key or value.
    """
    if path is None:
        default = Path("config.toml")
        if not default.is_file():
            return Config()
        path = default
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(str(path), "no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    return config_from_mapping(data)


def with_manifest_beside(config: Config, config_file: Path | None) -> Config:
    """
    Give a remote store without ``[manifest] url`` its SQLite file beside the config file.

    ``config_file`` is the file given with ``--config``; None means ``./config.toml`` or none,
    both the working folder. A local store keeps ``<store>/manifest.sqlite3``.
    """
    if config.store.scheme == "file" or config.manifest.url:
        return config
    folder = config_file.parent if config_file is not None else Path()
    manifest = ManifestConfig(url=str((folder / REMOTE_MANIFEST).absolute()))
    return dataclasses.replace(config, manifest=manifest)


def _wrapper_pattern(base: str) -> str:
    """Return the ``scan.wrappers`` regex for a base made by :func:`wrapper_base`."""
    rest = base.split(":", 1)[1]
    if rest.count("/") == 3:
        # At the root, ``https://host?x`` is the same request as ``https://host/?x``.
        return rf"^(?:https?:)?{re.escape(rest[:-1])}/?\?(?P<url>.+)$"
    return rf"^(?:https?:)?{re.escape(rest)}\?(?P<url>.+)$"


def with_public_wrapper(config: Config, base: str | None = None) -> Config:
    """
    Count ``<base>?<inner url>`` as a wrapper, for ``serve.public_url`` and ``base``.

    Posts rewrapped to point at ``mirror serve`` (``mirror rewrite --rewrap``) must still be found
    and mirrored by later scans. The patterns are appended, so the configured wrappers keep
    their precedence.

    Args:
        config: the tree to extend.
        base: another public base, e.g. ``--rewrap``'s value.

    Raises:
        ConfigError: ``serve.public_url`` is not a base that :func:`wrapper_base` accepts.
        ValueError: ``base`` is not.
    """
    bases = []
    if config.serve.public_url:
        try:
            bases.append(wrapper_base(config.serve.public_url))
        except ValueError as exc:
            raise ConfigError("serve.public_url", str(exc)) from exc
    if base is not None:
        bases.append(wrapper_base(base))
    wrappers = config.scan.wrappers
    extra = tuple(p for p in dict.fromkeys(map(_wrapper_pattern, bases)) if p not in wrappers)
    if not extra:
        return config
    scan = dataclasses.replace(config.scan, wrappers=wrappers + extra)
    return dataclasses.replace(config, scan=scan)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """
    Parse ``45s``, ``30m``, ``1h``, ``1d`` or plain seconds into seconds.

    Raises:
        ValueError: not such a duration, or not positive.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a duration like 30m, 1h or 1d")
    return float(match[1]) * _UNITS[match[2]]
