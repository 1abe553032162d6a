"""
The deployment files (Dockerfile, docker-compose.yml, deploy/nginx.conf), checked offline.

No Docker engine runs where these tests run and no image can be pulled, so nothing is built.
Instead: the compose file is validated by Debian's docker-compose (v1, which needs no engine for
``config``) when it is installed, and always read with PyYAML for what matters; the nginx server
file is tested by the real nginx binary (``nginx -t``), then run for real on 127.0.0.1 in front of
a real ``mirror serve`` started with the compose file's own command line; the Dockerfile is read
line by line. .ci/run installs nginx and docker-compose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import store_object

from mirror.catalog import mime_for
from mirror.cli import build_parser, main
from mirror.config import load_config
from mirror.manifest import Manifest, SourceResult, manifest_path
from mirror.response import IMMUTABLE, SAFE_HEADERS
from mirror.verify import KINDS

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
NGINX_CONF = REPO / "deploy" / "nginx.conf"
STORE = "/data/cache"
CONFIG = "/config/config.toml"
UPSTREAM = "http://serve:8080"
# The source a post names, with its own query and a percent-escape: nginx must pass it as sent.
SOURCE = "http://origin.example/img.png?x=1&y=%2F"
BANNER = re.compile(r"serving on http://127\.0\.0\.1:(\d+)/")


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def _mount(service: dict[str, Any], target: str) -> dict[str, Any]:
    """The long-syntax volume entry of ``service`` mounted at ``target``."""
    found = [v for v in service.get("volumes", []) if isinstance(v, dict) and v["target"] == target]
    assert 1 == len(found), f"one mount at {target}: {service.get('volumes')}"
    return found[0]


def _option(command: list[str], name: str) -> str:
    """The value after ``name`` in an exec-form command."""
    assert name in command, f"{name} in {command}"
    return command[command.index(name) + 1]


def _healthcheck_code(test: list[str]) -> str:
    """The Python one-liner of a ``["CMD", "python", "-c", CODE]`` healthcheck."""
    assert ["CMD", "python", "-c"] == test[:3], test
    assert 4 == len(test), test
    return test[3]


def test_compose_services_share_the_cache_volume(compose: dict[str, Any]) -> None:
    """Three services and MinIO; one named volume, mounted by each of the three at the store."""
    assert {"serve", "job", "nginx", "minio"} == set(compose["services"])
    assert "cache" in compose["volumes"]
    for name, service in compose["services"].items():
        if name == "minio":
            continue
        mount = _mount(service, STORE)
        assert ("volume", "cache") == (mount["type"], mount["source"]), name
        assert "unless-stopped" == service["restart"], name


def test_compose_serve(compose: dict[str, Any]) -> None:
    """serve: the command, not published, /readyz healthcheck, the config read-only."""
    serve = compose["services"]["serve"]
    command = serve["command"]
    assert "serve" == command[0]
    assert "0.0.0.0" == _option(command, "--host")
    assert "2" == _option(command, "--workers")
    assert STORE == _option(command, "--store")
    assert CONFIG == _option(command, "--config")
    assert "ports" not in serve, "serve is reached through nginx only"
    assert ["8080"] == [str(p) for p in serve["expose"]]
    code = _healthcheck_code(serve["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/readyz" in code
    compile(code, "healthcheck", "exec")
    config = _mount(serve, CONFIG)
    assert ("bind", "./config.toml", True) == (
        config["type"],
        config["source"],
        config["read_only"],
    )
    assert (REPO / "config.toml").is_file()
    assert "${MIRROR_UID:-10001}:${MIRROR_GID:-10001}" == serve["user"]


def test_compose_job(compose: dict[str, Any]) -> None:
    """job: `mirror run --every` over /posts, mounted read-write, as a settable uid."""
    job = compose["services"]["job"]
    command = job["command"]
    assert "run" == command[0]
    assert "1h" == _option(command, "--every")
    assert STORE == _option(command, "--store")
    assert CONFIG == _option(command, "--config")
    assert "/posts" == command[-1]
    posts = _mount(job, "/posts")
    assert ("bind", "${POSTS_DIR:-./source/_posts}") == (posts["type"], posts["source"])
    assert not posts.get("read_only", False), "the job rewrites the posts in place"
    config = _mount(job, CONFIG)
    assert ("./config.toml", True) == (config["source"], config["read_only"])
    assert "${MIRROR_UID:-10001}:${MIRROR_GID:-10001}" == job["user"]
    build_args = job["build"]["args"]
    assert {
        "MIRROR_UID": "${MIRROR_UID:-10001}",
        "MIRROR_GID": "${MIRROR_GID:-10001}",
    } == build_args
    assert {"condition": "service_healthy"} == job["depends_on"]["serve"]
    assert "SIGTERM" == job["stop_signal"]
    assert job["stop_grace_period"]
    # The image's HEALTHCHECK is serve's; the job must not inherit it.
    assert job["healthcheck"] == {"disable": True}
    assert job["image"] == compose["services"]["serve"]["image"]


def test_compose_nginx(compose: dict[str, Any]) -> None:
    """nginx: published, every mount read-only, its server file in place of the default one."""
    nginx = compose["services"]["nginx"]
    assert re.fullmatch(r"nginx:(1\.27|stable)-alpine", nginx["image"])
    assert ["8080:80"] == nginx["ports"]
    assert all(v["read_only"] for v in nginx["volumes"]), nginx["volumes"]
    conf = _mount(nginx, "/etc/nginx/conf.d/default.conf")
    assert ("bind", "./deploy/nginx.conf") == (conf["type"], conf["source"])
    assert NGINX_CONF.is_file()
    assert "serve" in nginx["depends_on"]
    # The server file's upstream and object root are this file's service, port and volume.
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert f"set $mirror_upstream {UPSTREAM};" in text
    assert f"root {STORE};" in text
    assert ["--accel-redirect", "/objects/"] == compose["services"]["serve"]["command"][-2:]
    assert "8080" in compose["services"]["serve"]["expose"]


def test_compose_commands_parse_with_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """The command lines the compose file gives are ones mirror's own parser accepts."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    build_parser().parse_args(compose["services"]["serve"]["command"])
    assert 0 == main(["run", "--help"])
    # The job service needs --every: a missing feature fails here instead of skipping quietly.
    assert "--every" in capsys.readouterr().out
    build_parser().parse_args(compose["services"]["job"]["command"])


def _docker_compose(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MIRROR_", "POSTS_DIR"))}
    return subprocess.run(
        [binary, "-f", str(COMPOSE), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docker_compose_validates_the_file() -> None:
    """docker-compose v1 checks the schema, references and interpolation with no engine."""
    result = _docker_compose("config", "-q")
    assert 0 == result.returncode, result.stderr


def test_docker_compose_interpolates_the_uid_and_posts() -> None:
    """MIRROR_UID/GID reach both the build and the user; POSTS_DIR the posts mount."""
    env = {"MIRROR_UID": "1234", "MIRROR_GID": "4321", "POSTS_DIR": "/srv/blog/source/_posts"}
    result = _docker_compose("config", env=env)
    assert 0 == result.returncode, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in ("serve", "job"):
        assert "1234:4321" == services[name]["user"]
        assert {"MIRROR_UID": "1234", "MIRROR_GID": "4321"} == services[name]["build"]["args"]
    assert "/srv/blog/source/_posts" == _mount(services["job"], "/posts")["source"]
    defaults = yaml.safe_load(_docker_compose("config").stdout)["services"]
    assert "10001:10001" == defaults["job"]["user"]
    assert str(REPO / "source" / "_posts") == _mount(defaults["job"], "/posts")["source"]


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "a continued instruction never ends"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def _all(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for word, rest in instructions if word == keyword]


def _expand(value: str, instructions: list[tuple[str, str]]) -> str:
    """``${NAME}`` replaced by the ARG default, as a build without --build-arg sees it."""
    defaults = dict(arg.partition("=")[::2] for arg in _all(instructions, "ARG"))
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m[1]], value)


def test_dockerfile(dockerfile: list[tuple[str, str]]) -> None:
    """Slim base, the package installed, a fixed non-root user owning /data, mirror serve."""
    assert ("FROM", "python:3.11-slim") == dockerfile[0]
    copied = " ".join(_all(dockerfile, "COPY"))
    for needed in ("pyproject.toml", "README.md", "mirror/"):
        assert needed in copied
    assert any("pip install --no-cache-dir ." in run for run in _all(dockerfile, "RUN"))
    user = _expand(_all(dockerfile, "USER")[-1], dockerfile)
    assert "10001:10001" == user
    uid = user.split(":")[0]
    assert uid not in {"0", "root"}
    runs = [_expand(run, dockerfile).replace('"', "") for run in _all(dockerfile, "RUN")]
    assert any(f"chown -R {user} /data" in run for run in runs), "/data must belong to the user"
    assert "/data" == _all(dockerfile, "WORKDIR")[-1]
    assert ["8080"] == _all(dockerfile, "EXPOSE")
    assert ["mirror"] == json.loads(_all(dockerfile, "ENTRYPOINT")[-1])
    command = json.loads(_all(dockerfile, "CMD")[-1])
    assert ["serve", "--host", "0.0.0.0", "--store", STORE] == command
    build_parser().parse_args(command)


def test_dockerfile_healthcheck_is_the_compose_one(
    dockerfile: list[tuple[str, str]], compose: dict[str, Any]
) -> None:
    """HEALTHCHECK asks /readyz with python's urllib (no curl in slim), as compose's serve does."""
    [healthcheck] = _all(dockerfile, "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options
    test = ["CMD", *json.loads(command)]
    code = _healthcheck_code(test)
    assert "http://127.0.0.1:8080/readyz" in code
    assert code == _healthcheck_code(compose["services"]["serve"]["healthcheck"]["test"])


def _ignored(path: str, patterns: list[str]) -> bool:
    """Roughly Docker's rule: a pattern excludes a path or any folder above it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        anywhere = pattern.startswith("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if anywhere and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], pattern[3:]):
                return True
    return False


def test_dockerignore_keeps_the_build_inputs() -> None:
    """The build context has what the Dockerfile copies and none of the store, posts or VCS."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for kept in ("pyproject.toml", "README.md", "mirror/cli/__init__.py", "mirror/py.typed"):
        assert not _ignored(kept, patterns), kept
    for dropped in (
        "cache/manifest.sqlite3",
        ".git/HEAD",
        "mirror-demo/posts/a.md",
        "tests/data/posts/a.md",
        "mirror/cli/__pycache__/parser.cpython-311.pyc",
        "mirror.egg-info/PKG-INFO",
        "source/_posts/a.md",
    ):
        assert _ignored(dropped, patterns), dropped


# --- deploy/nginx.conf --------------------------------------------------------------------------


def _nginx() -> str:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx)")
    return binary


def _object_location(text: str) -> str:
    start = text.index("location /objects/ {")
    return text[start : text.index("\n    }\n", start)]


def test_nginx_object_headers_and_types_are_mirrors() -> None:
    """What nginx sends with an object is what `mirror serve` sends with a hit."""
    block = _object_location(NGINX_CONF.read_text(encoding="utf-8"))
    headers = dict(re.findall(r'add_header (\S+) "([^"]*)";', block))
    assert {**SAFE_HEADERS, "Cache-Control": IMMUTABLE} == headers
    types_block = block[block.index("types {") : block.index("}", block.index("types {"))]
    types = {ext: mime for mime, ext in re.findall(r"(\S+/\S+) (\w+);", types_block)}
    assert {ext: mime for ext, mime in KINDS.values()} == types
    assert all(mime_for(ext) == mime for ext, mime in types.items())


def _wrapper(prefix: Path, server_file: Path, *, daemon: bool) -> Path:
    """
    A whole nginx.conf around the server file, standing in for the official image's own.

    Every path nginx writes (pid, logs, temporary files) is under ``prefix``, so the test needs
    neither root nor Debian's /var/lib/nginx.
    """
    for folder in ("logs", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    # master_process off: one process, owned and stopped by the test, that never switches user.
    head = "" if daemon else "daemon off;\nmaster_process off;\n"
    # The image's nginx.conf includes mime.types; deploy/nginx.conf must not depend on it anyway.
    mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").exists() else ""
    conf.write_text(
        f"""{head}pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    {mime}
    default_type application/octet-stream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {server_file};
}}
""",
        encoding="utf-8",
    )
    return conf


def _adapted(prefix: Path, replacements: dict[str, str]) -> Path:
    """A copy of deploy/nginx.conf with each key (which must be there) replaced."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx.conf no longer has {old!r}; update the test"
        text = text.replace(old, new)
    prefix.mkdir(parents=True, exist_ok=True)
    copy = prefix / "server.conf"
    copy.write_text(text, encoding="utf-8")
    return copy


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    """`nginx -t` on the server file as shipped, the access log aside."""
    nginx = _nginx()
    # The upstream stays `serve`: nginx -t resolves a literal proxy_pass host at test time (and
    # fails here, where no `serve` exists), but the file names it through a variable, resolved
    # per request by Docker's DNS; so this passing also shows nginx will start before `serve`.
    server = _adapted(tmp_path, {"/var/log/nginx/access.log": str(tmp_path / "logs/access.log")})
    conf = _wrapper(tmp_path, server, daemon=True)
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "logs/error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert "test is successful" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class Started:
    """A process started by a test, with its stderr collected by a thread."""

    process: subprocess.Popen[str]
    lines: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def port(self, deadline: float) -> int:
        """The port of mirror's banner."""
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := BANNER.search(line):
                    return int(match[1])
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no banner: {''.join(self.lines)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.thread.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()


@contextlib.contextmanager
def started(command: list[str], cwd: Path) -> Iterator[Started]:
    process = subprocess.Popen(
        command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    running = Started(process)
    try:
        yield running
    finally:
        running.stop()


def request(
    port: int, target: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request, the target sent byte for byte; (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def wait_ready(port: int, path: str, deadline: float, process: Started) -> None:
    """Until ``path`` answers 200 (workers may start after the banner)."""
    while time.monotonic() < deadline:
        assert process.process.poll() is None, "".join(process.lines)
        with contextlib.suppress(OSError, http.client.HTTPException):
            if 200 == request(port, path)[0]:
                return
        time.sleep(0.1)
    raise AssertionError(f"{path} never answered 200: {''.join(process.lines)}")


def remember(root: Path, source: str, data: bytes) -> str:
    """Store ``data`` and record ``source`` as mirrored to it, as `mirror run` would."""
    sha = store_object(root, data, "png")
    result = SourceResult(source, "mirrored", sha256=sha, ext="png", size=len(data))
    result = dataclasses.replace(result, format="PNG", width=64, height=48)
    with Manifest(manifest_path(root)) as manifest:
        manifest.record_results([result])
    return sha


def test_nginx_in_front_of_mirror_serve(
    tmp_path: Path, png_bytes: bytes, compose: dict[str, Any]
) -> None:
    """
    The compose layout on loopback: nginx with deploy/nginx.conf, `mirror serve` with the compose
    file's own command (addresses and paths mapped to this machine), a store with one object.
    """
    nginx = _nginx()
    store = tmp_path / "data" / "cache"
    old_umask = os.umask(0o022)  # the container's
    try:
        sha = remember(store, SOURCE, png_bytes)
    finally:
        os.umask(old_umask)
    stored = store / "objects" / sha[:2] / f"{sha}.png"
    # The image's nginx workers run as user nginx, not as mirror's uid: world-readable objects.
    assert 0o004 & stored.stat().st_mode
    for folder in (store, stored.parent.parent, stored.parent):
        assert 0o005 == 0o005 & folder.stat().st_mode, folder
    temporary = stored.with_name(f".{sha}.png.0123abcd.tmp")
    temporary.write_bytes(png_bytes)

    mapped = {"0.0.0.0": "127.0.0.1", STORE: str(store), CONFIG: str(REPO / "config.toml")}
    command = [mapped.get(arg, arg) for arg in compose["services"]["serve"]["command"]]
    deadline = time.monotonic() + 60
    with started([sys.executable, "-m", "mirror", *command, "--port", "0"], tmp_path) as serve:
        serve_port = serve.port(deadline)
        wait_ready(serve_port, "/readyz", deadline, serve)

        # The healthcheck one-liner itself, against this serve.
        code = _healthcheck_code(compose["services"]["serve"]["healthcheck"]["test"])
        check = [sys.executable, "-c", code.replace(":8080/", f":{serve_port}/")]
        assert 0 == subprocess.run(check, timeout=30, check=False).returncode

        prefix = tmp_path / "nginx"
        port = _free_port()
        server = _adapted(
            prefix,
            {
                "listen 80;": f"listen 127.0.0.1:{port};",
                UPSTREAM: f"http://127.0.0.1:{serve_port}",
                f"root {STORE};": f"root {store};",
                "/var/log/nginx/access.log": str(prefix / "logs" / "access.log"),
            },
        )
        conf = _wrapper(prefix, server, daemon=False)
        errors = str(prefix / "logs" / "error.log")
        with started([nginx, "-p", str(prefix), "-e", errors, "-c", str(conf)], tmp_path) as proxy:
            wait_ready(port, "/healthz", deadline, proxy)
            _check_through_nginx(port, sha, png_bytes, temporary)

    assert 0 == serve.process.returncode, "".join(serve.lines)


def _check_through_nginx(port: int, sha: str, png: bytes, temporary: Path) -> None:
    # An object: nginx sends the file itself (its ETag is mtime-size, mirror's is the sha256).
    path = f"/mirror/{sha[:2]}/{sha}.png"
    status, headers, body = request(port, path)
    assert (200, png) == (status, body)
    assert "image/png" == headers["Content-Type"]
    assert {**SAFE_HEADERS, "Cache-Control": IMMUTABLE}.items() <= headers.items()
    assert f'"{sha}"' != headers["ETag"]
    assert "X-Mirror-Reason" not in headers
    status, headers, body = request(port, path, headers={"Range": "bytes=0-7"})
    assert (206, png[:8]) == (status, body)
    status, _, _ = request(port, path, headers={"If-None-Match": headers["ETag"]})
    assert 304 == status

    # A missing object: nginx's own 404 (mirror serve has nothing more: the same store).
    missing = "0" * 64
    status, headers, _ = request(port, f"/mirror/00/{missing}.png")
    assert (404, None) == (status, headers.get("X-Mirror-Reason"))
    # The internal location is not reachable from outside.
    assert 404 == request(port, f"/objects/{sha[:2]}/{sha}.png")[0]
    # A store temporary (being written, or left by a crash) is there, but not an object's name.
    status, _, body = request(port, f"/mirror/{sha[:2]}/{temporary.name}")
    assert 404 == status
    assert png != body

    # The proxy form, raw and percent-encoded: mirror serve finds the object (so nginx passed the
    # inner URL on as sent, its own query and %2F intact) and hands the file back to nginx with
    # X-Accel-Redirect: nginx's ETag, the safe headers, and no X-Accel-Redirect leaking out.
    for query in (SOURCE, "http%3A%2F%2Forigin.example%2Fimg.png%3Fx%3D1%26y%3D%252F"):
        status, headers, body = request(port, f"/?{query}")
        assert (200, png) == (status, body), query
        assert f'"{sha}"' != headers.get("ETag")
        assert "X-Accel-Redirect" not in headers
        assert {**SAFE_HEADERS, "Cache-Control": IMMUTABLE}.items() <= headers.items()
        assert "image/png" == headers["Content-Type"]
    status, headers, _ = request(port, "/?http://origin.example/other.png")
    assert (404, "unknown-url") == (status, headers.get("X-Mirror-Reason"))

    # Kept from the public: mirror serve would answer these to a loopback client (this test).
    for admin in ("/metrics", "/", "/?"):
        status, headers, _ = request(port, admin)
        assert 403 == status, admin
        assert "X-Mirror-Reason" not in headers, admin
    assert 200 == request(port, "/readyz")[0]


def test_compose_minio_only_with_its_profile(compose: dict[str, Any]) -> None:
    """MinIO starts only with --profile s3, on its own volume, credentials from the environment."""
    minio = compose["services"]["minio"]
    assert ["s3"] == minio["profiles"]
    assert ("volume", "minio") == (_mount(minio, "/data")["type"], _mount(minio, "/data")["source"])
    assert "${MINIO_ROOT_PASSWORD:-}" == minio["environment"]["MINIO_ROOT_PASSWORD"]
    assert "9000:9000" in minio["ports"]


def test_compose_commented_s3_configuration_loads(tmp_path: Path) -> None:
    """The commented config.toml in docker-compose.yml is a valid S3 store aimed at MinIO."""
    lines = COMPOSE.read_text(encoding="utf-8").splitlines()
    start = lines.index("# [store]")
    block = []
    for line in lines[start:]:
        if not line.startswith("# ") or line == "#":
            break
        block.append(line.removeprefix("# "))
    config_file = tmp_path / "config.toml"
    config_file.write_text("\n".join(block) + "\n", encoding="utf-8")
    config = load_config(config_file)
    assert ("s3", "http://minio:9000") == (config.store.scheme, config.store.s3.endpoint_url)
    assert "http://localhost:9000/mirror/blog/" == config.base_url
    assert "redirect" == config.serve.hits
