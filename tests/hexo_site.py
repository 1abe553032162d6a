"""
A real Hexo blog as test equipment: install Hexo once, build sites from posts, serve them.

``tests/hexo/`` holds the site skeleton (``_config.yml``), the npm manifest and its committed
lockfile. The ``hexo_install`` fixture runs ``npm ci`` once per session into a temporary folder
(npm's own cache makes reruns cheap); ``build_site(posts, extra_source, config)`` lays a fresh site
in tmp, copies the posts into ``source/_posts`` and runs ``hexo generate`` under an offline guard
(``tests/hexo/offline.cjs``) that fails the build on any socket or name lookup.
``serve_static(public)`` serves the result on 127.0.0.1, and ``article_html`` and ``post_pages``
read the built pages back for comparison.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import yaml

SKELETON = Path(__file__).parent / "hexo"
OFFLINE_GUARD = SKELETON / "offline.cjs"
INSTALL_TIMEOUT = 600.0
GENERATE_TIMEOUT = 300.0
# landscape's layout/_partial/article.ejs: the post body sits between these two, and the footer is
# the template's own, after the body, so the last one closes the body even if a post is unbalanced.
ARTICLE_START = '<div class="e-content article-entry" itemprop="articleBody">'
ARTICLE_END = '<footer class="article-footer">'
POST_PAGE = '<meta property="og:type" content="article">'
_LOG_PROBLEM = re.compile(r"^(?:ERROR|FATAL)\b", re.MULTILINE)


class HexoError(RuntimeError):
    """npm or hexo failed; the message carries the command's own output."""


@dataclasses.dataclass(frozen=True)
class HexoInstall:
    """A folder where ``npm ci`` installed the lockfile's packages."""

    root: Path

    @property
    def node_modules(self) -> Path:
        """The installed packages, shared by every site built from this install."""
        return self.root / "node_modules"

    @property
    def hexo_bin(self) -> Path:
        """Hexo's own command-line entry point (what ``npx hexo`` would run)."""
        return self.node_modules / "hexo" / "bin" / "hexo"


def _run(argv: Sequence[str], cwd: Path, timeout: float, env: Mapping[str, str]) -> str:
    """Run ``argv``; return its combined output, or raise HexoError with it."""
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise HexoError(f"{' '.join(argv)} ran past {timeout:g} s in {cwd}:\n{output}") from exc
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise HexoError(f"{' '.join(argv)} exited {done.returncode} in {cwd}:\n{output}")
    return output


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def install_hexo(dest: Path, *, timeout: float = INSTALL_TIMEOUT) -> HexoInstall:
    """
    Install the lockfile's packages into ``dest`` with ``npm ci``.

    Args:
        dest: An empty folder outside the checkout.
        timeout: Seconds before npm is killed.

    Returns:
        The install, ready for :func:`generate`.

    Raises:
        HexoError: npm failed (its output is in the message) or ran past ``timeout``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(SKELETON / name, dest / name)
    # --ignore-scripts: the only install scripts (hexo-util's) rebuild a file the package ships.
    argv = ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline", "--ignore-scripts"]
    env = {**os.environ, "npm_config_update_notifier": "false"}
    _run(argv, dest, timeout, env)
    install = HexoInstall(dest)
    if not install.hexo_bin.is_file():
        raise HexoError(f"npm ci in {dest} left no {install.hexo_bin}")
    return install


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


def _source_folder(name: str) -> PurePosixPath:
    """Check an ``extra_source`` key: a relative folder under ``source/`` that Hexo publishes."""
    folder = PurePosixPath(name)
    if folder.is_absolute() or not folder.parts or ".." in folder.parts:
        raise ValueError(f"extra_source key {name!r} is not a relative folder under source/")
    if any(part.startswith(("_", ".")) for part in folder.parts):
        # Hexo publishes nothing under source/ whose path has a part starting with _ or .
        raise ValueError(f"extra_source key {name!r}: Hexo would not publish it")
    return folder


def _copy(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
    elif src.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    else:
        raise FileNotFoundError(f"no such file or folder: {src}")


def generate(
    install: HexoInstall,
    site: Path,
    posts: Path,
    extra_source: Mapping[str, Path] | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    timeout: float = GENERATE_TIMEOUT,
    command_prefix: Sequence[str] = (),
) -> Path:
    """
    Lay a fresh Hexo site in ``site`` and build it.

    Args:
        install: Where the packages are (see :func:`install_hexo`).
        site: A folder that must not exist yet.
        posts: A folder of posts (copied with its subfolders, mtimes kept) or one post file.
        extra_source: Folders or files to copy under ``source/``, e.g. ``{"mirror": objects}``.
        config: Overrides merged (nested mappings deeply) over the skeleton's ``_config.yml``.
        timeout: Seconds before hexo is killed.
        command_prefix: Prepended to the hexo command (e.g. ``("unshare", "--net")``).

    Returns:
        The built ``public/`` folder; hexo's output is kept beside it in ``hexo.log``.

    Raises:
        HexoError: hexo failed, ran past ``timeout``, logged an ERROR or FATAL line (it exits 0
            after dropping a post whose front matter does not parse), or tried to use the network.
        ValueError: an ``extra_source`` key is not a folder Hexo publishes.
        FileExistsError: ``site`` already exists.
    """
    folders = {_source_folder(name): path for name, path in (extra_source or {}).items()}
    site.mkdir(parents=True)
    shutil.copy2(SKELETON / "package.json", site / "package.json")
    (site / "node_modules").symlink_to(install.node_modules, target_is_directory=True)
    skeleton = yaml.safe_load((SKELETON / "_config.yml").read_text(encoding="utf-8"))
    merged = _merge(skeleton, config or {})
    (site / "_config.yml").write_text(
        yaml.safe_dump(merged, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    source = site / "source"
    target = source / "_posts"
    _copy(posts, target / posts.name if posts.is_file() else target)
    for folder, path in folders.items():
        _copy(path, source.joinpath(*folder.parts))
    offline_log = site / "offline-guard.log"
    # Quoted, as NODE_OPTIONS splits on spaces and a checkout's path may hold one.
    node_options = f'{os.environ.get("NODE_OPTIONS", "")} --require="{OFFLINE_GUARD}"'.strip()
    env = {
        **os.environ,
        "NODE_OPTIONS": node_options,
        "MIRROR_HEXO_OFFLINE_LOG": str(offline_log),
        "NO_COLOR": "1",
    }
    argv = [*command_prefix, "node", str(install.hexo_bin), "generate"]
    output = _run(argv, site, timeout, env)
    (site / "hexo.log").write_text(output, encoding="utf-8")
    if offline_log.exists():
        tried = offline_log.read_text(encoding="utf-8")
        raise HexoError(f"hexo generate tried to use the network in {site}:\n{tried}\n{output}")
    if _LOG_PROBLEM.search(output):
        raise HexoError(f"hexo generate logged errors in {site}:\n{output}")
    return site / "public"


@dataclasses.dataclass
class SiteBuilder:
    """Builds numbered sites under ``root`` from one install; call it like :func:`generate`."""

    install: HexoInstall
    root: Path
    command_prefix: Sequence[str] = ()
    built: int = 0

    def __call__(
        self,
        posts: Path,
        extra_source: Mapping[str, Path] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Path:
        """Build a fresh site from ``posts``; return its ``public/`` folder."""
        self.built += 1
        site = self.root / f"site-{self.built}"
        return generate(
            self.install, site, posts, extra_source, config, command_prefix=self.command_prefix
        )


@pytest.fixture(scope="session")
def hexo_install(tmp_path_factory: pytest.TempPathFactory) -> HexoInstall:
    """Hexo and its plugins, installed once per session into a temporary folder."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} on PATH to install Hexo: apt-get install nodejs npm")
    return install_hexo(tmp_path_factory.mktemp("hexo-install"))


@pytest.fixture
def build_site(hexo_install: HexoInstall, tmp_path: Path) -> SiteBuilder:
    """``build_site(posts, extra_source=None, config=None) -> public``, sites under tmp_path."""
    return SiteBuilder(hexo_install, tmp_path / "hexo")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, recording each request path instead of logging it to stderr."""

    requests: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@dataclasses.dataclass
class StaticSite:
    """A folder served on 127.0.0.1; ``requests`` lists the paths asked for, in order."""

    base_url: str
    requests: list[str]


@contextlib.contextmanager
def static_site(public: Path) -> Iterator[StaticSite]:
    """
    Serve ``public`` on 127.0.0.1 (port 0) from a thread until the block ends.

    Args:
        public: The folder to serve.

    Returns:
        The running site: its base URL (ending in ``/``) and the request paths it saw.
    """
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(public))
    )
    thread = threading.Thread(target=server.serve_forever, name="static-site", daemon=True)
    thread.start()
    try:
        yield StaticSite(f"http://127.0.0.1:{server.server_address[1]}/", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def serve_static() -> Iterator[Callable[[Path], str]]:
    """``serve_static(public) -> base URL``; every server started stops when the test ends."""
    with contextlib.ExitStack() as stack:

        def serve(public: Path) -> str:
            return stack.enter_context(static_site(public)).base_url

        yield serve


def page_file(public: Path, post_url: str) -> Path:
    """
    Map a page's URL (or path) to its file under ``public``.

    Args:
        public: A built site.
        post_url: ``http://127.0.0.1:8000/2020/01/02/x/``, ``/2020/01/02/x/`` or the same
            without the leading slash; percent-escapes are decoded as the server would.

    Returns:
        The page's file (``index.html`` for a URL ending in ``/``).

    Raises:
        ValueError: the URL names a path outside ``public``.
    """
    parts = PurePosixPath(unquote(urlsplit(post_url).path)).parts
    parts = tuple(part for part in parts if part != "/")
    if ".." in parts:
        raise ValueError(f"{post_url!r} leaves the site")
    page = public.joinpath(*parts)
    return page / "index.html" if post_url.endswith("/") or not parts else page


def article_html(public: Path, post_url: str) -> str:
    """
    Return the rendered article body of one post page, exactly as Hexo wrote it.

    The body is cut from the page's text between landscape's ``.article-entry`` opening tag and
    its article footer, not re-serialized by a parser, so two builds compare byte for byte even
    when a post's own HTML is unbalanced.

    Args:
        public: A built site.
        post_url: The post page's URL or path (see :func:`page_file`).

    Returns:
        The body's HTML, surrounding whitespace stripped.

    Raises:
        ValueError: the page is not a single post page of the landscape theme.
    """
    page = page_file(public, post_url).read_text(encoding="utf-8")
    if page.count(ARTICLE_START) != 1:
        raise ValueError(f"{post_url}: {page.count(ARTICLE_START)} article bodies, expected 1")
    start = page.index(ARTICLE_START) + len(ARTICLE_START)
    end = page.rfind(ARTICLE_END)
    body = page[start:end].rstrip()
    if end < start or not body.endswith("</div>"):
        raise ValueError(f"{post_url}: no article footer after the article body")
    return body.removesuffix("</div>").strip()


def post_pages(public: Path) -> list[str]:
    """
    List the site-relative URLs of every post page in a build, sorted.

    Hexo's open_graph helper marks post pages (and only those) ``og:type`` article.

    Args:
        public: A built site.

    Returns:
        Percent-encoded paths like ``/2020/01/02/hello/``: append them to a served site's base
        URL for the browser, or hand them to :func:`article_html` as they are.
    """
    pages = []
    for index in public.rglob("index.html"):
        if POST_PAGE in index.read_text(encoding="utf-8"):
            pages.append(quote(f"/{index.parent.relative_to(public).as_posix()}/"))
    return sorted(pages)
