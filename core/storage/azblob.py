"""Storage in an Azure Blob Storage container (azure-storage-blob, imported when first used).

A download returns the bytes with the properties of the same read (etag, version id, metadata),
so they always describe one version of the blob.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from core.errors import ObjectNotFound, StorageError, StorageUnavailable
from core.storage.base import ObjectInfo, StoredObject

__all__ = ["AzureBlobStorage"]


@contextmanager
def _mapped(where: str) -> Iterator[None]:
    """azure-core exceptions -> the storage error tree."""
    from azure.core.exceptions import (
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        yield
    except ResourceNotFoundError as e:
        raise ObjectNotFound(f"{where}: not found") from e
    except HttpResponseError as e:
        status = e.status_code or 0
        if status == 429 or status >= 500:
            raise StorageUnavailable(f"{where}: {status}: {e.reason}") from e
        raise StorageError(f"{where}: {status}: {e.reason}") from e
    except (ServiceRequestError, ServiceResponseError) as e:  # connect / read failures
        raise StorageUnavailable(f"{where}: {type(e).__name__}: {e}") from e


class AzureBlobStorage:
    """The blobs of one container, through an ``azure.storage.blob.ContainerClient``."""

    def __init__(self, container: Any) -> None:
        self._container = container

    @classmethod
    def from_connection_string(cls, connection_string: str, container: str) -> AzureBlobStorage:
        """The container named ``container`` in the account the connection string points at."""
        from azure.storage.blob import ContainerClient

        return cls(ContainerClient.from_connection_string(connection_string, container))

    @property
    def name(self) -> str:
        url: str = self._container.url
        return url

    async def get(self, key: str) -> StoredObject:
        return await asyncio.to_thread(self._get, key)

    def _get(self, key: str) -> StoredObject:
        with _mapped(f"{self.name}/{key}"):
            downloader = self._container.download_blob(key)
            data = downloader.readall()
        props = downloader.properties
        return StoredObject(
            key,
            data,
            etag=props.etag.strip('"'),
            version_id=props.get("version_id"),
            metadata=dict(props.metadata or {}),
        )

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        from azure.storage.blob import ContentSettings

        def put() -> None:
            with _mapped(f"{self.name}/{key}"):
                self._container.upload_blob(
                    key,
                    data,
                    overwrite=True,
                    metadata=dict(metadata or {}),
                    content_settings=ContentSettings(content_type=content_type),
                )

        await asyncio.to_thread(put)

    async def exists(self, key: str) -> bool:
        def exists() -> bool:
            with _mapped(f"{self.name}/{key}"):
                return bool(self._container.get_blob_client(key).exists())

        return await asyncio.to_thread(exists)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        def listing() -> list[ObjectInfo]:
            with _mapped(f"{self.name}/{prefix}"):
                blobs = self._container.list_blobs(name_starts_with=prefix or None)
                out = [ObjectInfo(b.name, b.etag.strip('"'), int(b.size or 0)) for b in blobs]
            return sorted(out, key=lambda o: o.key)

        return await asyncio.to_thread(listing)
