"""The Cloud Functions entry points through functions-framework, over real local workers.

GIVEN two worker processes and a gpufan.yaml naming them, and a loopback server answering the
Cloud Storage JSON API requests that google-cloud-storage really sends,
WHEN HTTP requests (the functions-framework test client) or CloudEvents (the cloudevents SDK)
arrive,
THEN results equal a direct onnxruntime run exactly, statuses are the front door's, and a
re-delivered event leaves the bucket as it was.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app
from google.cloud import storage

from core.errors import ObjectNotFound
from core.frontdoor.workers import WorkerPool
from core.storage.gcs import GcsStorage
from core.wire.client import as_request
from core.wire.tensors import decode_response, encode_request
from functions.gcp import main
from gpu_containers import DEMO_REPOSITORY
from tests.fakes.gcs_api import FakeGcs, client_for
from tests.fakes.loopback import serving

SOURCE = str(Path(main.__file__))
EVENTS = Path(__file__).parents[1] / "events"
MODEL, BUCKET = "digits", "gpufan-jobs-test"


# ------------------------------------------------------------------ a loopback Cloud Storage


@pytest.fixture(scope="module")
def gcs_endpoint() -> Iterator[str]:
    with serving(FakeGcs) as endpoint:
        yield endpoint


@pytest.fixture
def bucket(gcs_endpoint: str) -> storage.Bucket:
    return client_for(gcs_endpoint).bucket(BUCKET)


# ------------------------------------------------------------------------------- front door


@pytest.fixture(scope="module")
def workers() -> Iterator[WorkerPool]:
    with WorkerPool(DEMO_REPOSITORY, 2) as pool:
        yield pool


@pytest.fixture(autouse=True)
def env(
    monkeypatch: pytest.MonkeyPatch, workers: WorkerPool, tmp_path: Path, gcs_endpoint: str
) -> Iterator[pytest.MonkeyPatch]:
    """A clean environment, a gpufan.yaml over the workers, and the emulator host."""
    for name in list(os.environ):
        if name.startswith(("GPUFAN_", "GOOGLE_", "STORAGE_EMULATOR_HOST")):
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
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)  # the library's own switch
    yield monkeypatch
    # functions-framework loads SOURCE as a module of its own ("main"), with its own runtime
    loaded = sys.modules.get(Path(SOURCE).stem)
    for module in {id(m): m for m in (main, loaded) if m is not None}.values():
        module.runtime.close()


def _assert_exact(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


def test_http_infer_equals_direct_run_and_needs_the_token(
    direct: Callable[[np.ndarray], dict[str, np.ndarray]], digits: np.ndarray
) -> None:
    client = create_app(target="http_front_door", source=SOURCE).test_client()
    x = digits[:29]
    chunks, headers = encode_request(as_request({"X": x}), binary=True)
    body = b"".join(bytes(c) for c in chunks)

    denied = client.post(f"/v2/models/{MODEL}/infer", data=body, headers=headers)
    reply = client.post(
        f"/v2/models/{MODEL}/infer",
        data=body,
        headers={**headers, "authorization": "Bearer s3cret"},
    )
    ready = client.get("/v2/health/ready")

    assert denied.status_code == 401 and "bearer" in denied.get_json()["error"]
    assert reply.status_code == 200, reply.data
    resp = decode_response(reply.data, reply.headers["inference-header-content-length"])
    _assert_exact({t.name: t.data for t in resp.outputs}, direct(x))
    assert ready.status_code == 200


def test_http_oversize_body_is_413() -> None:
    client = create_app(target="http_front_door", source=SOURCE).test_client()

    reply = client.post(
        f"/v2/models/{MODEL}/infer",
        data=b" " * (main.SYNC_PAYLOAD_LIMIT + 1),
        headers={"authorization": "Bearer s3cret"},
    )

    assert reply.status_code == 413
    assert "Cloud Functions" in reply.get_json()["error"]


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _finalized(name: str) -> CloudEvent:
    """A storage CloudEvent shaped like tests/events/gcs_object_finalized.json, for ``name``."""
    captured = json.loads((EVENTS / "gcs_object_finalized.json").read_text())
    attributes = {**captured["attributes"], "subject": f"objects/{name}"}
    return CloudEvent(attributes, {**captured["data"], "bucket": BUCKET, "name": name})


def test_storage_event_runs_the_job_once_per_generation(
    bucket: storage.Bucket,
    direct: Callable[[np.ndarray], dict[str, np.ndarray]],
    digits: np.ndarray,
) -> None:
    client = create_app(target="storage_job", source=SOURCE, signature_type="cloudevent")
    x = digits[:19]
    bucket.blob("jobs/g.manifest.json").upload_from_string(json.dumps({"model": MODEL}))
    bucket.blob("jobs/g.npz").upload_from_string(_npz(X=x))
    headers, body = to_structured(_finalized("jobs/g.npz"))

    first = client.test_client().post("/", headers=headers, data=body)
    count = len(FakeGcs.objects)
    again = client.test_client().post("/", headers=headers, data=body)

    assert first.status_code == again.status_code == 200
    assert len(FakeGcs.objects) == count  # the re-delivered event wrote nothing new
    generation = bucket.get_blob("jobs/g.npz").generation
    prefix = f"results/jobs/g.npz/{generation}/"
    result = json.loads(bucket.blob(prefix + "result.json").download_as_bytes())
    assert result["status"] == "ok" and result["input"]["version"] == str(generation)
    with np.load(io.BytesIO(bucket.blob(prefix + "outputs.npz").download_as_bytes())) as got:
        _assert_exact({k: got[k] for k in got.files}, direct(x))


def _published(name: str) -> tuple[dict[str, str], bytes]:
    """A Pub/Sub CloudEvent carrying a Cloud Storage notification for ``name``."""
    data = base64.b64encode(json.dumps({"bucket": BUCKET, "name": name}).encode()).decode()
    message = {"data": data, "messageId": "1", "attributes": {"eventType": "OBJECT_FINALIZE"}}
    attributes = {
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "source": "//pubsub.googleapis.com/projects/p/topics/gpufan-jobs",
    }
    data_ = {"message": message, "subscription": "projects/p/subscriptions/gpufan-jobs"}
    return to_structured(CloudEvent(attributes, data_))


def test_pubsub_notification_runs_the_job_and_a_bad_input_fails_the_event(
    bucket: storage.Bucket, digits: np.ndarray
) -> None:
    app = create_app(target="pubsub_job", source=SOURCE, signature_type="cloudevent")
    bucket.blob("jobs/p.manifest.json").upload_from_string(json.dumps({"model": MODEL}))
    bucket.blob("jobs/p.npy").upload_from_string(_npy(digits[:5]))  # one input: X

    ok_headers, ok_body = _published("jobs/p.npy")
    ok = app.test_client().post("/", headers=ok_headers, data=ok_body)
    bad_headers, bad_body = _published("jobs/missing.npz")
    bad = app.test_client().post("/", headers=bad_headers, data=bad_body)

    assert ok.status_code == 200
    version = bucket.get_blob("jobs/p.npy").generation
    result = bucket.blob(f"results/jobs/p.npy/{version}/result.json").download_as_bytes()
    assert json.loads(result)["status"] == "ok"
    assert bad.status_code == 500  # the trigger's retry policy and dead-letter topic take over


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


async def test_gcs_storage_round_trip_and_errors(bucket: storage.Bucket) -> None:
    store = GcsStorage(BUCKET, client=bucket.client)

    await store.put("a/b.bin", b"payload", metadata={"gpufan-manifest": "{}"})
    got = await store.get("a/b.bin")

    assert got.data == b"payload" and dict(got.metadata) == {"gpufan-manifest": "{}"}
    assert got.version == got.version_id and got.etag
    assert await store.exists("a/b.bin") and not await store.exists("a/none")
    with pytest.raises(ObjectNotFound):
        await store.get("a/none")


def test_control_loop_answers_its_summary() -> None:
    client = create_app(target="control_loop", source=SOURCE).test_client()

    reply = client.post("/")

    assert reply.status_code == 200
    assert (reply.get_json()["ready"], reply.get_json()["total"]) == (2, 2)
