"""The front door's one-shard relay end to end: real workers, a real ``gpufan serve``.

GIVEN a front door over two gpufan workers,
WHEN small requests arrive (binary and JSON, versioned, with and without gpufan's parameters),
THEN the relayed answer is exactly what the full path gives and direct onnxruntime computes, the
report shows one attempt, and a dead target still loses no request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml

from core.cli.render import placement_report
from core.frontdoor.workers import WorkerPool
from core.wire.client import OipClient, as_request
from core.wire.session import make_session
from core.wire.tensors import HEADER_LENGTH, InferResponse, decode_response
from gpu_containers import DEMO_REPOSITORY
from tests.integration.conftest import served_front_door

MODEL = "digits"


def _config(path: Path, pool: WorkerPool) -> Path:
    """gpufan.yaml over the pool's workers, w0 the cheapest."""
    targets = [
        {"name": f"w{i}", "backend": "http", "endpoint": ep, "max_concurrency": 4,
         "usd_per_hour": float(i)}
        for i, ep in enumerate(pool.endpoints)
    ]  # fmt: skip
    path.write_text(yaml.safe_dump({"models": [{"name": MODEL}], "targets": targets}))
    return path


@pytest.fixture(scope="module")
def front_door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, WorkerPool]]:
    with WorkerPool(DEMO_REPOSITORY, 2) as pool:
        config = _config(tmp_path_factory.mktemp("relay") / "gpufan.yaml", pool)
        with served_front_door(config) as url:
            yield url, pool


async def _infer(url: str, x: np.ndarray, *, binary: bool, **params: Any) -> InferResponse:
    async with make_session() as http:
        request = as_request({"X": x}, binary=binary, parameters=params or None, request_id="c1")
        return await OipClient(url, http).infer(MODEL, request, binary=binary, timeout=30)


def _report(resp: InferResponse) -> dict[str, Any]:
    report = placement_report(resp.parameters)
    assert report is not None
    return report


@pytest.mark.parametrize("binary", [True, False])
async def test_a_relayed_answer_equals_the_full_paths_and_onnxruntimes(
    front_door: tuple[str, WorkerPool],
    digits: np.ndarray,
    direct: Callable[[np.ndarray], dict[str, np.ndarray]],
    binary: bool,
) -> None:
    url, _ = front_door
    x = digits[:3]
    relayed = await _infer(url, x, binary=binary)
    full = await _infer(url, x, binary=binary, trace="t1")  # no one vouches for it: full path
    # gpufan's own, read at the door: a binary request is relayed without them, JSON is not
    limited = await _infer(url, x, binary=binary, slo_ms=5000, max_attempts=2)
    for resp in (relayed, full, limited):
        got = {t.name: t.data for t in resp.outputs}
        for name, want in direct(x).items():
            assert got[name].dtype == want.dtype
            np.testing.assert_array_equal(got[name], want, err_msg=name)
        assert (resp.model_name, resp.model_version, resp.id) == (MODEL, None, "c1")
    assert sorted(relayed.parameters) == sorted(full.parameters)
    report = _report(relayed)
    (shard,) = report["shards"]
    assert (shard["items"], len(shard["attempts"]), shard["attempts"][0]["ok"]) == (3, 1, True)
    assert report["redispatched"] == 0 and relayed.parameters["gpufan_shards"] == 1
    assert report["placement"]["targets"]  # the cost model's explanation rides along
    # the relay places inside its one attempt: no plan phase of its own, unlike Fanout
    assert report["phases_ms"]["plan"] == 0.0 < _report(full)["phases_ms"]["plan"]
    assert (_report(limited)["phases_ms"]["plan"] == 0.0) is binary


def test_a_versioned_route_is_relayed_to_that_version(
    front_door: tuple[str, WorkerPool], digits: np.ndarray
) -> None:
    url, _ = front_door
    body = orjson.dumps(
        {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64],
                     "data": digits[:1].ravel().tolist()}]}
    )  # fmt: skip
    answer = httpx.post(f"{url}/v2/models/{MODEL}/versions/1/infer", content=body, trust_env=False)
    assert answer.status_code == 200, answer.text
    resp = decode_response(answer.content, answer.headers.get(HEADER_LENGTH))
    assert resp.model_version == "1" and len(_report(resp)["shards"]) == 1
    missing = httpx.post(f"{url}/v2/models/{MODEL}/versions/9/infer", content=body, trust_env=False)
    assert missing.status_code >= 400  # no target serves version 9: never a 200


def test_a_workers_400_reaches_the_client_word_for_word(front_door: tuple[str, WorkerPool]) -> None:
    url, pool = front_door
    body = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 63],
                                     "data": [0.0] * 63}]})  # fmt: skip
    via = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=body, trust_env=False)
    worker = httpx.post(f"{pool.endpoints[0]}/v2/models/{MODEL}/infer", content=body,
                        trust_env=False)  # fmt: skip
    assert via.status_code == worker.status_code == 400
    assert via.json()["error"] == worker.json()["error"]


async def test_a_dead_cheap_target_is_handed_over_and_nothing_is_lost(
    tmp_path: Path, digits: np.ndarray, direct: Callable[[np.ndarray], dict[str, np.ndarray]]
) -> None:
    with (
        WorkerPool(DEMO_REPOSITORY, 2) as pool,
        served_front_door(_config(tmp_path / "gpufan.yaml", pool)) as url,
    ):
        await _infer(url, digits[:1], binary=True)  # w0 answers, connections pooled
        pool.kill(0)
        reports = []
        for i in range(12):
            x = digits[i : i + 1]
            resp = await _infer(url, x, binary=True)
            np.testing.assert_array_equal(resp.outputs[0].data, direct(x)[resp.outputs[0].name])
            reports.append(_report(resp))
    attempts = [r["shards"][0]["attempts"] for r in reports]
    assert all(a[-1]["target"] == "w1" and a[-1]["ok"] for a in attempts)
    assert all(not a["ok"] for tries in attempts for a in tries if a["target"] == "w0")
    assert [a["target"] for a in attempts[-1]] == ["w1"]  # w0 benched: straight to w1
