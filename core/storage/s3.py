"""Storage in an S3 bucket through boto3 (imported when a store is created, not before).

A boto3 client is thread-safe and slow to build (~100 ms of endpoint and credential resolution),
so every ``S3Storage`` without an injected client shares one per process.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from core.errors import ObjectNotFound, StorageError, StorageUnavailable
from core.storage.base import ObjectInfo, StoredObject

__all__ = ["S3Storage"]

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})


@functools.cache
def _default_client() -> Any:
    import boto3

    return boto3.client("s3")


@contextmanager
def _mapped(where: str) -> Iterator[None]:
    """botocore's exceptions -> ObjectNotFound / StorageUnavailable / StorageError."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND:
            raise ObjectNotFound(f"{where}: not found") from e
        if code in _THROTTLED or status >= 500:
            raise StorageUnavailable(f"{where}: {code or status}: {e}") from e
        raise StorageError(f"{where}: {code or status}: {e}") from e
    except BotoCoreError as e:  # endpoint unreachable, connection closed, read timeout
        raise StorageUnavailable(f"{where}: {type(e).__name__}: {e}") from e


class S3Storage:
    """The objects of one S3 bucket."""

    def __init__(self, bucket: str, client: Any | None = None) -> None:
        self.bucket = bucket
        self._client = client if client is not None else _default_client()

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}"

    async def get(self, key: str) -> StoredObject:
        return await asyncio.to_thread(self._get, key)

    def _get(self, key: str) -> StoredObject:
        with _mapped(f"s3://{self.bucket}/{key}"):
            reply = self._client.get_object(Bucket=self.bucket, Key=key)
            data = reply["Body"].read()
        version = reply.get("VersionId")
        return StoredObject(
            key,
            data,
            etag=reply["ETag"].strip('"'),
            # an unversioned bucket answers the literal "null"
            version_id=version if version and version != "null" else None,
            metadata=reply.get("Metadata") or {},
        )

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        def put() -> None:
            with _mapped(f"s3://{self.bucket}/{key}"):
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    Metadata=dict(metadata or {}),
                    ContentType=content_type,
                )

        await asyncio.to_thread(put)

    async def exists(self, key: str) -> bool:
        def head() -> bool:
            try:
                with _mapped(f"s3://{self.bucket}/{key}"):
                    self._client.head_object(Bucket=self.bucket, Key=key)
            except ObjectNotFound:
                return False
            return True

        return await asyncio.to_thread(head)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        def listing() -> list[ObjectInfo]:
            out = []
            with _mapped(f"s3://{self.bucket}/{prefix}"):
                pages = self._client.get_paginator("list_objects_v2")
                for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                    out += [
                        ObjectInfo(o["Key"], o["ETag"].strip('"'), int(o["Size"]))
                        for o in page.get("Contents", ())
                    ]
            return sorted(out, key=lambda o: o.key)

        return await asyncio.to_thread(listing)
