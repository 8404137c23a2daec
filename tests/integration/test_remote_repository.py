"""Model repositories in object storage, as Triton reads them: s3://, gs://, az://.

GIVEN the demo repository uploaded to a moto S3 server (and to the loopback GCS and Blob
services, through the real SDK clients),
WHEN a worker starts with ``--model-repo s3://...`` and ``--repository-poll-secs``, and a new
version is uploaded while requests keep arriving — then a broken one,
THEN it serves from the start, picks the new version up with no failed request, keeps serving
the old versions when the new state does not load, and refuses a missing or empty repository
at start with an error naming it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import orjson
import pytest
from moto.server import ThreadedMotoServer

from core.errors import ConfigError
from core.frontdoor.workers import WorkerPool
from core.storage.azblob import AzureBlobStorage
from core.storage.gcs import GcsStorage
from core.storage.s3 import _default_client
from gpu_containers import DEMO_REPOSITORY
from gpu_containers.repository import Repository
from gpu_containers.sources import RemoteSource, open_source
from tests.fakes.blob_api import FakeBlobs
from tests.fakes.blob_api import connection_string as blob_connection
from tests.fakes.gcs_api import FakeGcs, client_for
from tests.fakes.loopback import serving

BUCKET = "gpufan-models"
MODEL_FILE = DEMO_REPOSITORY / "digits" / "1" / "model.onnx"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def moto_env() -> Iterator[dict[str, str]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1", **CREDS}
    server.stop()


@pytest.fixture
def s3(moto_env: dict[str, str]) -> Any:
    client = boto3.client(
        "s3", endpoint_url=moto_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", ()):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _upload_demo(put: Any, prefix: str) -> None:
    for path in sorted(p for p in DEMO_REPOSITORY.rglob("*") if p.is_file()):
        put(f"{prefix}{path.relative_to(DEMO_REPOSITORY).as_posix()}", path.read_bytes())


def _x_body(x: np.ndarray) -> bytes:
    tensor = {"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return orjson.dumps({"inputs": [tensor]})


def test_a_new_version_uploaded_while_serving_is_picked_up_with_no_failed_request(
    s3: Any, moto_env: dict[str, str], tmp_path: Path, digits: np.ndarray
) -> None:
    _upload_demo(lambda key, data: s3.put_object(Bucket=BUCKET, Key=key, Body=data), "repo/")
    url = f"s3://{BUCKET}/repo"
    args = ["--repository-poll-secs", "0.2", "--model-cache", str(tmp_path / "cache")]
    with WorkerPool(url, 1, args, env=moto_env) as pool:
        endpoint = pool.endpoints[0]
        assert httpx.get(f"{endpoint}/v2/models/digits").json()["versions"] == ["1"]
        answered: dict[str, int] = {}
        failures: list[str] = []
        stop = threading.Event()
        body = _x_body(digits[:4])

        def load() -> None:  # bounded: at most 3000 requests or 60 s
            deadline = time.monotonic() + 60
            with httpx.Client(base_url=endpoint, timeout=10) as http:
                for _ in range(3000):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    r = http.post("/v2/models/digits/infer", content=body)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code}: {r.text}")
                        continue
                    version = r.json()["model_version"]
                    answered[version] = answered.get(version, 0) + 1

        client = threading.Thread(target=load)
        client.start()
        try:
            time.sleep(0.5)
            s3.put_object(
                Bucket=BUCKET, Key="repo/digits/2/model.onnx", Body=MODEL_FILE.read_bytes()
            )
            _wait_for(lambda: answered.get("2", 0) >= 20, "version 2 to answer")
            s3.put_object(Bucket=BUCKET, Key="repo/digits/3/model.onnx", Body=b"not an onnx graph")
            _wait_for(lambda: "did not load" in pool.stderr(0), "the broken version to be refused")
            before = answered.get("2", 0)
            _wait_for(lambda: answered.get("2", 0) >= before + 20, "version 2 to keep answering")
        finally:
            stop.set()
            client.join(30)

        assert failures == []
        assert answered.get("1", 0) > 0  # answered by the first state, then by the new one
        assert httpx.get(f"{endpoint}/v2/models/digits").json()["versions"] == ["1", "2"]
        assert "digits/3/model.onnx" in pool.stderr(0)  # the log names what did not load


def _wait_for(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("repo", "fragment"),
    [
        (f"s3://no-such-bucket-{BUCKET}/repo", "cannot be listed"),
        (f"s3://{BUCKET}/empty", "holds no objects"),
        ("ftp://host/repo", "unknown scheme"),
    ],
)
def test_a_missing_or_empty_repository_is_a_clear_error_at_start(
    s3: Any, moto_env: dict[str, str], tmp_path: Path, repo: str, fragment: str
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gpu_containers.worker", "--model-repo", repo, "--port", "0",
         "--model-cache", str(tmp_path)],
        env={**moto_env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert fragment in run.stderr
    assert repo.split("://")[0] in run.stderr


def _sync_twice_and_after_a_change(source: RemoteSource, put: Any) -> None:
    first = asyncio.run(source.sync())
    assert first is not None
    repo = Repository.load(first)
    assert list(repo.models["digits"].versions) == ["1"]
    assert (first / "digits" / "1" / "model.onnx").read_bytes() == MODEL_FILE.read_bytes()
    assert asyncio.run(source.sync()) is None  # nothing changed: one listing, nothing fetched
    put("repo/digits/2/model.onnx", MODEL_FILE.read_bytes())
    second = asyncio.run(source.sync())
    assert second is not None
    assert second != first
    assert list(Repository.load(second).models["digits"].versions) == ["1", "2"]


def test_a_gcs_repository_is_mirrored_by_generation(tmp_path: Path) -> None:
    with serving(FakeGcs) as endpoint:
        client = client_for(endpoint)
        bucket = client.bucket(BUCKET)

        def put(key: str, data: bytes) -> None:
            bucket.blob(key).upload_from_string(data)

        _upload_demo(put, "repo/")
        source = RemoteSource(f"gs://{BUCKET}/repo", GcsStorage(BUCKET, client), tmp_path)
        _sync_twice_and_after_a_change(source, put)


def test_an_azure_blob_repository_is_mirrored_by_etag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving(FakeBlobs) as endpoint:
        connection = blob_connection(endpoint, "acct")
        store = AzureBlobStorage.from_connection_string(connection, "models")

        def put(name: str, data: bytes) -> None:
            asyncio.run(store.put(name, data))

        _upload_demo(put, "repo/")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
        source = open_source("az://acct/models/repo", tmp_path)  # as the worker opens it
        assert isinstance(source, RemoteSource)
        _sync_twice_and_after_a_change(source, put)


def test_a_url_without_a_bucket_is_refused() -> None:
    with pytest.raises(ConfigError, match="az://ACCOUNT/CONTAINER"):
        open_source("az://only-account")
    with pytest.raises(ConfigError, match="no bucket"):
        open_source("s3://")


def test_the_front_door_profiles_a_model_from_its_object_store_repository(
    s3: Any,
    moto_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """``models[].repository: s3://...`` is mirrored at start; the cost model reads its graph."""
    from core.config import settings_from_dict
    from core.frontdoor.runtime import FrontDoorRuntime

    _upload_demo(lambda key, data: s3.put_object(Bucket=BUCKET, Key=key, Body=data), "repo/")
    for name, value in moto_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the mirror's default home
    # the process's shared boto3 client reads its endpoint when built: build it under moto's
    _default_client.cache_clear()
    request.addfinalizer(_default_client.cache_clear)
    settings = settings_from_dict(
        {
            "models": [{"name": "digits", "repository": f"s3://{BUCKET}/repo"}],
            "targets": [{"name": "w", "backend": "http", "endpoint": "http://127.0.0.1:9"}],
        },
        source="test",
        base=tmp_path,  # a URL is not resolved against the config's folder
    )
    assert settings.models[0].repository == f"s3://{BUCKET}/repo"

    async def facts() -> Any:
        async with FrontDoorRuntime(settings, settings.targets, env={}) as rt:
            return rt.cost_model.models["digits"].profile, rt.settings.models[0].repository

    profile, local = asyncio.run(facts())
    assert isinstance(local, Path) and (local / "digits" / "1" / "model.onnx").is_file()
    assert profile is not None and profile.flops_per_item > 0  # profiled from the mirrored graph


def test_a_repository_with_another_scheme_is_refused_naming_the_key() -> None:
    from core.config import settings_from_dict

    with pytest.raises(ConfigError, match=r"models\[0\]\.repository: .*ftp://host/repo"):
        settings_from_dict({"models": [{"name": "m", "repository": "ftp://host/repo"}]})


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_a_worker_serves_from_gcs_and_blob_through_the_sdks_standard_settings(
    scheme: str, tmp_path: Path, digits: np.ndarray, direct: Any
) -> None:
    """The worker process finds the store the way a deployment points it there: GCS by
    ``STORAGE_EMULATOR_HOST``, Blob by ``AZURE_STORAGE_CONNECTION_STRING``."""
    handler = FakeGcs if scheme == "gs" else FakeBlobs
    with serving(handler) as endpoint:
        if scheme == "gs":
            bucket = client_for(endpoint).bucket(BUCKET)
            _upload_demo(lambda key, data: bucket.blob(key).upload_from_string(data), "repo/")
            url, env = f"gs://{BUCKET}/repo", {"STORAGE_EMULATOR_HOST": endpoint}
        else:
            connection = blob_connection(endpoint, "acct")
            store = AzureBlobStorage.from_connection_string(connection, "models")
            _upload_demo(lambda name, data: asyncio.run(store.put(name, data)), "repo/")
            url, env = "az://acct/models/repo", {"AZURE_STORAGE_CONNECTION_STRING": connection}
        with WorkerPool(url, 1, ["--model-cache", str(tmp_path)], env=env) as pool:
            x = digits[:9]
            r = httpx.post(f"{pool.endpoints[0]}/v2/models/digits/infer", content=_x_body(x))
            assert r.status_code == 200, r.text
            label = next(o for o in r.json()["outputs"] if o["name"] == "label")
            np.testing.assert_array_equal(label["data"], direct(x)["label"])
