"""Storage in a local directory: for ``gpufan`` without a cloud, and for tests.

Keys are relative paths under ``root``. Writes go to a temporary file that is renamed into place,
so a reader never sees half an object. User metadata lives in a sidecar tree (``root/.meta``)
that keys cannot reach, and the etag is the content's MD5, as S3 computes it for simple uploads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from core.errors import BadRequest, ObjectNotFound
from core.storage.base import StoredObject

__all__ = ["LocalStorage"]

_META_DIR = ".meta"


class LocalStorage:
    """Objects as files under ``root`` (created if missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def name(self) -> str:
        return str(self.root)

    def _path(self, key: str, base: Path | None = None) -> Path:
        base = base or self.root
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise BadRequest(f"invalid object key {key!r}")
        if parts[0] == _META_DIR:
            raise BadRequest(f"object keys may not start with {_META_DIR}/: {key!r}")
        return base.joinpath(*parts)

    def _meta_path(self, key: str) -> Path:
        return self._path(key, self.root / _META_DIR).with_name(key.rsplit("/", 1)[-1] + ".json")

    async def get(self, key: str) -> StoredObject:
        return await asyncio.to_thread(self._get, key)

    def _get(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.name}") from None
        try:
            metadata = json.loads(self._meta_path(key).read_text())
        except FileNotFoundError:
            metadata = {}
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return StoredObject(key, data, etag, None, metadata)

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        # content_type has no home on a file system; the key's suffix says what it holds
        await asyncio.to_thread(self._put, key, data, dict(metadata or {}))

    def _put(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        _atomic_write(self._path(key), data)
        meta = self._meta_path(key)
        if metadata:
            _atomic_write(meta, json.dumps(metadata).encode())
        else:
            meta.unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
