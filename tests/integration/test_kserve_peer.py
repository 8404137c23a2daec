"""The front door in front of a real KServe 0.21 ModelServer, beside a gpufan worker.

GIVEN a KServe ModelServer (installed from PyPI into its own virtualenv, started here, serving
the demo model with a custom onnxruntime predictor as KServe's docs write one — so its model
metadata names no inputs or outputs and it has no ``/config`` route) and a gpufan worker,
WHEN the front door lists KServe first, reaches it over REST or gRPC, shards across both, or
loses KServe mid-stream,
THEN its metadata and config are the worker's, complete, every time (KServe's empty answer is
neither shown nor cached), results equal a direct onnxruntime run, and KServe's death costs no
client an error; with KServe as the only target, /config is a 404 naming it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml

from bench.peers import KSERVE, PEERS, peer_python
from core.cli.render import placement_report
from core.frontdoor.workers import WorkerPool
from gpu_containers import DEMO_REPOSITORY
from tests.integration.conftest import free_port, served_front_door

PEER = PEERS / "kserve_onnx.py"
MODEL_FILE = DEMO_REPOSITORY / "digits" / "1" / "model.onnx"

# Building KServe's virtualenv (~1 min from PyPI) happens once per machine, in the first test.
pytestmark = pytest.mark.timeout(900)


class KServe:
    """A KServe ModelServer process serving ``digits``; ``stop`` kills it."""

    def __init__(self, python: Path) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.proc = subprocess.Popen(
            [str(python), str(PEER), "--model_name", "digits", "--model_path", str(MODEL_FILE),
             "--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/v2/models/digits/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("the KServe ModelServer did not become ready within 60 s")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    return peer_python(KSERVE)


@pytest.fixture
def kserve(kserve_python: Path) -> Iterator[KServe]:
    peer = KServe(kserve_python)
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerPool]:
    with WorkerPool(DEMO_REPOSITORY, 1) as pool:
        yield pool


def _config(tmp_path: Path, targets: list[dict[str, Any]]) -> Path:
    path = tmp_path / "gpufan.yaml"
    config = {
        "models": [{"name": "digits"}],
        "targets": targets,
        "policy": {"max_shard_items": 8, "min_shard_items": 1},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _infer(url: str, x: np.ndarray) -> httpx.Response:
    tensor = {"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return httpx.post(
        f"{url}/v2/models/digits/infer", content=orjson.dumps({"inputs": [tensor]}), timeout=60
    )


def _outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    doc = response.json()
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}


def _check(response: httpx.Response, want: dict[str, np.ndarray]) -> set[str]:
    assert response.status_code == 200, response.text
    got = _outputs(response)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6)
    report = placement_report(response.json()["parameters"])
    assert report is not None
    return {s["target"] for s in report["shards"]}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_kserve_listed_first_gives_no_empty_metadata_and_shards_run_on_both(
    kserve: KServe,
    worker: WorkerPool,
    tmp_path: Path,
    digits: np.ndarray,
    direct: Callable[[np.ndarray], dict[str, np.ndarray]],
    protocol: str,
) -> None:
    endpoint = kserve.url if protocol == "http" else f"grpc://{kserve.grpc}"
    targets = [
        {"name": "kserve", "backend": protocol, "endpoint": endpoint, "max_concurrency": 4},
        {"name": "gpufan", "backend": "http", "endpoint": worker.endpoints[0],
         "max_concurrency": 4},
    ]  # fmt: skip
    want_meta = httpx.get(f"{worker.endpoints[0]}/v2/models/digits").json()
    assert httpx.get(f"{kserve.url}/v2/models/digits").json()["inputs"] == []  # the quirk

    with served_front_door(_config(tmp_path, targets)) as url:
        for _ in range(3):  # asked again and again: never KServe's empty answer, never cached
            meta = httpx.get(f"{url}/v2/models/digits").json()
            assert meta["inputs"] == want_meta["inputs"]
            assert meta["outputs"] == want_meta["outputs"]
        config = httpx.get(f"{url}/v2/models/digits/config")
        assert config.status_code == 200, config.text
        assert config.json()["input"][0]["name"] == "X"

        used: set[str] = set()
        for i in range(10):
            x = digits[i * 40 : (i + 1) * 40]
            used |= _check(_infer(url, x), direct(x))
        assert used == {"kserve", "gpufan"}  # both peers computed shards, each exact


def test_kserve_killed_mid_stream_costs_no_client_an_error(
    kserve: KServe,
    worker: WorkerPool,
    tmp_path: Path,
    digits: np.ndarray,
    direct: Callable[[np.ndarray], dict[str, np.ndarray]],
) -> None:
    targets = [
        {"name": "kserve", "backend": "http", "endpoint": kserve.url, "max_concurrency": 4},
        {"name": "gpufan", "backend": "http", "endpoint": worker.endpoints[0],
         "max_concurrency": 4},
    ]  # fmt: skip
    with served_front_door(_config(tmp_path, targets)) as url:
        for i in range(30):
            if i == 10:
                kserve.stop()
            x = digits[i * 14 : (i + 1) * 14]  # 30 requests, 420 distinct rows
            used = _check(_infer(url, x), direct(x))
            if i > 10:
                assert used == {"gpufan"}


def test_with_kserve_alone_config_is_a_404_naming_it(kserve: KServe, tmp_path: Path) -> None:
    targets = [{"name": "kserve", "backend": "http", "endpoint": kserve.url}]
    with served_front_door(_config(tmp_path, targets)) as url:
        config = httpx.get(f"{url}/v2/models/digits/config")
        assert config.status_code == 404, config.text
        assert "kserve" in config.json()["error"]
        meta = httpx.get(f"{url}/v2/models/digits")
        assert meta.status_code == 404, meta.text
        assert "kserve" in meta.json()["error"]
        x = np.zeros((3, 64), np.float32)
        assert _infer(url, x).status_code == 200  # inference itself still works through it
