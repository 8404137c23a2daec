"""Storage in a Google Cloud Storage bucket (google-cloud-storage, imported when first used).

``get`` reads the object's metadata, then downloads exactly that generation
(``if_generation_match``), so the bytes, etag and generation always describe one version even
when the object is overwritten in between. The default client follows the library's own
environment: Application Default Credentials, or ``STORAGE_EMULATOR_HOST`` for an emulator.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from core.errors import ObjectNotFound, StorageError, StorageUnavailable
from core.storage.base import ObjectInfo, StoredObject

__all__ = ["GcsStorage"]


@functools.cache
def _default_client() -> Any:
    # not ``from google.cloud import storage``: mypy cannot see an untyped submodule of a
    # namespace package as an attribute of it
    import google.cloud.storage as storage

    return storage.Client()


@contextmanager
def _mapped(where: str) -> Iterator[None]:
    """google-api-core and transport exceptions -> the storage error tree."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import TransportError

    try:
        yield
    except gexc.NotFound as e:
        raise ObjectNotFound(f"{where}: not found") from e
    except (gexc.TooManyRequests, gexc.ServerError, gexc.PreconditionFailed) as e:
        # 412: the object changed between metadata and download; a retry reads the new one
        raise StorageUnavailable(f"{where}: {e}") from e
    except gexc.GoogleAPICallError as e:
        raise StorageError(f"{where}: {e}") from e
    except (requests.ConnectionError, requests.Timeout, TransportError) as e:
        raise StorageUnavailable(f"{where}: {type(e).__name__}: {e}") from e


class GcsStorage:
    """The objects of one Cloud Storage bucket."""

    def __init__(self, bucket: str, client: Any | None = None) -> None:
        self._bucket = (client if client is not None else _default_client()).bucket(bucket)

    @property
    def name(self) -> str:
        return f"gs://{self._bucket.name}"

    async def get(self, key: str) -> StoredObject:
        return await asyncio.to_thread(self._get, key)

    def _get(self, key: str) -> StoredObject:
        with _mapped(f"{self.name}/{key}"):
            blob = self._bucket.get_blob(key)
            if blob is None:
                raise ObjectNotFound(f"{self.name}/{key}: not found")
            # read the properties first: a download refreshes them from its response headers
            etag, generation, metadata = blob.etag, blob.generation, dict(blob.metadata or {})
            data = blob.download_as_bytes(if_generation_match=generation)
        return StoredObject(key, data, etag, str(generation), metadata)

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        def put() -> None:
            blob = self._bucket.blob(key)
            blob.metadata = dict(metadata or {})
            with _mapped(f"{self.name}/{key}"):
                blob.upload_from_string(data, content_type=content_type)

        await asyncio.to_thread(put)

    async def exists(self, key: str) -> bool:
        def exists() -> bool:
            with _mapped(f"{self.name}/{key}"):
                return bool(self._bucket.blob(key).exists())

        return await asyncio.to_thread(exists)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        def listing() -> list[ObjectInfo]:
            with _mapped(f"{self.name}/{prefix}"):
                blobs = self._bucket.client.list_blobs(self._bucket, prefix=prefix)
                out = [ObjectInfo(b.name, str(b.generation), int(b.size or 0)) for b in blobs]
            return sorted(out, key=lambda o: o.key)

        return await asyncio.to_thread(listing)
