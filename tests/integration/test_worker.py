"""A real worker process on loopback, driven by Triton's own client and by raw HTTP.

Two workers serve the whole module: ``worker`` (digits v1+v2 and the datatype model, defaults)
and ``guarded`` (bearer token, 1 MiB body limit, a 20 ms batching window so that concurrent
requests are sure to coalesce).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from gpu_containers import DEMO_TEST_SET
from gpu_containers.worker import main as worker_main
from tests.integration.conftest import TYPES_SAMPLE, versioned_repo

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, demo_repo: Path, types_repo: Path) -> Path:
    return versioned_repo(tmp_path_factory.mktemp("worker_repo"), demo_repo, types_repo)


@pytest.fixture(scope="module")
def worker(module_worker_pool, repo: Path) -> str:
    return module_worker_pool(repo).endpoints[0]


@pytest.fixture(scope="module")
def guarded(module_worker_pool, repo: Path) -> str:
    pool = module_worker_pool(
        repo, 1, ["--max-body-mb", "1", "--max-queue-delay-us", "20000"],
        env={"GPUFAN_WORKER_TOKEN": TOKEN},
    )  # fmt: skip
    return pool.endpoints[0]


@pytest.fixture(scope="module")
def client(worker: str) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=worker.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    test = np.load(DEMO_TEST_SET)
    return test["x"], test["y"]


@pytest.fixture(scope="module")
def direct(repo: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # as the worker runs it, so results match bit for bit
    return ort.InferenceSession(str(repo / "digits" / "1" / "model.onnx"), opts)


# ------------------------------------------------------------------------------ tritonclient


def test_health_metadata_and_config_through_tritonclient(
    client: triton.InferenceServerClient,
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.get_server_metadata()["name"] == "gpufan-worker"

    meta = client.get_model_metadata("digits")
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "label": [-1], "probabilities": [-1, 10],
    }  # fmt: skip
    assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"

    config = client.get_model_config("digits")
    assert config["max_batch_size"] == 256
    assert config["input"] == [{"name": "X", "data_type": "TYPE_FP32", "dims": [64]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 200
    assert client.get_model_config("types")["input"][-1]["data_type"] == "TYPE_STRING"


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False)])
def test_infer_matches_a_direct_onnxruntime_run_exactly(
    client: triton.InferenceServerClient,
    direct: ort.InferenceSession,
    digits: tuple[np.ndarray, np.ndarray],
    binary_in: bool,
    binary_out: bool,
) -> None:
    x = digits[0][:17]
    inp = triton.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    names = ("label", "probabilities")
    wanted = [triton.InferRequestedOutput(n, binary_data=binary_out) for n in names]

    result = client.infer("digits", [inp], outputs=wanted, request_id="req-7")

    label, probabilities = direct.run(list(names), {"X": x})
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_version"] == "2"
    params = response["parameters"]
    assert isinstance(params["queue_depth"], int)
    assert 0.0 <= params["utilization"] <= 1.0
    assert params["items_per_s"] >= 0.0


def test_only_the_requested_outputs_come_back_and_versions_are_routed(
    client: triton.InferenceServerClient, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x = digits[0][:4]
    inp = triton.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)

    result = client.infer(
        "digits", [inp], model_version="1", outputs=[triton.InferRequestedOutput("label")]
    )

    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["label"]
    assert response["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("label"), digits[1][:4])


@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_round_trips(client: triton.InferenceServerClient, binary: bool) -> None:
    arrays = TYPES_SAMPLE
    inputs = []
    for datatype, arr in arrays.items():
        inp = triton.InferInput(f"in_{datatype}", list(arr.shape), datatype)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    outputs = [triton.InferRequestedOutput(f"out_{d}", binary_data=binary) for d in arrays]

    result = client.infer("types", inputs, outputs=outputs)

    for datatype, arr in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got.dtype == arr.dtype, datatype
        if datatype == "BYTES" and not binary:  # tritonclient hands JSON strings back as str
            got = np.vectorize(str.encode, otypes=[object])(got)
        np.testing.assert_array_equal(got, arr, err_msg=datatype)


def test_tritonclient_sees_a_client_error_as_an_exception_with_the_message(
    client: triton.InferenceServerClient,
) -> None:
    inp = triton.InferInput("X", [1, 64], "INT64")
    inp.set_data_from_numpy(np.zeros((1, 64), dtype=np.int64))

    with pytest.raises(InferenceServerException, match="expects FP32, got INT64"):
        client.infer("digits", [inp])


# ------------------------------------------------------------------------- bad requests (raw)

_X1 = {"name": "X", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}


def _json(doc: object) -> bytes:
    return orjson.dumps(doc)


def _truncated_binary() -> tuple[bytes, dict[str, str]]:
    header = _json({"inputs": [{
        "name": "X", "datatype": "FP32", "shape": [2, 64],
        "parameters": {"binary_data_size": 512},
    }]})  # fmt: skip
    return header + b"\0" * 100, {"Inference-Header-Content-Length": str(len(header))}


BAD_REQUESTS = [
    # (id, method, path, body, headers, status, fragment of the error)
    ("malformed-json", "POST", "/v2/models/digits/infer", b"{nope", {}, 400, "malformed JSON"),
    ("no-inputs", "POST", "/v2/models/digits/infer", _json({"id": "x"}), {}, 400, "no 'inputs'"),
    ("wrong-datatype", "POST", "/v2/models/digits/infer",
     _json({"inputs": [{**_X1, "datatype": "INT64", "data": [1] * 64}]}), {}, 400,
     "input 'X' expects FP32, got INT64"),
    ("wrong-shape", "POST", "/v2/models/digits/infer",
     _json({"inputs": [{**_X1, "shape": [1, 63], "data": [0.5] * 63}]}), {}, 400,
     "expects shape [-1, 64] (-1 = any), got [1, 63]"),
    ("wrong-rank", "POST", "/v2/models/digits/infer",
     _json({"inputs": [{**_X1, "shape": [64]}]}), {}, 400, "got [64]"),
    ("zero-items", "POST", "/v2/models/digits/infer",
     _json({"inputs": [{**_X1, "shape": [0, 64], "data": []}]}), {}, 400, "batch of zero items"),
    ("missing-input", "POST", "/v2/models/digits/infer",
     _json({"inputs": [{**_X1, "name": "pixels"}]}), {}, 400,
     "missing input(s) ['X']; unexpected input(s) ['pixels']"),
    ("unknown-model", "POST", "/v2/models/nope/infer", _json({"inputs": [_X1]}), {}, 404,
     "unknown model 'nope'; available: digits, types"),
    ("unknown-version", "POST", "/v2/models/digits/versions/9/infer", _json({"inputs": [_X1]}),
     {}, 404, "no version '9'; available: 1, 2"),
    ("unknown-output", "POST", "/v2/models/digits/infer",
     _json({"inputs": [_X1], "outputs": [{"name": "logits"}]}), {}, 400,
     "unknown output(s) ['logits']; model 'digits' has ['label', 'probabilities']"),
    ("truncated-binary", "POST", "/v2/models/digits/infer", *_truncated_binary(), 400,
     "binary data truncated"),
    ("bad-header-length", "POST", "/v2/models/digits/infer", _json({"inputs": [_X1]}),
     {"Inference-Header-Content-Length": "ten"}, 400, "must be an integer"),
    ("header-length-past-body", "POST", "/v2/models/digits/infer", _json({"inputs": [_X1]}),
     {"Inference-Header-Content-Length": "99999"}, 400, "outside the body"),
    ("wrong-method", "GET", "/v2/models/digits/infer", b"", {}, 405, "use POST"),
    ("unknown-route", "GET", "/v2/nothing", b"", {}, 404, "no route"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_4xx_naming_the_problem(
    worker: str, method: str, path: str, body: bytes, headers: dict[str, str], status: int,
    fragment: str,
) -> None:  # fmt: skip
    with httpx.Client(base_url=worker, timeout=10) as http:
        response = http.request(method, path, content=body, headers=headers)
        assert response.status_code == status, response.text
        assert fragment in response.json()["error"]

        still = http.post("/v2/models/digits/infer", content=_json({"inputs": [_X1]}))
        assert still.status_code == 200


def test_an_oversize_body_is_refused_with_413(guarded: str) -> None:
    body = _json({"inputs": [{**_X1, "shape": [5000, 64], "data": [0.25] * (5000 * 64)}]})
    assert len(body) > 1024 * 1024

    with httpx.Client(base_url=guarded, headers=AUTH, timeout=10) as http:
        response = http.post("/v2/models/digits/infer", content=body)
        assert response.status_code == 413
        assert "exceeds the limit of 1048576 bytes" in response.json()["error"]
        assert http.post("/v2/models/digits/infer", content=_json({"inputs": [_X1]})).is_success


def test_bearer_token_guards_everything_but_health(guarded: str) -> None:
    with httpx.Client(base_url=guarded, timeout=10) as http:
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for path in ("/v2", "/v2/models/digits", "/metrics"):
                response = http.get(path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert "bearer token" in response.json()["error"]
        assert http.get("/v2/models/digits", headers=AUTH).status_code == 200
        infer = http.post("/v2/models/digits/infer", content=_json({"inputs": [_X1]}), headers=AUTH)
        assert infer.status_code == 200


# ------------------------------------------------------------------------ batching and metrics


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(want)}\}})? (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name}{{{want}}} not in /metrics"
    return float(match.group(1))


async def test_concurrent_single_item_requests_are_coalesced_and_correct(
    guarded: str, direct: ort.InferenceSession, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x = digits[0][:48]
    label, probabilities = direct.run(["label", "probabilities"], {"X": x})
    limits = httpx.Limits(max_connections=48)

    async with httpx.AsyncClient(base_url=guarded, headers=AUTH, limits=limits, timeout=20) as http:

        async def one(i: int) -> dict[str, np.ndarray]:
            row = x[i : i + 1]
            header = _json({
                "id": str(i),
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64],
                            "parameters": {"binary_data_size": row.nbytes}}],
                "parameters": {"binary_data_output": True},
            })  # fmt: skip
            response = await http.post(
                "/v2/models/digits/infer",
                content=header + row.tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
            assert response.status_code == 200, response.text
            n = int(response.headers["inference-header-content-length"])
            doc = orjson.loads(response.content[:n])
            assert doc["id"] == str(i)
            blob, out = memoryview(response.content)[n:], {}
            for t in doc["outputs"]:
                size = t["parameters"]["binary_data_size"]
                dtype = np.int64 if t["datatype"] == "INT64" else np.float32
                out[t["name"]] = np.frombuffer(blob[:size], dtype).reshape(t["shape"])
                blob = blob[size:]
            return out

        results = await asyncio.gather(*(one(i) for i in range(len(x))))
        metrics = (await http.get("/metrics")).text

    for i, out in enumerate(results):
        assert out["label"][0] == label[i]
        np.testing.assert_allclose(out["probabilities"][0], probabilities[i], rtol=1e-5, atol=1e-7)
    runs = _metric(metrics, "gpufan_worker_batch_size_count", model="digits")
    items = _metric(metrics, "gpufan_worker_batch_size_sum", model="digits")
    assert items >= len(x)
    assert runs < len(x), "no request was coalesced"


def test_metrics_count_requests_by_outcome_and_report_no_gpu(worker: str) -> None:
    with httpx.Client(base_url=worker, timeout=10) as http:
        http.post("/v2/models/digits/infer", content=_json({"inputs": [_X1]}))
        http.post("/v2/models/digits/infer", content=_json({"inputs": [{**_X1, "name": "z"}]}))
        response = http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for outcome in ("ok", "client_error"):
        assert _metric(text, "gpufan_worker_requests_total", model="digits", outcome=outcome) >= 1
    assert _metric(text, "gpufan_gpu_available") == 0
    assert _metric(text, "gpufan_worker_queue_depth", model="digits") == 0
    assert _metric(text, "gpufan_worker_request_seconds_count", model="digits") >= 1
    assert _metric(text, "gpufan_worker_queue_seconds_count", model="digits") >= 1


def test_the_worker_cli_exits_2_with_a_clear_message_on_a_bad_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert worker_main(["--model-repo", str(tmp_path), "--port", "0"]) == 2
    assert "holds no model" in capsys.readouterr().err
