"""A Triton ORT-backend model configuration drives the worker (a real worker process).

GIVEN the bench CNN with a config.pbtxt as Triton's documentation writes one: two CPU instances,
dynamic batching with preferred sizes, graph level, CUDA graphs and a TensorRT FP16 accelerator,
backend parameters and a model_warmup sample,
WHEN a worker serves it on this machine (CPU onnxruntime: no TensorRT, no CUDA),
THEN it loads, reports two instances, the preferred sizes and the warm-up it ran, says in model
metadata, ``/metrics`` and its log that TensorRT and CUDA graphs fell back and that it runs on
the CPU, and answers concurrent requests as a direct run does.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from core.frontdoor.workers import WorkerPool
from core.wire.client import OipClient, as_request
from core.wire.session import make_session
from tests.unit.test_modelconfig import TRITON


def _direct(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


async def _concurrent(url: str, xs: list[np.ndarray]) -> list[np.ndarray]:
    async with make_session() as http:
        client = OipClient(url, http)
        replies = await asyncio.gather(
            *(client.infer("cnn", as_request({"input": x}), timeout=60) for x in xs)
        )
    return [r.outputs[0].data for r in replies]


def test_a_triton_config_loads_and_behaves_as_configured(bench_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(bench_repo / "cnn", repo / "cnn")
    (repo / "cnn" / "config.pbtxt").write_text(TRITON)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 3, 64, 64), dtype=np.float32) for _ in range(12)]
    with WorkerPool(repo, 1) as pool:
        url = pool.endpoints[0]
        meta = httpx.get(f"{url}/v2/models/cnn", trust_env=False).json()["parameters"]
        config = httpx.get(f"{url}/v2/models/cnn/config", trust_env=False).json()
        metrics = httpx.get(f"{url}/metrics", trust_env=False).text
        got = asyncio.run(_concurrent(url, xs))
        log = pool.stderr(0)

    assert meta["execution_provider"] == "CPUExecutionProvider"
    assert meta["requested_providers"] == "CPUExecutionProvider"
    assert "tensorrt asked for" in meta["fallbacks"] and "cuda.graphs" in meta["fallbacks"]
    assert meta["instances"] == 2
    assert meta["warmup_batches"] == "4,4"  # the config's sample, count 2
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert config["max_batch_size"] == 32
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert (
        'gpufan_worker_model_provider{fallbacks="2",model="cnn",provider="CPUExecutionProvider"'
        in metrics
    )
    assert "tensorrt asked for" in log
    want = _direct(repo / "cnn" / "1" / "model.onnx", np.concatenate(xs))
    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5, atol=1e-5)
