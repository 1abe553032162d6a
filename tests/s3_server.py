"""
An S3 endpoint for tests: moto's server on 127.0.0.1, and a proxy in front of it that refuses
S3 checksums the way some S3-compatible servers do.

The server is a subprocess (``python -m moto.server -p 0``) started once per session, read for
the port it bound, and stopped by its pid. Tests reach it only through the S3 API (aiobotocore),
as mirror would reach AWS, R2 or MinIO. Credentials are set per test in the environment, never
in a file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from aiohttp import web

REGION = "us-east-1"
_STARTUP = 60.0  # seconds; a bound on a cold start of a loaded machine, not a wait


@dataclasses.dataclass
class MotoServer:
    """The running moto server: its endpoint and process."""

    endpoint: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's S3 server on 127.0.0.1 at a free port, for the whole session."""
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ready = threading.Event()
    found: list[str] = []

    def drain() -> None:
        # Keeps reading to the end: moto logs every request there, and a full pipe would stall it.
        assert process.stderr is not None
        for line in process.stderr:
            match = re.search(rb"Running on (http://127\.0\.0\.1:\d+)", line)
            if match and not found:
                found.append(match[1].decode())
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        # Werkzeug prints the address only once its socket listens, so the line means ready.
        if not ready.wait(_STARTUP) or not found:
            raise RuntimeError(f"moto server did not start (exit status {process.poll()})")
        yield MotoServer(found[0], process)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        reader.join(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def set_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Give botocore throwaway credentials in the environment and hide every other source."""
    for name in (
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@dataclasses.dataclass
class S3Bucket:
    """A fresh bucket name on an endpoint; the bucket exists once ``create`` ran."""

    endpoint: str
    name: str

    def client(self) -> Any:
        """An aiobotocore S3 client context for the endpoint, for looking behind the store."""
        config = AioConfig(s3={"addressing_style": "path"}, retries={"mode": "standard"})
        return AioSession().create_client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, config=config
        )

    async def create(self) -> None:
        """Create the bucket."""
        async with self.client() as client:
            await client.create_bucket(Bucket=self.name)


@pytest.fixture
def s3_bucket(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Bucket:
    """A per-test bucket name on the moto server, with credentials in the environment."""
    set_credentials(monkeypatch, tmp_path)
    return S3Bucket(moto_server.endpoint, f"mirror-{secrets.token_hex(6)}")


_REFUSAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
    b"<Message>A header you provided implies functionality that is not implemented"
    b"</Message></Error>"
)
_HOP = {"transfer-encoding", "content-encoding", "content-length", "connection", "host"}


@dataclasses.dataclass
class ChecksumlessS3:
    """A proxy to moto that answers 501 NotImplemented to any request carrying a checksum."""

    endpoint: str
    refused: int = 0
    forwarded: int = 0


@pytest.fixture
async def checksumless_s3(
    aiohttp_server: Any, moto_server: MotoServer
) -> AsyncIterator[ChecksumlessS3]:
    """An S3 endpoint without checksums (like some S3-compatible servers), in front of moto."""
    state = ChecksumlessS3("")
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def forward(request: web.Request) -> web.StreamResponse:
            if any(
                h.lower().startswith(("x-amz-checksum-", "x-amz-sdk-checksum"))
                for h in request.headers
            ):
                state.refused += 1
                return web.Response(status=501, body=_REFUSAL, content_type="application/xml")
            state.forwarded += 1
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            async with session.request(
                request.method,
                moto_server.endpoint + request.path_qs,
                headers=headers,
                data=io.BytesIO(await request.read()),  # aiohttp warns on large bytes
            ) as upstream:
                body = await upstream.read()
                back = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
                return web.Response(status=upstream.status, body=body, headers=back)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", forward)
        server = await aiohttp_server(app, host="127.0.0.1")
        state.endpoint = f"http://127.0.0.1:{server.port}"
        yield state
