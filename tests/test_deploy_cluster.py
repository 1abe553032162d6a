"""
The scaled-out deployment (docker-compose.cluster.yml, deploy/cluster*.{toml,conf,sh}), checked
offline as tests/test_deploy.py checks the one-machine files.

No Docker engine, no image pull: Debian's docker-compose v1 validates the file and its
interpolation (``config`` needs no engine), PyYAML reads it for the services, their health
conditions and what they share, mirror's own ``load_config`` and argument parser read the
config and the command lines, and the real nginx binary checks deploy/cluster-nginx.conf
(``nginx -t``) and then routes for real on 127.0.0.1 between two local backends and a stand-in
bucket, each a real HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
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

from mirror.cli import build_parser
from mirror.config import load_config
from mirror.queue.status import HostCounts, QueueStatus
from mirror.response import IMMUTABLE, SAFE_HEADERS
from tests.test_deploy import Started, _free_port, _mount, _nginx, _wrapper, started
from tests.test_queue import rows, write_posts
from tests.test_queue_kill import mirror, write_config

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "docker-compose.cluster.yml"
ENV_EXAMPLE = REPO / ".env.example"
CLUSTER_TOML = REPO / "deploy" / "cluster.toml"
CLUSTER_NGINX = REPO / "deploy" / "cluster-nginx.conf"
JOB_SCRIPT = REPO / "deploy" / "cluster-job.sh"
MINIO_SETUP = REPO / "deploy" / "minio-setup.sh"
MINIO_POLICY = REPO / "deploy" / "minio-mirror-policy.json"
CONFIG = "/config/config.toml"
MIRROR_SERVICES = ("serve-1", "serve-2", "worker-1", "worker-2", "job")
SECRETS = (
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MIRROR_S3_ACCESS_KEY",
    "MIRROR_S3_SECRET_KEY",
)
# Which services may see each secret (as whatever variable name they read it by).
SEES = {
    "POSTGRES_PASSWORD": {"postgres", *MIRROR_SERVICES},
    "MINIO_ROOT_USER": {"minio", "minio-setup"},
    "MINIO_ROOT_PASSWORD": {"minio", "minio-setup"},
    "MIRROR_S3_ACCESS_KEY": {"minio-setup", *MIRROR_SERVICES},
    "MIRROR_S3_SECRET_KEY": {"minio-setup", *MIRROR_SERVICES},
}
SHA = "ab" + "c" * 62


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CLUSTER.read_text(encoding="utf-8"))
    return loaded


def _filled_env(folder: Path) -> tuple[Path, dict[str, str]]:
    """An env file with a fresh random value for every secret .env.example lists."""
    values = {name: f"{name.lower()}-{secrets.token_hex(8)}" for name in SECRETS}
    env = folder / "cluster.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return env, values


def _cluster_compose(*args: str) -> subprocess.CompletedProcess[str]:
    """docker-compose on the cluster file alone, none of this shell's settings leaking in."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose)")
    leaks = ("MIRROR_", "POSTS_DIR", "COMPOSE_", *SECRETS)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(leaks)}
    return subprocess.run(
        [binary, "-f", str(CLUSTER), *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _serve_and_workers() -> tuple[str, ...]:
    return MIRROR_SERVICES[:4]


def test_cluster_has_every_part(cluster: dict[str, Any]) -> None:
    """postgres, minio and its setup, two serve nodes, nginx, two workers and the job."""
    expected = {"postgres", "minio", "minio-setup", "nginx", *MIRROR_SERVICES}
    assert expected == set(cluster["services"])
    assert {"postgres", "minio"} == set(cluster["volumes"])
    services = cluster["services"]
    assert re.fullmatch(r"postgres:\d+-alpine", services["postgres"]["image"])
    assert "ports" not in services["postgres"], "the database is not published"
    assert "ports" not in services["minio"], "the bucket is reached through nginx"
    assert ["8080:80"] == services["nginx"]["ports"]
    for name in MIRROR_SERVICES:
        assert "ports" not in services[name], name
    # The one-machine file is left as it was: its own services, no PostgreSQL.
    single = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    assert {"serve", "job", "nginx", "minio"} == set(single["services"])


def test_cluster_health_conditions(cluster: dict[str, Any]) -> None:
    """Every mirror service waits for a healthy postgres and a finished bucket setup."""
    services = cluster["services"]
    assert ["CMD", "pg_isready", "--username", "mirror", "--dbname", "mirror"] == services[
        "postgres"
    ]["healthcheck"]["test"]
    assert ["CMD", "mc", "ready", "local"] == services["minio"]["healthcheck"]["test"]
    assert {"minio": {"condition": "service_healthy"}} == services["minio-setup"]["depends_on"]
    assert "no" == services["minio-setup"]["restart"]
    needs = {
        "postgres": {"condition": "service_healthy"},
        "minio-setup": {"condition": "service_completed_successfully"},
    }
    for name in _serve_and_workers():
        assert needs == services[name]["depends_on"], name
    started_ = {"condition": "service_started"}
    assert {**needs, "worker-1": started_, "worker-2": started_} == services["job"]["depends_on"]
    assert {"serve-1", "serve-2", "minio"} == set(services["nginx"]["depends_on"])
    for name in ("serve-1", "serve-2"):
        test = services[name]["healthcheck"]["test"]
        assert ["CMD", "python", "-c"] == test[:3]
        assert "http://127.0.0.1:8080/readyz" in test[3]
        compile(test[3], "healthcheck", "exec")
    for name in ("worker-1", "worker-2", "job"):
        assert {"disable": True} == services[name]["healthcheck"], name


def test_cluster_services_share_one_config(cluster: dict[str, Any]) -> None:
    """Serve nodes, workers and job read deploy/cluster.toml; none overrides store or manifest."""
    services = cluster["services"]
    for name in MIRROR_SERVICES:
        service = services[name]
        config = _mount(service, CONFIG)
        assert ("bind", "./deploy/cluster.toml", True) == (
            config["type"],
            config["source"],
            config["read_only"],
        ), name
        assert "mirror:local" == service["image"]
        assert "${MIRROR_UID:-10001}:${MIRROR_GID:-10001}" == service["user"]
        assert ["ALL"] == service["cap_drop"]
        command = service.get("command", [])
        assert "--store" not in command, name
    for name in _serve_and_workers():
        command = services[name]["command"]
        assert CONFIG == command[command.index("--config") + 1], name
        build_parser().parse_args(command)
    assert "serve" == services["serve-1"]["command"][0]
    assert services["serve-1"]["command"] == services["serve-2"]["command"]
    assert ["worker", "--config", CONFIG] == services["worker-1"]["command"]
    assert services["worker-1"]["command"] == services["worker-2"]["command"]


def test_cluster_config_loads_and_names_the_services(cluster: dict[str, Any]) -> None:
    """deploy/cluster.toml loads with load_config: the compose file's database, bucket and nginx."""
    config = load_config(CLUSTER_TOML)
    postgres = cluster["services"]["postgres"]["environment"]
    user, database = postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
    assert f"postgresql://{user}@postgres:5432/{database}" == config.manifest.url
    assert ("s3", "mirror", "blog") == (
        config.store.scheme,
        config.store.bucket,
        config.store.prefix,
    )
    assert ("http://minio:9000", "path") == (
        config.store.s3.endpoint_url,
        config.store.s3.addressing,
    )
    assert "redirect" == config.serve.hits
    assert "http://localhost:8080/mirror/blog/" == config.base_url
    # The bucket minio-setup makes and its policy covers is the store's.
    setup = MINIO_SETUP.read_text(encoding="utf-8")
    assert "mc mb --ignore-existing local/mirror\n" in setup
    assert "mc anonymous set download local/mirror\n" in setup
    policy = json.loads(MINIO_POLICY.read_text(encoding="utf-8"))
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert {"arn:aws:s3:::mirror", "arn:aws:s3:::mirror/*"} == resources
    # An object's public URL is a path nginx's bucket location sends on (and only those).
    text = CLUSTER_NGINX.read_text(encoding="utf-8")
    [pcre] = re.findall(r'location ~ "([^"]+)"', text)
    pattern = pcre.replace("(?<", "(?P<")  # PCRE's named group, Python's spelling
    path = config.base_url.removeprefix("http://localhost:8080")
    assert re.fullmatch(pattern, f"{path}{SHA[:2]}/{SHA}.png")
    assert not re.fullmatch(pattern, f"{path}{SHA[:2]}/.{SHA}.png.0123abcd.tmp")
    assert not re.fullmatch(pattern, f"{path}cd/{SHA}.png"), "the shard is the sha's start"
    assert not re.fullmatch(pattern, path)


def test_cluster_commits_no_secret() -> None:
    """Secrets come from an ignored .env by required interpolation; the example holds no value."""
    text = CLUSTER.read_text(encoding="utf-8")
    for name in SECRETS:
        uses = re.findall(rf"\$\{{{name}(:?[^}}]*)\}}", text)
        assert uses, name
        assert all(use.startswith(":?") for use in uses), (name, uses)
    example = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    assert dict.fromkeys(SECRETS, "") == example
    config_text = CLUSTER_TOML.read_text(encoding="utf-8")
    assert not re.search(r"(?im)^\s*\w*(password|secret|access_key)\w*\s*=", config_text)
    if shutil.which("git") is not None and (REPO / ".git").exists():
        ignored = subprocess.run(
            ["git", "-C", str(REPO), "check-ignore", "-q", ".env"], check=False, timeout=30
        )
        assert 0 == ignored.returncode, ".env must be ignored by git"


def test_docker_compose_validates_the_cluster(tmp_path: Path) -> None:
    """docker-compose config passes with every secret set, and names a secret left empty."""
    env, values = _filled_env(tmp_path)
    result = _cluster_compose("--env-file", str(env), "config")
    assert 0 == result.returncode, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for secret, value in values.items():
        seen_by = {
            name for name, s in services.items() if value in s.get("environment", {}).values()
        }
        assert SEES[secret] == seen_by, secret
    for name in MIRROR_SERVICES:
        assert {
            "PGPASSWORD": values["POSTGRES_PASSWORD"],
            "AWS_ACCESS_KEY_ID": values["MIRROR_S3_ACCESS_KEY"],
            "AWS_SECRET_ACCESS_KEY": values["MIRROR_S3_SECRET_KEY"],
        }.items() <= services[name]["environment"].items(), name
    assert str(REPO / "source" / "_posts") == _mount(services["job"], "/posts")["source"]

    unfilled = _cluster_compose("--env-file", str(ENV_EXAMPLE), "config", "-q")
    assert 0 != unfilled.returncode
    assert "in .env (see .env.example)" in unfilled.stderr


def test_job_script_runs_the_three_commands() -> None:
    """The job queues, waits on `mirror status --json`, then rewrites, in lines the parser takes."""
    assert 0 == subprocess.run(["sh", "-n", str(JOB_SCRIPT)], check=False, timeout=30).returncode
    assert 0 == subprocess.run(["sh", "-n", str(MINIO_SETUP)], check=False, timeout=30).returncode
    text = JOB_SCRIPT.read_text(encoding="utf-8")
    lines = re.findall(r"^\s*(?:exec |status=\$\()?(mirror [^)\n]*)\)?$", text, re.MULTILINE)
    values = {'"$config"': CONFIG, '"$posts"': "/posts"}
    commands = [[values.get(w, w) for w in line.split()][1:] for line in lines]
    assert [
        ["enqueue", "--config", CONFIG, "/posts"],
        ["status", "--json", "--config", CONFIG],
        ["rewrite", "--config", CONFIG, "/posts"],
    ] == commands
    for command in commands:
        build_parser().parse_args(command)


def _left(status_json: str) -> str:
    """What the job script's own one-liner makes of a `mirror status --json` answer."""
    [code] = re.findall(r"^left_code='(.*)'$", JOB_SCRIPT.read_text(encoding="utf-8"), re.M)
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=status_json,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


def test_job_script_counts_what_is_left() -> None:
    """Queued plus running over all hosts, from mirror's own status JSON; no queue: none left."""
    hosts = (HostCounts("a.example", 3, 2, 7, 1), HostCounts("b.example", 0, 1, 4, 0))
    assert "6" == _left(json.dumps(QueueStatus(hosts, ()).to_json()))
    done = (HostCounts("a.example", 0, 0, 7, 1),)
    assert "0" == _left(json.dumps(QueueStatus(done, ()).to_json()))
    # What `mirror status --json` prints for a database without a queue (mirror/cli/queue.py).
    assert "0" == _left(json.dumps({"hosts": [], "workers": [], "queue": False}))


# --- deploy/cluster-nginx.conf ------------------------------------------------------------------


def _cluster_server(prefix: Path, replacements: dict[str, str]) -> Path:
    """A copy of deploy/cluster-nginx.conf with each key (which must be there) replaced."""
    text = CLUSTER_NGINX.read_text(encoding="utf-8")
    replacements = {
        "/var/log/nginx/access.log": str(prefix / "logs" / "access.log"),
        **replacements,
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/cluster-nginx.conf no longer has {old!r}; update the test"
        text = text.replace(old, new)
    prefix.mkdir(parents=True, exist_ok=True)
    copy = prefix / "server.conf"
    copy.write_text(text, encoding="utf-8")
    return copy


def test_cluster_nginx_accepts_the_config(tmp_path: Path) -> None:
    """`nginx -t` on the cluster's server file, its two upstream names given loopback addresses."""
    nginx = _nginx()
    # An upstream block's names are resolved by nginx -t itself, and no serve-1 exists here; the
    # bucket is named through a variable (resolved per request), so `minio` stays as shipped.
    server = _cluster_server(
        tmp_path, {"serve-1:8080": "127.0.0.1:1", "serve-2:8080": "127.0.0.1:2"}
    )
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
    text = CLUSTER_NGINX.read_text(encoding="utf-8")
    upstream = text[text.index("upstream mirror_serve {") : text.index("}", text.index("upstream"))]
    assert ["serve-1:8080", "serve-2:8080"] == re.findall(r"server (\S+)", upstream)
    assert "set $mirror_bucket http://minio:9000;" in text


class _Backend(http.server.ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 that records each request line and answers with its name."""

    daemon_threads = True

    def __init__(self, name: str, headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.extra = headers or {}
        self.seen: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Backend
    # One request per connection: once stopped, a backend is gone (nginx keeps none alive to it).
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.server.seen.append((self.command, self.path))
        body = f"{self.server.name} {self.path}".encode()
        self.send_response(200)
        for key, value in {"Content-Type": "text/plain", **self.server.extra}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _get(port: int, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, target, body=b"" if method == "PUT" else None)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@contextlib.contextmanager
def _backends() -> Iterator[tuple[_Backend, _Backend, _Backend]]:
    bucket_headers = {"Server": "MinIO", "X-Amz-Request-Id": "17E2", "Cache-Control": "no-cache"}
    made: list[_Backend] = []
    try:
        for name, headers in (("serve-1", None), ("serve-2", None), ("bucket", bucket_headers)):
            made.append(_Backend(name, headers))
        yield made[0], made[1], made[2]
    finally:
        for backend in made:
            with contextlib.suppress(OSError):
                backend.stop()


def test_cluster_nginx_routes_between_the_nodes_and_the_bucket(tmp_path: Path) -> None:
    """
    On loopback: /?<url> goes to both nodes as sent, and to the other when one is down; object
    paths go to the bucket with mirror's headers and none of MinIO's; nothing else is exposed.
    """
    nginx = _nginx()
    port = _free_port()
    with _backends() as (one, two, bucket):
        server = _cluster_server(
            tmp_path / "nginx",
            {
                "listen 80;": f"listen 127.0.0.1:{port};",
                "serve-1:8080": f"127.0.0.1:{one.port}",
                "serve-2:8080": f"127.0.0.1:{two.port}",
                "http://minio:9000": f"http://127.0.0.1:{bucket.port}",
            },
        )
        prefix = tmp_path / "nginx"
        conf = _wrapper(prefix, server, daemon=False)
        errors = str(prefix / "logs" / "error.log")
        with started([nginx, "-p", str(prefix), "-e", errors, "-c", str(conf)], tmp_path) as proc:
            _wait_listening(port, proc)
            _check_routes(port, one, two, bucket)


def _wait_listening(port: int, proc: Started) -> None:
    # Bounded: nginx either binds within these attempts or has exited, saying why.
    for _ in range(600):
        assert proc.process.poll() is None, "".join(proc.lines)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nginx never listened: {''.join(proc.lines)}")


def _check_routes(port: int, one: _Backend, two: _Backend, bucket: _Backend) -> None:
    source = "/?http://origin.example/img.png?x=1&y=%2F"
    for _ in range(4):
        status, _, body = _get(port, source)
        assert 200 == status
        assert body.decode().endswith(f" {source}"), body
    # Round robin over the two, each given the request target byte for byte.
    assert [("GET", source)] * 2 == one.seen
    assert [("GET", source)] * 2 == two.seen

    two.stop()
    answered = {_get(port, source)[2].decode().split()[0] for _ in range(4)}
    assert {"serve-1"} == answered, "a node down: the other answers every request"

    path = f"/mirror/blog/{SHA[:2]}/{SHA}.png"
    status, headers, body = _get(port, path)
    assert (200, f"bucket {path}".encode()) == (status, body)
    assert {**SAFE_HEADERS, "Cache-Control": IMMUTABLE}.items() <= headers.items()
    assert "X-Amz-Request-Id" not in headers
    assert "MinIO" != headers.get("Server")
    assert 403 == _get(port, path, method="PUT")[0]
    before = len(bucket.seen)
    for hidden in ("/mirror/", "/mirror/blog/", f"/mirror/blog/{SHA[:2]}/.{SHA}.png.1.tmp"):
        assert 404 == _get(port, hidden)[0], hidden
    assert before == len(bucket.seen), "no listing or other key reaches the bucket"
    for admin in ("/metrics", "/", "/?"):
        assert 403 == _get(port, admin)[0], admin
    assert [("GET", path)] == bucket.seen


# --- deploy/cluster-job.sh over a real PostgreSQL -----------------------------------------------


async def _read_until(stream: asyncio.StreamReader, text: str, seen: list[str]) -> None:
    """Read ``stream``'s lines into ``seen`` until one holds ``text`` (bounded by its end)."""
    while line := (await stream.readline()).decode():
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"never {text!r}: {''.join(seen)}")


async def _run_job(tmp_path: Path, pg_url: str, upstream: Any) -> tuple[int, str, Path]:
    """
    Run deploy/cluster-job.sh as the job container would, with a PostgreSQL manifest and no
    worker until it says it waits; then start one `mirror worker`. Return (status, stderr, post).
    """
    config_path = write_config(tmp_path, pg_url, upstream)
    posts = write_posts(tmp_path / "posts", [upstream.url("/img.png")])
    # The image's `mirror` on PATH: this checkout's, run by this interpreter.
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "mirror").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mirror "$@"\n')
    (folder / "mirror").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "MIRROR_CONFIG": str(config_path),
        "MIRROR_POSTS": str(posts),
        "JOB_POLL_SECONDS": "1",
        "JOB_WAIT_SECONDS": "120",
    }
    job = await asyncio.create_subprocess_exec(
        "sh", str(JOB_SCRIPT), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    worker = None
    seen: list[str] = []
    try:
        assert job.stderr is not None
        await _read_until(job.stderr, "1 sources queued or running", seen)
        worker = mirror("worker", "--config", str(config_path), "--concurrency", "2")
        seen.append((await job.stderr.read()).decode())
        status = await job.wait()
    finally:
        if job.returncode is None:
            job.kill()
            await job.wait()
        if worker is not None:
            worker.terminate()
            worker.communicate(timeout=30)
    return status, "".join(seen), posts / "a.md"


async def test_job_script_waits_for_the_workers(pg_url: str, tmp_path: Path, upstream: Any) -> None:
    """The job queues the post's source, waits while it is queued, goes on once a worker did it."""
    _, stderr, _ = await _run_job(tmp_path, pg_url, upstream)
    assert "mirror: queued 1 of 1 sources" in stderr
    assert {upstream.url("/img.png"): ("mirrored", None)} == rows(pg_url)
    assert 1 == upstream.hits["/img.png"]
    # It went on to the rewrite only after the wait: the last line is mirror's, not the wait's.
    lines = stderr.rstrip().splitlines()
    assert "mirror-job: 1 sources queued or running" in lines
    assert lines[-1].startswith("mirror: ")


async def test_job_script_rewrites_from_postgresql(
    pg_url: str, tmp_path: Path, upstream: Any
) -> None:
    """The whole job over PostgreSQL: the post ends up pointing at the stored copy."""
    status, stderr, post = await _run_job(tmp_path, pg_url, upstream)
    assert 0 == status, stderr
    assert upstream.url("/img.png") not in post.read_text(encoding="utf-8")
