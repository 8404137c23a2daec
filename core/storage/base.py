"""The one small storage interface the event-job runner needs, and its errors.

Three calls — ``get``, ``put``, ``exists`` — over a flat namespace of keys in one bucket or
container, and ``list_objects`` where a model repository is read (``Listing``). Implementations
(local files, S3, GCS, Azure Blob) wrap their SDK's blocking client in ``asyncio.to_thread`` so
the job runner stays async, and map their SDK's exceptions into the tree below at that one
boundary: a missing object is permanent, throttling and outages are retryable.

Where these errors sit in ``core.errors``' tree::

    GpufanError
    ├── ClientError ── NotFound ── ObjectNotFound     the key does not exist (404)
    ├── StorageError                                  permanent: denied, bad bucket, bad key
    └── RetryableError ── StorageUnavailable          throttled, 5xx, connection lost
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Listing", "ObjectInfo", "Storage", "StoredObject"]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object's bytes and what identifies this content of it.

    ``etag`` changes whenever the content does; ``version_id`` is the store's own version
    (S3 version id, GCS generation, Azure version id) when it keeps versions.
    """

    key: str
    data: bytes
    etag: str
    version_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """The store's version id where there is one, else the etag."""
        return self.version_id or self.etag


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key, what identifies its content now, and its size."""

    key: str
    version: str  # the S3/Azure etag, the GCS generation: changes whenever the content does
    size: int


class Storage(Protocol):
    """A bucket or container, seen through three calls."""

    @property
    def name(self) -> str:
        """Where the objects live, for messages (``s3://bucket``, ``gs://bucket``, a path)."""
        ...

    async def get(self, key: str) -> StoredObject:
        """The object's bytes, etag, version and user metadata; ObjectNotFound if it is absent."""
        ...

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Create or overwrite ``key``."""
        ...

    async def exists(self, key: str) -> bool: ...


class Listing(Storage, Protocol):
    """A store whose keys can be listed (a model repository is a tree of objects)."""

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...
