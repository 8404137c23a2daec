"""LocalStorage: the file-backed store behind the job runner's tests and gpufan without a cloud."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.errors import BadRequest, ObjectNotFound
from core.storage.local import LocalStorage


async def test_put_then_get_returns_bytes_metadata_and_content_etag(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)

    await store.put("jobs/a.npz", b"one", metadata={"gpufan-manifest": "{}"})
    first = await store.get("jobs/a.npz")
    await store.put("jobs/a.npz", b"two")
    second = await store.get("jobs/a.npz")

    assert (first.data, dict(first.metadata)) == (b"one", {"gpufan-manifest": "{}"})
    assert (second.data, dict(second.metadata)) == (b"two", {})  # a rewrite drops old metadata
    assert first.version == first.etag != second.etag  # no version ids: the etag stands in
    assert first.version_id is None


async def test_exists_and_missing_keys(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    await store.put("a/b/c.json", b"{}")

    assert await store.exists("a/b/c.json")
    assert not await store.exists("a/b/missing.json")
    assert not await store.exists("a/b")  # a folder is not an object
    with pytest.raises(ObjectNotFound, match="missing"):
        await store.get("a/missing")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", ".meta/a"])
async def test_keys_cannot_escape_the_root_or_reach_metadata(tmp_path: Path, key: str) -> None:
    store = LocalStorage(tmp_path / "root")

    with pytest.raises(BadRequest):
        await store.put(key, b"x")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_metadata_sidecars_are_not_objects(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    await store.put("jobs/a.npz", b"x", metadata={"k": "v"})

    files = await asyncio.to_thread(_files, tmp_path)

    assert files == [".meta/jobs/a.npz.json", "jobs/a.npz"]
