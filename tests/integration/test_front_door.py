"""The front door end to end: real worker processes, a real `gpufan serve` process, loopback only.

GIVEN worker processes serving the demo model and a front door over them,
WHEN batches of awkward sizes, failing targets or bad requests arrive,
THEN results equal one direct onnxruntime run exactly, failures are re-dispatched, and every
client mistake gets a 4xx that names it while the server keeps serving.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import yaml

from core.cli.render import placement_report
from core.errors import ClientError
from core.frontdoor.workers import WorkerPool
from core.wire.client import OipClient, as_request
from core.wire.session import make_session
from core.wire.tensors import InferResponse
from gpu_containers import DEMO_REPOSITORY, DEMO_TEST_SET

MODEL = "digits"
StartFrontDoor = Callable[..., str]


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DEMO_TEST_SET) as data:
        return data["x"].astype(np.float32), data["y"]


@pytest.fixture(scope="module")
def direct() -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """One direct onnxruntime session on the same model: the reference result."""
    session = ort.InferenceSession(
        str(DEMO_REPOSITORY / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(outputs, session.run(None, {name: x}), strict=True))

    return run


@pytest.fixture(scope="module")
def workers() -> Iterator[WorkerPool]:
    with WorkerPool(DEMO_REPOSITORY, 3) as pool:
        yield pool


def _target(name: str, endpoint: str, **over: Any) -> dict[str, Any]:
    return {"name": name, "backend": "http", "endpoint": endpoint, "max_concurrency": 2, **over}


@pytest.fixture(scope="module")
def start_front_door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartFrontDoor]:
    """Factory: write a gpufan.yaml, run `gpufan serve` on a free port, return its URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(targets: list[dict[str, Any]], **sections: Any) -> str:
        config: dict[str, Any] = {"models": [{"name": MODEL}], "targets": targets, **sections}
        path = tmp_path_factory.mktemp("fd") / "gpufan.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "serve", "--config", str(path), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = b""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            m = re.search(rb"listening on (http://\S+)", line)
            if m:
                threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain
                return m.group(1).decode()
            if not line and proc.poll() is not None:
                break
        raise AssertionError(f"gpufan serve did not start:\n{seen.decode()}")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def front_door(workers: WorkerPool, start_front_door: StartFrontDoor) -> str:
    targets = [_target(f"w{i}", ep) for i, ep in enumerate(workers.endpoints)]
    # one-item shards allowed: awkward sizes then exercise every shard-count corner
    return start_front_door(targets, policy={"max_shard_items": 16, "min_shard_items": 1})


async def _infer(url: str, x: np.ndarray, *, binary: bool = True, **params: Any) -> InferResponse:
    async with make_session() as http:
        client = OipClient(url, http)
        request = as_request({"X": x}, binary=binary, parameters=params or None)
        return await client.infer(MODEL, request, binary=binary, timeout=60)


def _input_name(url: str) -> str:
    return httpx.get(f"{url}/v2/models/{MODEL}", trust_env=False).json()["inputs"][0]["name"]


def _check_exact(
    resp: InferResponse, expected: dict[str, np.ndarray], items: int
) -> dict[str, Any]:
    got = {t.name: t.data for t in resp.outputs}
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    report = placement_report(resp.parameters)
    assert report is not None
    indices = [s["index"] for s in report["shards"]]
    assert sorted(indices) == list(range(len(indices)))  # each shard once
    assert sum(s["items"] for s in report["shards"]) == items  # every row once
    return report


# ------------------------------------------------------------------------------------- results


def test_demo_input_name_is_X(front_door: str) -> None:
    # the tests below address the demo model's input by name
    assert _input_name(front_door) == "X"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("items", [1, 2, 7, 13, 16, 17, 97, 360])
async def test_sharded_result_equals_direct_run(
    front_door: str, digits: tuple[np.ndarray, np.ndarray], direct: Any, items: int, binary: bool
) -> None:
    x = digits[0][:items]
    resp = await _infer(front_door, x, binary=binary)
    report = _check_exact(resp, direct(x), items)
    assert len(report["shards"]) == max(-(-items // 16), min(items, 6))  # 3 targets x 2 slots


def test_tritonclient_against_front_door(front_door: str, digits: Any, direct: Any) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(front_door.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert meta["inputs"][0]["name"] == "X"
        x = digits[0][:37]
        expected = direct(x)
        for binary in (True, False):
            inp = triton.InferInput("X", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in expected]
            result = client.infer(MODEL, [inp], outputs=outs)
            for name, want in expected.items():
                np.testing.assert_array_equal(result.as_numpy(name), want)
            report = orjson.loads(result.get_response()["parameters"]["gpufan_report"])
            assert sum(s["items"] for s in report["shards"]) == 37
    finally:
        client.close()


# ------------------------------------------------------------------------------------ failures


async def test_killing_a_worker_mid_stream_loses_nothing(
    start_front_door: StartFrontDoor, digits: Any, direct: Any
) -> None:
    x = digits[0][:120]
    expected = direct(x)
    with WorkerPool(DEMO_REPOSITORY, 3) as pool:
        targets = [_target(f"k{i}", ep) for i, ep in enumerate(pool.endpoints)]
        # three clients keep 36 shards on 6 slots: admission must not shed them (what this
        # test asks is that an admitted request loses nothing; shedding is test_reliability's)
        policy = {"max_shard_items": 10, "breaker_failures": 100, "max_queued_shards_per_slot": 8}
        url = start_front_door(targets, policy=policy)
        reports: list[dict[str, Any]] = []
        three_done = asyncio.Event()

        async def client(n: int) -> None:
            for _ in range(n):
                resp = await _infer(url, x)
                reports.append(_check_exact(resp, expected, len(x)))
                if len(reports) >= 3:
                    three_done.set()

        async def killer() -> None:
            await three_done.wait()
            pool.kill(1)

        await asyncio.wait_for(asyncio.gather(client(8), client(8), client(8), killer()), 120)
    assert len(reports) == 24
    redispatched = sum(r["redispatched"] for r in reports)
    assert redispatched > 0
    failed_attempts = [  # a hedge cancelled because the other attempt won has not failed
        a
        for r in reports
        for s in r["shards"]
        for a in s["attempts"]
        if not a["ok"] and not a.get("cancelled")
    ]
    assert failed_attempts and all(a["target"] == "k1" for a in failed_attempts)
    # every re-dispatched shard finished somewhere else, exactly once
    for r in reports:
        for s in r["shards"]:
            assert s["attempts"][-1]["ok"] and s["target"] == s["attempts"][-1]["target"]
            assert sum(a["ok"] for a in s["attempts"]) == 1


class _Unavailable(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"error": "overloaded"}'
        self.send_response(503)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def sick_endpoints() -> Iterator[tuple[str, str]]:
    """A target that answers 503 to everything, and one that accepts but never answers."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)  # connections queue in the backlog and are never answered
    yield f"http://127.0.0.1:{server.server_port}", f"http://127.0.0.1:{hang.getsockname()[1]}"
    server.shutdown()
    hang.close()


async def test_unavailable_and_hanging_targets_are_redispatched_and_benched(
    workers: WorkerPool,
    start_front_door: StartFrontDoor,
    sick_endpoints: tuple[str, str],
    digits: Any,
    direct: Any,
) -> None:
    unavailable, hanging = sick_endpoints
    targets = [
        # the broken targets are the cheapest, so placement tries them first
        _target("sick", unavailable, usd_per_hour=0.0),
        _target("hang", hanging, usd_per_hour=0.0, timeout_s=0.5),
        _target("good", workers.endpoints[0], usd_per_hour=1.0),
    ]
    url = start_front_door(
        targets,
        policy={
            "max_shard_items": 8,
            "breaker_failures": 1,
            "breaker_cooldown_s": 60,
            "deadline_ms": 10_000,
        },
    )
    x = digits[0][:24]
    expected = direct(x)
    started = time.perf_counter()
    first = _check_exact(await _infer(url, x), expected, 24)
    assert time.perf_counter() - started < 10
    tried = {a["target"] for s in first["shards"] for a in s["attempts"] if not a["ok"]}
    assert tried == {"sick", "hang"}
    errors = " ".join(a["error"] for s in first["shards"] for a in s["attempts"] if not a["ok"])
    assert "503" in errors and "timed out" in errors
    assert {s["target"] for s in first["shards"]} == {"good"}

    # both breakers are open now: the next request goes straight to the healthy target
    second = _check_exact(await _infer(url, x), expected, 24)
    assert all(len(s["attempts"]) == 1 and s["target"] == "good" for s in second["shards"])
    async with httpx.AsyncClient(trust_env=False) as http:
        metrics = (await http.get(f"{url}/metrics")).text
    assert re.search(r'gpufan_target_breaker_open\{target="sick"\} 1(\.0)?$', metrics, re.M)
    assert re.search(r'gpufan_target_breaker_open\{target="hang"\} 1(\.0)?$', metrics, re.M)


async def test_with_every_target_benched_the_503_says_when_to_come_back(
    start_front_door: StartFrontDoor, sick_endpoints: tuple[str, str], digits: Any
) -> None:
    unavailable, _ = sick_endpoints
    url = start_front_door(
        [_target("sick", unavailable)],
        policy={"breaker_failures": 1, "breaker_cooldown_s": 7.5, "max_attempts": 1},
    )
    body = {"inputs": [{"name": "X", "shape": [2, 64], "datatype": "FP32",
                        "data": digits[0][:2].ravel().tolist()}]}  # fmt: skip
    async with httpx.AsyncClient(trust_env=False) as http:
        first = await http.post(f"{url}/v2/models/digits/infer", json=body)
        benched = await http.post(f"{url}/v2/models/digits/infer", json=body)
    assert first.status_code == 502, first.text  # the try that opened the breaker
    assert benched.status_code == 503, benched.text
    assert benched.headers["retry-after"] == "8"  # the cool-down, rounded up
    assert "healthy" in benched.json()["error"]


# ---------------------------------------------------------------------------------- bad input


def _post(
    url: str, body: bytes, headers: dict[str, str] | None = None, path: str = "infer"
) -> httpx.Response:
    return httpx.post(
        f"{url}/v2/models/{MODEL}/{path}", content=body, headers=headers or {}, trust_env=False
    )


def _j(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _x(shape: list[int], datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    count = int(np.prod(shape))
    return {
        "inputs": [{"name": "X", "datatype": datatype, "shape": shape, "data": [0] * count}],
        **extra,
    }


BAD_REQUESTS = [
    ("malformed JSON", b'{"inputs": [', None, 400, "malformed JSON"),
    ("wrong datatype", _j(_x([2, 64], "INT64")), None, 400, "FP32"),
    ("wrong shape", _j(_x([2, 63])), None, 400, "shape"),
    (
        "unknown input",
        _j({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}]}),
        None,
        400,
        "nope",
    ),
    ("unknown output", _j(_x([2, 64], outputs=[{"name": "nope"}])), None, 400, "nope"),
    ("zero items", _j(_x([0, 64])), None, 400, "item"),
    ("bad slo_ms", _j(_x([1, 64], parameters={"slo_ms": -5})), None, 400, "slo_ms"),
    (
        "truncated binary",
        _j(
            {
                "inputs": [
                    {
                        "name": "X",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            }
        )
        + b"\0" * 10,
        "header",
        400,
        "truncated",
    ),
    ("bad header length", b"{}", "nonsense", 400, "Inference-Header-Content-Length"),
]


@pytest.mark.parametrize(
    ("label", "body", "header", "status", "message"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_4xx_naming_the_problem(
    front_door: str, label: str, body: bytes, header: str | None, status: int, message: str
) -> None:
    headers = {}
    if header == "header":
        headers["inference-header-content-length"] = str(body.index(b"}]}") + 3)
    elif header:
        headers["inference-header-content-length"] = header
    resp = _post(front_door, body, headers)
    assert resp.status_code == status, resp.text
    assert message.lower() in resp.json()["error"].lower()


def test_unknown_model_wrong_method_and_oversize(
    workers: WorkerPool, start_front_door: StartFrontDoor, digits: Any
) -> None:
    url = start_front_door([_target("w0", workers.endpoints[0])], server={"max_body_mb": 0.01})
    resp = httpx.post(f"{url}/v2/models/nope/infer", content=_j(_x([1, 64])), trust_env=False)
    assert resp.status_code == 404 and "unknown model 'nope'" in resp.json()["error"]
    resp = httpx.get(f"{url}/v2/models/{MODEL}/infer", trust_env=False)
    assert resp.status_code == 405
    resp = _post(url, b"x" * 20_000)
    assert resp.status_code == 413 and "exceeds the limit" in resp.json()["error"]
    # and it still serves
    resp = _post(url, _j(_x([1, 64])))
    assert resp.status_code == 200


async def test_worker_client_errors_pass_through_word_for_word(front_door: str) -> None:
    with pytest.raises(ClientError) as info:
        async with make_session() as http:
            await OipClient(front_door, http).infer(
                MODEL, as_request({"X": np.zeros((3, 5), np.float32)})
            )
    assert info.value.status == 400


def test_request_constraints_reach_the_cost_model(front_door: str) -> None:
    def post(**params: Any) -> httpx.Response:
        return _post(front_door, _j(_x([4, 64], parameters=params)))

    resp = post(origin="aws:us-east-1", slo_ms=5000, clouds="onprem")
    assert resp.status_code == 200, resp.text
    report = orjson.loads(resp.json()["parameters"]["gpufan_report"])
    placement = report["placement"]
    assert placement["origin"] == "aws:us-east-1" and placement["slo_ms"] == 5000
    assert placement["targets"] and all(
        "cost" in t and "latency" in t for t in placement["targets"]
    )
    # gpufan.yaml gives this model no repository: its figures are unknown, and said to be
    assert placement["model"]["profile_confidence"] == "unknown"
    assert placement["model"]["flops_per_item"] is None
    assert all(t["speed"].startswith("unknown") for t in placement["targets"])
    resp = post(regions="nowhere")
    assert resp.status_code == 503 and "no target may run model 'digits'" in resp.json()["error"]
    resp = post(objective="fastest")
    assert resp.status_code == 400 and "objective" in resp.json()["error"]
    resp = post(max_usd=-1)
    assert resp.status_code == 400 and "max_usd" in resp.json()["error"]
