"""A model with no batch axis (a stateful one) goes through the front door whole.

GIVEN a voice-activity-style model whose inputs are one audio frame [1, 64], a recurrent state
[2, 1, 8] and a scalar sample rate, served by two real workers with ``max_batch_size: 0``,
WHEN requests reach a real ``gpufan serve`` that reads that config.pbtxt,
THEN each runs as one unsplit shard and answers exactly what a direct run gives, with the state
carried from one call to the next by the caller; a scalar input alone (no config) also runs whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
import yaml
from onnx import TensorProto, helper

from core.frontdoor.workers import WorkerPool
from core.wire.client import OipClient, as_request
from core.wire.session import make_session
from tests.integration.conftest import served_front_door

MODEL = "vad"


def _vad_model(path: Path) -> None:
    """prob = sigmoid(sum(frame) * sr / 16000 + sum(state)); state' = tanh(state + mean(frame))."""
    frame = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 8])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    prob = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])
    state_n = helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, 1, 8])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 16000])
    nodes = [
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["input"], ["s"], keepdims=1),
        helper.make_node("Mul", ["s", "srf"], ["s1"]),
        helper.make_node("Mul", ["s1", "scale"], ["s2"]),
        helper.make_node("ReduceSum", ["state"], ["st"], keepdims=0),
        helper.make_node("Add", ["s2", "st"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
        helper.make_node("ReduceMean", ["input"], ["m"], keepdims=0),
        helper.make_node("Add", ["state", "m"], ["sm"]),
        helper.make_node("Tanh", ["sm"], ["stateN"]),
    ]
    graph = helper.make_graph(nodes, "vad", [frame, state, sr], [prob, state_n], [scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    _vad_model(root / MODEL / "1" / "model.onnx")
    (root / MODEL / "config.pbtxt").write_text(f'name: "{MODEL}"\nmax_batch_size: 0\n')
    return root


@pytest.fixture(scope="module")
def front_door(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with WorkerPool(repo, 2) as pool:
        targets = [
            {"name": f"w{i}", "backend": "http", "endpoint": ep, "max_concurrency": 2}
            for i, ep in enumerate(pool.endpoints)
        ]
        config = {"models": [{"name": MODEL, "repository": str(repo)}], "targets": targets}
        path = tmp_path_factory.mktemp("fd") / "gpufan.yaml"
        path.write_text(yaml.safe_dump(config))
        with served_front_door(path) as url:
            yield url


def _direct(repo: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the workers run it: reduction order, so bits, match
    session = ort.InferenceSession(
        str(repo / MODEL / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


async def _infer(url: str, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    async with make_session() as http:
        response = await OipClient(url, http).infer(
            MODEL, as_request(feeds, binary=True), binary=True, timeout=60
        )
    outputs = {t.name: t.data for t in response.outputs}
    report = orjson.loads(response.parameters["gpufan_report"])
    return outputs, report


def test_a_stateful_model_runs_whole_and_exact_with_its_state_carried(
    front_door: str, repo: Path
) -> None:
    rng = np.random.default_rng(7)
    state = np.zeros((2, 1, 8), dtype=np.float32)
    for _ in range(3):  # three frames of a stream: the caller carries the state between calls
        feeds = {
            "input": rng.standard_normal((1, 64)).astype(np.float32),
            "state": state,
            "sr": np.array(16000, dtype=np.int64),
        }
        got, report = asyncio.run(_infer(front_door, feeds))
        want = _direct(repo, feeds)
        assert sorted(got) == sorted(want)
        for name, expected in want.items():
            assert got[name].shape == expected.shape, name
            # Within one ulp: onnxruntime's vectorised Tanh/Sigmoid can differ by one ulp with the
            # input buffer's alignment, which the wire decides (seen on the third frame here).
            np.testing.assert_array_max_ulp(got[name], expected, maxulp=1)
        assert [s["items"] for s in report["shards"]] == [1]  # one unsplit shard
        state = got["stateN"]
