"""
The S3-compatible backend (AWS S3, Cloudflare R2, MinIO, Aliyun OSS, Tencent COS...).

Keys are ``<prefix>/<ab>/<sha256>.<ext>``; each object carries the ``Content-Type`` of its
verified format, ``Cache-Control: public, max-age=31536000, immutable``, its sha256 as the
``x-amz-meta-sha256`` metadata and, where the server takes it, as its S3 SHA-256 checksum (so
the server itself refuses a body that does not match). Bodies are staged in a local folder and
uploaded from there, in parts above ``store.s3.multipart_threshold``, so no body is ever held
whole in memory; only one part is.

Crash safety: S3 shows an object only once its PUT or its CompleteMultipartUpload succeeded,
and :meth:`S3Store.commit` returns only then, so a caller that writes its manifest row after
``commit`` never has a row without an object. A killed upload leaves an incomplete multipart
upload (invisible, but billed) and a staged file; :meth:`S3Store.cleanup` aborts the one and
removes the other.

Credentials come from botocore's chain only, never from config.toml: the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), the profile
(``store.s3.profile``, else ``AWS_PROFILE``) in ``AWS_SHARED_CREDENTIALS_FILE`` /
``AWS_CONFIG_FILE`` (default ``~/.aws/``), web identity (``AWS_ROLE_ARN``,
``AWS_WEB_IDENTITY_TOKEN_FILE``), container and instance roles.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any, Self, cast

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError

from mirror.atomic import describe_os_error, write_all
from mirror.config import S3Config
from mirror.errors import StoreError
from mirror.models import StoredObject
from mirror.store.base import CACHE_CONTROL, ObjectInfo, Staged, object_name, parse_name
from mirror.store.staging import Staging

log = logging.getLogger("mirror.store")

CHUNK = 256 * 1024
# What servers without S3's checksums answer when asked for one; such a request is sent again
# without it (and none is sent for the rest of the session).
_CHECKSUM_REFUSALS = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest"})
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class ByteBudget:
    """
    At most ``limit`` bytes held at once by :meth:`hold`; one body larger than that still goes,
    alone. Waiters are served in arrival order, so a large part is not starved by small ones.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._turn = asyncio.Condition()
        self._queue: list[object] = []

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes of the budget while the body is in memory."""
        ticket = object()
        async with self._turn:
            self._queue.append(ticket)
            try:
                await self._turn.wait_for(
                    lambda: (
                        self._queue[0] is ticket
                        and (self.held == 0 or self.held + size <= self.limit)
                    )
                )
            finally:
                self._queue.remove(ticket)
                self._turn.notify_all()
            self.held += size
        try:
            yield
        finally:
            async with self._turn:
                self.held -= size
                self._turn.notify_all()


class S3Store:
    """
    Objects in ``bucket`` under ``prefix``, staged in the local folder ``staging``.

    Enter it (``async with``) to open its client; :attr:`client` is the aiobotocore client,
    whose event system tests hook into.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        config: S3Config,
        staging: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.config = config
        self.description = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # Staged bodies are the public's images, but the folder sits in a shared temp dir.
        self._staging = Staging(staging, mode=0o700, file_mode=0o600, private=True, clock=clock)
        self._clock = clock
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self.checksums = True
        # Body bytes in memory at once across every upload of this store: one part. botocore
        # holds about three copies of each body while signing and sending; with two 8 MiB parts
        # in flight a run over 60 MB images peaked at 123 MB, with one at 99 MB (63 MB is the
        # client alone). Small objects still go several at once.
        self._budget = ByteBudget(config.part_size)

    @property
    def client(self) -> Any:
        """Return the open aiobotocore S3 client."""
        if self._client is None:
            raise StoreError(f"{self.description}: the store is not open (use async with)")
        return self._client

    async def __aenter__(self) -> Self:
        """
        Open the S3 client.

        Raises:
            StoreError: the profile is unknown or the client cannot be built.
        """
        config = AioConfig(
            region_name=self.config.region or None,
            s3={"addressing_style": self.config.addressing},
            retries={"mode": "standard"},
            # botocore's default CRC32 trailers are refused by several S3-compatible servers;
            # mirror sends its own SHA-256 checksum instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = AsyncExitStack()
        try:
            session = AioSession(profile=self.config.profile or None)
            creator = session.create_client(
                "s3", endpoint_url=self.config.endpoint_url or None, config=config
            )
            self._client = await stack.enter_async_context(creator)
        except (BotoCoreError, ValueError) as exc:
            await stack.aclose()
            raise StoreError(f"{self.description}: cannot open the S3 client: {exc}") from exc
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def key(self, sha256: str, ext: str) -> str:
        """Return ``<prefix>/<ab>/<sha256>.<ext>`` (``<ab>/...`` with no prefix)."""
        name = object_name(sha256, ext)
        return f"{self.prefix}/{name}" if self.prefix else name

    def public_url(self, sha256: str, ext: str) -> str | None:
        """Return ``store.s3.public_url`` + key, or None when no public URL is configured."""
        key = self.key(sha256, ext)
        return self.config.public_url + key if self.config.public_url else None

    def local_file(self, sha256: str, ext: str) -> Path | None:
        """Return None: a bucket's objects are not on this disk."""
        object_name(sha256, ext)
        return None

    def staging(self) -> AbstractAsyncContextManager[Staged]:
        """Return a context giving a staged file in the staging folder, removed on exit."""
        return self._staging.open()

    async def _call(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except ClientError as exc:
            error = exc.response.get("Error", {})
            detail = f"{error.get('Code', '?')}: {error.get('Message', exc)}"
            raise StoreError(f"{self.description}: {what}: {detail}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"{self.description}: {what}: {exc}") from exc

    async def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return cast(
                "dict[str, Any]", await self.client.head_object(Bucket=self.bucket, Key=key)
            )
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise StoreError(f"{self.description}: HEAD {key}: {_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"{self.description}: HEAD {key}: {exc}") from exc

    async def commit(self, staged: Staged, sha256: str, ext: str, mime: str) -> StoredObject:
        """
        Upload the staged body, unless the object is there with the same size and sha256.

        Raises:
            StoreError: the upload failed; nothing is visible under the key (a multipart
                upload is aborted).
        """
        key = self.key(sha256, ext)
        try:
            staged.file.flush()
            size = os.fstat(staged.file.fileno()).st_size
        except OSError as exc:
            raise StoreError(describe_os_error(exc, staged.path)) from exc
        stored = StoredObject(sha256, ext, size, key)
        try:
            head = await self._head(key)
        except StoreError:
            head = None  # a write-only key may not HEAD; uploading again is harmless
        if (
            head is not None
            and head.get("ContentLength") == size
            and head.get("Metadata", {}).get("sha256") == sha256
        ):
            return stored
        fd = staged.file.fileno()
        extra: dict[str, Any] = {
            "ContentType": mime,
            "CacheControl": CACHE_CONTROL,
            "Metadata": {"sha256": sha256},
        }
        if self.config.acl:
            extra["ACL"] = self.config.acl
        if size > self.config.multipart_threshold:
            await self._multipart(key, fd, size, extra)
        else:
            async with self._budget.hold(size):
                body = await asyncio.to_thread(os.pread, fd, size, 0) if size else b""
                await self._put(key, body, bytes.fromhex(sha256), extra)
        # Not marked committed: the staged copy is not the object here, so staging removes it.
        return stored

    async def _put(self, key: str, body: bytes, digest: bytes, extra: dict[str, Any]) -> None:
        args = {"Bucket": self.bucket, "Key": key, "Body": body, **extra}
        if self.checksums:
            try:
                await self.client.put_object(
                    **args, ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(digest)
                )
                return
            except ClientError as exc:
                if _code(exc) not in _CHECKSUM_REFUSALS:
                    raise StoreError(f"{self.description}: PUT {key}: {_code(exc)}") from exc
                self._refused(exc)
            except BotoCoreError as exc:
                raise StoreError(f"{self.description}: PUT {key}: {exc}") from exc
        await self._call(f"PUT {key}", self.client.put_object(**args))

    def _refused(self, exc: ClientError) -> None:
        self.checksums = False
        log.info(
            "the server refused S3 checksums (%s); sending without them store=%s",
            _code(exc),
            self.description,
        )

    async def _multipart(self, key: str, fd: int, size: int, extra: dict[str, Any]) -> None:
        client, part_size = self.client, self.config.part_size
        base = {"Bucket": self.bucket, "Key": key}
        checksums = self.checksums
        try:
            created = await client.create_multipart_upload(
                **base, **extra, **({"ChecksumAlgorithm": "SHA256"} if checksums else {})
            )
        except ClientError as exc:
            if not checksums or _code(exc) not in _CHECKSUM_REFUSALS:
                raise StoreError(f"{self.description}: multipart {key}: {_code(exc)}") from exc
            self._refused(exc)
            checksums = False
            created = await self._call(
                f"multipart {key}", client.create_multipart_upload(**base, **extra)
            )
        except BotoCoreError as exc:
            raise StoreError(f"{self.description}: multipart {key}: {exc}") from exc
        upload = {**base, "UploadId": created["UploadId"]}
        try:
            parts = []
            for number, offset in enumerate(range(0, size, part_size), start=1):
                # One part in memory at a time; reading 8 MB is worth a thread hop.
                async with self._budget.hold(min(part_size, size - offset)):
                    body = await asyncio.to_thread(os.pread, fd, part_size, offset)
                    part: dict[str, Any] = {"PartNumber": number}
                    if checksums:
                        part["ChecksumSHA256"] = _b64(await asyncio.to_thread(_sha256, body))
                    sent = await self._call(
                        f"part {number} of {key}",
                        client.upload_part(
                            **upload,
                            Body=body,
                            **part,
                            **({"ChecksumAlgorithm": "SHA256"} if checksums else {}),
                        ),
                    )
                    del body
                parts.append({**part, "ETag": sent["ETag"]})
            await self._call(
                f"complete {key}",
                client.complete_multipart_upload(**upload, MultipartUpload={"Parts": parts}),
            )
        except BaseException:
            # Shielded so a cancelled commit still releases the parts it left on the server.
            with contextlib.suppress(Exception):
                await asyncio.shield(client.abort_multipart_upload(**upload))
            raise

    async def put(self, data: bytes, sha256: str, ext: str, mime: str) -> StoredObject:
        """
        Store ``data`` through staging, unless the object is there already.

        Raises:
            StoreError: staging or the upload failed.
        """
        async with self.staging() as staged:
            try:
                write_all(staged.file.fileno(), data)
            except OSError as exc:
                raise StoreError(describe_os_error(exc, staged.path)) from exc
            return await self.commit(staged, sha256, ext, mime)

    async def stat(self, sha256: str, ext: str) -> ObjectInfo | None:
        """
        Return the object's size and Last-Modified from a HEAD, or None when it is not there.

        Raises:
            StoreError: the server refused or could not be reached.
        """
        head = await self._head(self.key(sha256, ext))
        if head is None:
            return None
        return ObjectInfo(sha256, ext, int(head["ContentLength"]), head["LastModified"].timestamp())

    async def _get(self, key: str, start: int, length: int | None) -> Any:
        if start < 0 or (length is not None and length < 0):
            raise ValueError(f"a byte range starts and runs at 0 or more, not {start}, {length}")
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if length is not None:
            args["Range"] = f"bytes={start}-{start + length - 1}"
        elif start:
            args["Range"] = f"bytes={start}-"
        try:
            return await self.client.get_object(**args)
        except ClientError as exc:
            if _code(exc) == "InvalidRange":
                return None
            if _code(exc) in _MISSING:
                raise StoreError(f"cannot read {self.description}/{key}: no such object") from exc
            raise StoreError(f"{self.description}: GET {key}: {_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"{self.description}: GET {key}: {exc}") from exc

    async def read(self, sha256: str, ext: str, start: int = 0, length: int | None = None) -> bytes:
        """
        Return ``length`` bytes (all, when None) from ``start``; past the end gives b"".

        Raises:
            StoreError: the object is missing or the server failed.
        """
        return b"".join([chunk async for chunk in self.stream(sha256, ext, start, length)])

    async def stream(
        self, sha256: str, ext: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """
        Yield the bytes :meth:`read` returns, from one ranged GET, as they arrive.

        Raises:
            StoreError: the object is missing or the server failed.
        """
        key = self.key(sha256, ext)
        if length == 0:
            # S3 has no empty range; a HEAD still tells a missing object from an empty read.
            if await self._head(key) is None:
                raise StoreError(f"cannot read {self.description}/{key}: no such object")
            return
        response = await self._get(key, start, length)
        if response is None:
            return
        try:
            async with response["Body"] as body:
                async for chunk in body.iter_chunks(CHUNK):
                    yield chunk
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise StoreError(f"{self.description}: GET {key}: {exc}") from exc

    async def delete(self, sha256: str, ext: str) -> bool:
        """
        Delete the object; tell whether it was there (S3's DELETE does not say, so HEAD first).

        Raises:
            StoreError: the server refused or failed.
        """
        key = self.key(sha256, ext)
        if await self._head(key) is None:
            return False
        await self._call(f"DELETE {key}", self.client.delete_object(Bucket=self.bucket, Key=key))
        return True

    def _list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _parse(self, key: str) -> tuple[str, str] | None:
        shard, _, name = key.removeprefix(self._list_prefix()).partition("/")
        return parse_name(shard, name) if key.startswith(self._list_prefix()) else None

    async def objects(self) -> AsyncIterator[ObjectInfo]:
        """
        Yield every object under the prefix in key order (ListObjectsV2, page by page).

        Raises:
            StoreError: the listing failed.
        """
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._list_prefix()
        )
        try:
            async for page in pages:
                for item in page.get("Contents", ()):
                    parsed = self._parse(item["Key"])
                    if parsed is not None:
                        modified = item["LastModified"].timestamp()
                        yield ObjectInfo(*parsed, int(item["Size"]), modified)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"{self.description}: cannot list: {exc}") from exc

    async def cleanup(self, *, older_than: float) -> int:
        """
        Remove stale staged files; abort multipart uploads of object keys begun before
        ``now - older_than``. Uploads under other keys are not mirror's and stay.

        Returns:
            How many files were removed and uploads aborted.

        Raises:
            StoreError: the listing or an abort failed.
        """
        removed = await asyncio.to_thread(self._staging.sweep, older_than)
        cutoff = self._clock() - older_than
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._list_prefix()
        )
        stale = []
        try:
            async for page in pages:
                for upload in page.get("Uploads", ()):
                    ours = self._parse(upload["Key"]) is not None
                    if ours and upload["Initiated"].timestamp() <= cutoff:
                        stale.append((upload["Key"], upload["UploadId"]))
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"{self.description}: cannot list uploads: {exc}") from exc
        for key, upload_id in stale:
            call = self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
            await self._call(f"abort {key}", call)
            log.info("aborted an interrupted upload key=%s store=%s", key, self.description)
        return removed + len(stale)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
