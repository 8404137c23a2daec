"""The Azure Functions (Python v2) entry points, called as the host calls them, over real workers.

GIVEN two worker processes and a gpufan.yaml naming them, and a loopback server answering the
Blob service REST requests that azure-storage-blob really sends,
WHEN ``azure.functions`` HttpRequests, blob-trigger InputStreams, QueueMessages or a timer
arrive at the user functions registered on ``function_app.app``,
THEN results equal a direct onnxruntime run exactly, statuses are the front door's, and a
re-delivered event leaves the container as it was.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import numpy as np
import pytest
import yaml
from azure.functions.timer import TimerRequest

from core.errors import ObjectNotFound, PermanentJobError
from core.frontdoor.workers import WorkerPool
from core.storage.azblob import AzureBlobStorage
from core.wire.client import as_request
from core.wire.tensors import decode_response, encode_request
from functions.azure import function_app
from gpu_containers import DEMO_REPOSITORY
from tests.fakes.blob_api import FakeBlobs
from tests.fakes.blob_api import connection_string as blob_connection
from tests.fakes.loopback import serving

MODEL, ACCOUNT, CONTAINER = "digits", "devstoreaccount1", "gpufan"


# ------------------------------------------------------------------- a loopback Blob service


@pytest.fixture(scope="module")
def connection_string() -> Iterator[str]:
    with serving(FakeBlobs) as endpoint:
        yield blob_connection(endpoint, ACCOUNT)


@pytest.fixture
def store(connection_string: str) -> AzureBlobStorage:
    return AzureBlobStorage.from_connection_string(connection_string, CONTAINER)


# ------------------------------------------------------------------------------- front door


@pytest.fixture(scope="module")
def workers() -> Iterator[WorkerPool]:
    with WorkerPool(DEMO_REPOSITORY, 2) as pool:
        yield pool


@pytest.fixture(autouse=True)
def env(
    monkeypatch: pytest.MonkeyPatch, workers: WorkerPool, tmp_path: Path, connection_string: str
) -> Iterator[pytest.MonkeyPatch]:
    """A clean environment, a gpufan.yaml over the workers, and the storage app setting."""
    for name in list(os.environ):
        if name.startswith(("GPUFAN_", "AZURE_")):
            monkeypatch.delenv(name)
    targets = [
        {"name": f"w{i}", "backend": "http", "endpoint": ep, "max_concurrency": 2}
        for i, ep in enumerate(workers.endpoints)
    ]
    config = {
        "models": [{"name": MODEL, "repository": str(DEMO_REPOSITORY)}],
        "targets": targets,
        "policy": {"max_shard_items": 16, "min_shard_items": 1},
        "server": {"token_env": "GPUFAN_TEST_TOKEN"},
    }
    (tmp_path / "gpufan.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("GPUFAN_CONFIG", str(tmp_path / "gpufan.yaml"))
    monkeypatch.setenv("GPUFAN_TEST_TOKEN", "s3cret")
    monkeypatch.setenv("GPUFAN_STORAGE", connection_string)
    yield monkeypatch
    function_app.runtime.close()


@functools.cache
def _user_functions() -> dict[str, Callable[..., Any]]:
    # indexing validates names into the app once: the host, too, indexes the app once
    return {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}


def _user_function(name: str) -> Callable[..., Any]:
    """The code the host would call for the function named ``name``."""
    return _user_functions()[name]


def _assert_exact(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


def _infer_request(x: np.ndarray, **headers: str) -> func.HttpRequest:
    chunks, codec = encode_request(as_request({"X": x}), binary=True)
    return func.HttpRequest(
        "POST",
        f"https://gpufan.azurewebsites.net/v2/models/{MODEL}/infer",
        headers={**codec, **headers},
        route_params={"path": f"models/{MODEL}/infer"},
        body=b"".join(bytes(c) for c in chunks),
    )


async def test_http_infer_equals_direct_run_and_needs_the_token(
    direct: Callable[[np.ndarray], dict[str, np.ndarray]], digits: np.ndarray
) -> None:
    oip, health = _user_function("oip"), _user_function("health")
    x = digits[:33]

    denied = await oip(_infer_request(x))
    reply = await oip(_infer_request(x, authorization="Bearer s3cret"))
    ready = await health(
        func.HttpRequest(
            "GET",
            "https://gpufan.azurewebsites.net/v2/health/ready",
            route_params={"probe": "ready"},
            body=b"",
        )
    )

    assert denied.status_code == 401 and "bearer" in json.loads(denied.get_body())["error"]
    assert reply.status_code == 200, reply.get_body()
    assert reply.headers["content-type"] == "application/octet-stream"
    resp = decode_response(reply.get_body(), reply.headers["inference-header-content-length"])
    _assert_exact({t.name: t.data for t in resp.outputs}, direct(x))
    assert ready.status_code == 200


async def test_http_oversize_body_is_413() -> None:
    request = func.HttpRequest(
        "POST",
        f"https://gpufan.azurewebsites.net/v2/models/{MODEL}/infer",
        route_params={"path": f"models/{MODEL}/infer"},
        body=b" " * (function_app.SYNC_PAYLOAD_LIMIT + 1),
    )

    reply = await _user_function("oip")(request)

    assert reply.status_code == 413
    assert "Azure Functions" in json.loads(reply.get_body())["error"]


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


async def test_blob_trigger_runs_the_job_once_per_etag(
    store: AzureBlobStorage,
    direct: Callable[[np.ndarray], dict[str, np.ndarray]],
    digits: np.ndarray,
) -> None:
    x = digits[:23]
    await store.put("jobs/b.manifest.json", json.dumps({"model": MODEL}).encode())
    await store.put("jobs/b.npz", _npz(X=x))
    blob = func.blob.InputStream(
        data=b"", name=f"{CONTAINER}/jobs/b.npz", uri=f"{store.name}/jobs/b.npz"
    )

    await _user_function("blob_job")(blob)
    count = len(FakeBlobs.blobs)
    await _user_function("blob_job")(blob)  # re-delivered

    assert len(FakeBlobs.blobs) == count
    etag = (await store.get("jobs/b.npz")).etag
    result = json.loads((await store.get(f"results/jobs/b.npz/{etag}/result.json")).data)
    assert result["status"] == "ok" and result["input"]["etag"] == etag
    outputs = (await store.get(f"results/jobs/b.npz/{etag}/outputs.npz")).data
    with np.load(io.BytesIO(outputs)) as got:
        _assert_exact({k: got[k] for k in got.files}, direct(x))


async def test_queue_trigger_takes_event_grid_events_and_fails_bad_inputs(
    store: AzureBlobStorage, digits: np.ndarray
) -> None:
    manifest = {"gpufan-manifest": json.dumps({"model": MODEL})}  # one upload, no sibling
    await store.put("jobs/q.npz", _npz(X=digits[:4]), metadata=manifest)
    await store.put("jobs/orphan.npz", _npz(X=digits[:4]))
    grid = {  # Event Grid's BlobCreated event, as a storage-queue subscription delivers it
        "topic": f"/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/"
        f"storageAccounts/{ACCOUNT}",
        "subject": f"/blobServices/default/containers/{CONTAINER}/blobs/jobs/q.npz",
        "eventType": "Microsoft.Storage.BlobCreated",
        "id": "831e1650-001e-001b-66ab-eeb76e069631",
        "data": {"api": "PutBlob", "url": f"{store.name}/jobs/q.npz", "blobType": "BlockBlob"},
        "dataVersion": "",
        "metadataVersion": "1",
        "eventTime": "2025-03-10T12:00:00.0000000Z",
    }
    orphan = {"container": CONTAINER, "key": "jobs/orphan.npz"}
    queue_job = _user_function("queue_job")

    await queue_job(func.QueueMessage(id="1", body=json.dumps(grid).encode()))
    with pytest.raises(PermanentJobError, match="no manifest"):  # the host retries, then poisons
        await queue_job(func.QueueMessage(id="2", body=json.dumps(orphan).encode()))

    etag = (await store.get("jobs/q.npz")).etag
    result = json.loads((await store.get(f"results/jobs/q.npz/{etag}/result.json")).data)
    assert result["status"] == "ok"


async def test_timer_runs_the_control_loop(caplog: pytest.LogCaptureFixture) -> None:
    timer = TimerRequest(past_due=False)

    with caplog.at_level("INFO", logger=function_app.__name__):
        await _user_function("control_loop")(timer)

    (line,) = [r.getMessage() for r in caplog.records if "control loop" in r.getMessage()]
    summary = json.loads(line.split(": ", 1)[1])
    assert (summary["ready"], summary["total"]) == (2, 2)


async def test_blob_storage_round_trip_and_errors(store: AzureBlobStorage) -> None:
    await store.put("a/b.bin", b"payload", metadata={"k": "v"})

    got = await store.get("a/b.bin")

    assert got.data == b"payload" and dict(got.metadata) == {"k": "v"} and got.etag
    assert await store.exists("a/b.bin") and not await store.exists("a/none")
    with pytest.raises(ObjectNotFound):
        await store.get("a/none")
