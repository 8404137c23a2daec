"""Where a worker's model repository comes from: a local directory, or an object-store prefix.

``--model-repo`` takes a directory or, as Triton does, a URL:

    s3://BUCKET/PREFIX            boto3's standard chain (AWS_ENDPOINT_URL reaches moto/MinIO)
    gs://BUCKET/PREFIX            google-cloud-storage's (STORAGE_EMULATOR_HOST, ADC)
    az://ACCOUNT/CONTAINER/PREFIX azure-storage-blob's: AZURE_STORAGE_CONNECTION_STRING when set,
                                  else https://ACCOUNT.blob.core.windows.net with
                                  DefaultAzureCredential (a managed identity in Azure)

A remote repository is mirrored into a local cache: every object under the prefix is fetched
once per version (ETag, or GCS generation) into ``objects/``, and each state of the whole
repository is a ``snapshots/<digest>/`` tree of hard links to them, which ``Repository.load``
reads like any directory. ``sync`` returns a new snapshot only when some object changed, so a
poller (Triton's ``--repository-poll-secs``) costs one listing per poll; a local directory's
``sync`` compares file sizes and modification times the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.config import REMOTE_SCHEMES
from core.errors import ConfigError, GpufanError
from core.storage.base import Listing, ObjectInfo

__all__ = ["LocalSource", "RemoteSource", "RepositorySource", "open_source"]

log = logging.getLogger(__name__)


class RepositorySource(Protocol):
    """A repository that may change: ``sync`` gives the directory of its state when that is new."""

    @property
    def url(self) -> str: ...

    async def sync(self) -> Path | None:
        """The directory holding the repository's current state if it changed since the last
        call (the first call always returns one), else None.

        Raises:
            ConfigError: the repository cannot be read, or holds nothing.
        """
        ...


@dataclass(frozen=True, slots=True)
class _Location:
    scheme: str
    bucket: str  # or container
    prefix: str  # "" or ends with "/"
    account: str | None = None

    @classmethod
    def parse(cls, url: str) -> _Location:
        scheme, _, rest = url.partition("://")
        parts = [p for p in rest.split("/") if p]
        account = None
        if scheme == "az":
            if len(parts) < 2:
                raise ConfigError(f"model repository {url}: expected az://ACCOUNT/CONTAINER[/PATH]")
            account, parts = parts[0], parts[1:]
        if not parts:
            raise ConfigError(f"model repository {url}: no bucket in the URL")
        prefix = "/".join(parts[1:])
        return cls(scheme, parts[0], f"{prefix}/" if prefix else "", account)


def _store(loc: _Location) -> Listing:
    """The SDK client for a location, from each SDK's standard credential chain."""
    if loc.scheme == "s3":
        from core.storage.s3 import S3Storage

        return S3Storage(loc.bucket)
    if loc.scheme == "gs":
        from core.storage.gcs import GcsStorage

        return GcsStorage(loc.bucket)
    from core.storage.azblob import AzureBlobStorage

    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        return AzureBlobStorage.from_connection_string(connection, loc.bucket)
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import ContainerClient

    url = f"https://{loc.account}.blob.core.windows.net"
    return AzureBlobStorage(ContainerClient(url, loc.bucket, credential=DefaultAzureCredential()))


def open_source(repo: str, cache: Path | None = None) -> RepositorySource:
    """The source ``--model-repo`` names; a URL's mirror lives under ``cache`` (default: the
    temporary directory, one tree per URL)."""
    if not repo.startswith(REMOTE_SCHEMES):
        if "://" in repo:
            raise ConfigError(
                f"model repository {repo}: unknown scheme; use a directory or "
                f"{', '.join(s + '...' for s in REMOTE_SCHEMES)}"
            )
        return LocalSource(Path(repo))
    digest = hashlib.sha256(repo.encode()).hexdigest()[:16]
    root = cache or Path(tempfile.gettempdir()) / "gpufan-models"
    return RemoteSource(repo, _store(_Location.parse(repo)), root / digest)


class LocalSource:
    """A directory: a new state whenever a file's size or modification time changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen: str | None = None

    @property
    def url(self) -> str:
        return str(self.root)

    async def sync(self) -> Path | None:
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} does not exist or is not a directory")
        h = hashlib.sha256()
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"{path.relative_to(self.root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        digest = h.hexdigest()
        if digest == self._seen:
            return None
        self._seen = digest
        return self.root


class RemoteSource:
    """An object-store prefix mirrored into ``cache`` (objects by version, snapshots by digest)."""

    def __init__(self, url: str, store: Listing, cache: Path) -> None:
        self._url = url
        self._loc = _Location.parse(url)
        self._store = store
        self._objects = cache / "objects"
        self._snapshots = cache / "snapshots"
        self._current: str | None = None

    @property
    def url(self) -> str:
        return self._url

    async def sync(self) -> Path | None:
        try:
            listed = await self._store.list_objects(self._loc.prefix)
        except GpufanError as e:
            raise ConfigError(f"model repository {self._url} cannot be listed: {e}") from e
        files = [o for o in listed if not o.key.endswith("/") and _relative(self._loc, o)]
        if not files:
            raise ConfigError(f"model repository {self._url} holds no objects")
        digest = hashlib.sha256(
            "".join(f"{o.key}\0{o.version}\n" for o in files).encode()
        ).hexdigest()[:16]
        if digest == self._current:
            return None
        snapshot = self._snapshots / digest
        if not snapshot.is_dir():
            await self._materialise(files, snapshot)
        self._current = digest
        self._prune(keep=digest)
        return snapshot

    async def _materialise(self, files: list[ObjectInfo], snapshot: Path) -> None:
        """Fetch what the cache lacks, then link the snapshot together and rename it into place
        (a reader never sees half a snapshot)."""
        staging = Path(tempfile.mkdtemp(dir=_made(self._snapshots), prefix=".staging-"))
        try:
            for info in files:
                cached = (
                    self._objects
                    / hashlib.sha256(f"{info.key}\0{info.version}".encode()).hexdigest()
                )
                if not cached.is_file():
                    await self._fetch(info, cached)
                target = staging / _relative(self._loc, info)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(cached, target)
                except OSError:  # a file system without hard links
                    shutil.copyfile(cached, target)
            os.replace(staging, snapshot)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def _fetch(self, info: ObjectInfo, cached: Path) -> None:
        try:
            got = await self._store.get(info.key)
        except GpufanError as e:
            raise ConfigError(f"model repository {self._url}: {info.key}: {e}") from e
        tmp = _made(self._objects) / f".{cached.name}.part"
        tmp.write_bytes(got.data)
        os.replace(tmp, cached)
        log.info("fetched %s/%s (%d bytes, version %s)", self._url.rstrip("/"),
                 info.key.removeprefix(self._loc.prefix), len(got.data), got.version)  # fmt: skip

    def _prune(self, keep: str) -> None:
        """Drop older snapshots (a served model is in memory already) and unlinked objects."""
        for old in self._snapshots.iterdir():
            if old.name != keep and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        for obj in self._objects.iterdir():
            if obj.is_file() and obj.stat().st_nlink == 1 and not obj.name.startswith("."):
                obj.unlink(missing_ok=True)


def _relative(loc: _Location, info: ObjectInfo) -> str:
    """The object's path inside the repository; "" for one that cannot be a file there."""
    rel = info.key.removeprefix(loc.prefix)
    parts = rel.split("/")
    return "" if any(p in ("", ".", "..") for p in parts) else rel


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
