"""Object storage for event-triggered jobs: one interface, one module per store.

``core.storage.local`` (files), ``core.storage.s3`` (boto3), ``core.storage.gcs``
(google-cloud-storage) and ``core.storage.azblob`` (azure-storage-blob). Import the one you need
by its module: each imports its SDK only when a store is created, so ``import core.storage``
needs none of them. Their errors (``ObjectNotFound``, ``StorageError``, ``StorageUnavailable``)
are in ``core.errors``.
"""

from core.storage.base import Storage, StoredObject

__all__ = ["Storage", "StoredObject"]
