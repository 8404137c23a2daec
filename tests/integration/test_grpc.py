"""The Open Inference Protocol over gRPC: Triton's own ``tritonclient.grpc`` against a real worker
process and a real ``gpufan serve`` process, and a front door reaching its targets over gRPC.

GIVEN a worker started with ``--grpc-port 0`` (and a guarded one: token, 1 MiB limit), and a
front door started with ``--grpc-port 0`` whose two targets are gRPC workers (backend ``grpc``),
WHEN tritonclient.grpc asks what tritonclient.http asks in test_worker / test_front_door,
THEN metadata, config and results are the same (results equal a direct onnxruntime run bit for
bit, sharded or not), and every client mistake gets the gRPC status its HTTP status maps to,
with the same message REST gives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tgrpc
import yaml
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg
from tritonclient.utils import InferenceServerException

from core.cli.render import placement_report
from core.frontdoor.workers import WorkerPool
from gpu_containers import DEMO_TEST_SET
from tests.integration.conftest import TYPES_SAMPLE, free_port, served_front_door, versioned_repo

TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, demo_repo: Path, types_repo: Path) -> Path:
    return versioned_repo(tmp_path_factory.mktemp("grpc_repo"), demo_repo, types_repo)


@pytest.fixture(scope="module")
def workers(module_worker_pool: Any, repo: Path) -> WorkerPool:
    pool: WorkerPool = module_worker_pool(repo, 2, ["--grpc-port", "0"])
    return pool


@pytest.fixture(scope="module")
def guarded(module_worker_pool: Any, repo: Path) -> WorkerPool:
    pool: WorkerPool = module_worker_pool(
        repo, 1, ["--grpc-port", "0", "--max-body-mb", "1"], env={"GPUFAN_WORKER_TOKEN": TOKEN}
    )
    return pool


@pytest.fixture(scope="module")
def front_door(
    workers: WorkerPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """`gpufan serve` over the two workers' gRPC ports: (its REST URL, its gRPC address)."""
    targets = [
        {"name": f"g{i}", "backend": "grpc", "endpoint": f"grpc://{address}", "max_concurrency": 2}
        for i, address in enumerate(workers.grpc_addresses)
    ]
    config = {
        "models": [{"name": "digits"}],
        "targets": targets,
        "policy": {"max_shard_items": 16, "min_shard_items": 1},
    }
    path = tmp_path_factory.mktemp("fd") / "gpufan.yaml"
    path.write_text(yaml.safe_dump(config))
    grpc_port = free_port()
    with served_front_door(path, args=["--grpc-port", str(grpc_port)]) as url:
        yield url, f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DEMO_TEST_SET) as data:
        return data["x"].astype(np.float32), data["y"]


@pytest.fixture(params=["worker", "front_door"])
def server(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The REST URL and gRPC address of each server tritonclient.grpc is run against."""
    if request.param == "worker":
        pool: WorkerPool = request.getfixturevalue("workers")
        return pool.endpoints[0], str(pool.grpc_addresses[0])
    pair: tuple[str, str] = request.getfixturevalue("front_door")
    return pair


@pytest.fixture
def client(server: tuple[str, str]) -> Iterator[tgrpc.InferenceServerClient]:
    c = tgrpc.InferenceServerClient(server[1])
    yield c
    c.close()


def _x_input(x: np.ndarray) -> tgrpc.InferInput:
    inp = tgrpc.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


# ------------------------------------------------------------------------- tritonclient.grpc


def test_health_metadata_and_config_match_rest(
    client: tgrpc.InferenceServerClient, server: tuple[str, str]
) -> None:
    rest = server[0]
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert (
        client.get_server_metadata(as_json=True)["name"] == httpx.get(f"{rest}/v2").json()["name"]
    )

    meta = client.get_model_metadata("digits", as_json=True)
    want = httpx.get(f"{rest}/v2/models/digits").json()
    assert meta["name"] == "digits"
    assert meta["platform"] == want["platform"]
    assert meta["versions"] == want["versions"]
    # protobuf's JSON spells int64 dims as strings: compare the dims as numbers
    for key in ("inputs", "outputs"):
        got = [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta[key]]
        assert got == want[key], key
    assert meta["inputs"][0]["name"] == "X"

    config = client.get_model_config("digits", as_json=True)["config"]
    rest_config = httpx.get(f"{rest}/v2/models/digits/config").json()
    assert config["max_batch_size"] == rest_config["max_batch_size"]
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        (t["name"], t["data_type"], t["dims"]) for t in rest_config["input"]
    ]


def test_infer_matches_a_direct_onnxruntime_run_exactly(
    client: tgrpc.InferenceServerClient, direct: Any, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x = digits[0][:17]
    outputs = [tgrpc.InferRequestedOutput(n) for n in ("label", "probabilities")]

    result = client.infer("digits", [_x_input(x)], outputs=outputs, request_id="req-7")

    want = direct(x)
    for name in ("label", "probabilities"):
        got = result.as_numpy(name)
        assert got.dtype == want[name].dtype, name
        np.testing.assert_array_equal(got, want[name], err_msg=name)
    assert result.get_response().id == "req-7"


def test_only_the_requested_outputs_come_back_and_versions_are_routed(
    client: tgrpc.InferenceServerClient, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x = digits[0][:4]
    result = client.infer(
        "digits", [_x_input(x)], model_version="1", outputs=[tgrpc.InferRequestedOutput("label")]
    )

    response = result.get_response()
    assert [o.name for o in response.outputs] == ["label"]
    assert response.model_version == "1"
    np.testing.assert_array_equal(result.as_numpy("label"), digits[1][:4])


def test_typed_contents_are_the_json_equivalent(
    server: tuple[str, str], direct: Any, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """gRPC's counterpart of JSON data: values in ``contents.fp32_contents``, not raw bytes."""
    x = digits[0][:5]
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="X", datatype="FP32", shape=list(x.shape),
        contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()),
    )  # fmt: skip
    with grpc.insecure_channel(server[1]) as channel:
        answer = pbg.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="digits", inputs=[tensor]), timeout=30
        )
    raw = dict(zip([o.name for o in answer.outputs], answer.raw_output_contents, strict=True))
    want = direct(x)
    np.testing.assert_array_equal(np.frombuffer(raw["label"], np.int64), want["label"])
    np.testing.assert_array_equal(
        np.frombuffer(raw["probabilities"], np.float32).reshape(5, 10), want["probabilities"]
    )


def test_a_client_error_has_the_grpc_status_and_rests_message(
    client: tgrpc.InferenceServerClient, server: tuple[str, str]
) -> None:
    bad = tgrpc.InferInput("X", [1, 63], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 63), np.float32))
    rest = httpx.post(
        f"{server[0]}/v2/models/digits/infer",
        content=orjson.dumps(
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 63], "data": [0.0] * 63}]}
        ),
        timeout=30,
    )
    assert rest.status_code == 400

    with pytest.raises(InferenceServerException) as info:
        client.infer("digits", [bad])

    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == rest.json()["error"]
    assert "expects shape [-1, 64]" in info.value.message()


@pytest.mark.parametrize(
    ("model", "build", "code", "fragment"),
    [
        ("nope", lambda: np.zeros((1, 64), np.float32), "NOT_FOUND", "nope"),
        ("digits", lambda: np.zeros((1, 64), np.int64), "INVALID_ARGUMENT", "expects FP32"),
    ],
    ids=["unknown-model", "wrong-datatype"],
)
def test_bad_requests_get_the_status_their_http_status_maps_to(
    client: tgrpc.InferenceServerClient,
    model: str,
    build: Callable[[], np.ndarray],
    code: str,
    fragment: str,
) -> None:
    x = build()
    inp = tgrpc.InferInput("X", list(x.shape), "INT64" if x.dtype == np.int64 else "FP32")
    inp.set_data_from_numpy(x)

    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [inp])

    assert info.value.status() == f"StatusCode.{code}"
    assert fragment in info.value.message()
    assert client.is_server_ready()  # and it keeps serving


def test_every_datatype_round_trips_on_the_worker(workers: WorkerPool) -> None:
    arrays = TYPES_SAMPLE
    inputs = []
    for datatype, arr in arrays.items():
        inp = tgrpc.InferInput(f"in_{datatype}", list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    client = tgrpc.InferenceServerClient(str(workers.grpc_addresses[0]))
    try:
        result = client.infer("types", inputs, model_version="1")
    finally:
        client.close()
    for datatype, arr in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got.dtype == arr.dtype, datatype
        np.testing.assert_array_equal(got, arr, err_msg=datatype)


def test_bearer_token_guards_everything_but_health(guarded: WorkerPool) -> None:
    client = tgrpc.InferenceServerClient(str(guarded.grpc_addresses[0]))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            with pytest.raises(InferenceServerException) as info:
                client.get_model_metadata("digits", headers=headers)
            assert info.value.status() == "StatusCode.UNAUTHENTICATED", headers
            assert "bearer token" in info.value.message()
        meta = client.get_model_metadata("digits", headers=dict(AUTH), as_json=True)
        assert meta["name"] == "digits"
    finally:
        client.close()


def test_an_oversize_message_is_refused_and_the_worker_keeps_serving(
    guarded: WorkerPool,
) -> None:
    client = tgrpc.InferenceServerClient(str(guarded.grpc_addresses[0]))
    try:
        big = np.zeros((5000, 64), np.float32)  # 1.28 MB > the 1 MiB limit
        with pytest.raises(InferenceServerException) as info:
            client.infer("digits", [_x_input(big)], headers=dict(AUTH))
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        small = client.infer("digits", [_x_input(big[:2])], headers=dict(AUTH))
        assert small.as_numpy("label").shape == (2,)
    finally:
        client.close()


def test_grpc_requests_are_counted_on_metrics(workers: WorkerPool) -> None:
    client = tgrpc.InferenceServerClient(str(workers.grpc_addresses[1]))
    try:
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("nope")
        client.get_model_metadata("digits")
    finally:
        client.close()
    text = httpx.get(f"{workers.endpoints[1]}/metrics").text
    assert re.search(r'^gpufan_grpc_requests_total\{code="OK",method="ModelMetadata"\} [1-9]', text,
                     re.MULTILINE), text  # fmt: skip
    assert re.search(r'code="NOT_FOUND",method="ModelMetadata"\} 1\.0$', text, re.MULTILINE)


# ---------------------------------------------------------------- the front door over gRPC


@pytest.mark.parametrize("items", [1, 16, 17, 97, 360])
def test_sharded_requests_over_grpc_both_ways_equal_a_direct_run(
    front_door: tuple[str, str],
    direct: Any,
    digits: tuple[np.ndarray, np.ndarray],
    items: int,
) -> None:
    """tritonclient.grpc -> front door -> grpc backend -> two workers' gRPC ports."""
    x = digits[0][:items]
    client = tgrpc.InferenceServerClient(front_door[1])
    try:
        result = client.infer("digits", [_x_input(x)])
    finally:
        client.close()

    want = direct(x)
    for name, arr in want.items():
        np.testing.assert_array_equal(result.as_numpy(name), arr, err_msg=name)
    params = {k: v.string_param for k, v in result.get_response().parameters.items()}
    report = placement_report(params)
    assert report is not None
    shards = report["shards"]
    assert sorted(s["index"] for s in shards) == list(range(len(shards)))
    assert sum(s["items"] for s in shards) == items
    assert {s["target"] for s in shards} <= {"g0", "g1"}
    assert len(shards) == max(-(-items // 16), min(items, 4))  # 2 targets x 2 slots


def test_rest_clients_reach_grpc_targets_through_the_front_door(
    front_door: tuple[str, str], direct: Any, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    import tritonclient.http as thttp

    x = digits[0][:40]
    client = thttp.InferenceServerClient(front_door[0].removeprefix("http://"))
    try:
        inp = thttp.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("digits", [inp])
        meta = client.get_model_metadata("digits")
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("probabilities"), direct(x)["probabilities"])
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]


def test_a_grpc_target_that_is_down_is_redispatched(
    workers: WorkerPool, tmp_path: Path, direct: Any, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """A dead gRPC endpoint is UNAVAILABLE, which the dispatcher re-sends elsewhere."""
    import asyncio

    from core.config import settings_from_dict
    from core.frontdoor.runtime import FrontDoorRuntime
    from core.wire.tensors import InferRequest, Tensor

    settings = settings_from_dict(
        {
            "models": [{"name": "digits"}],
            "targets": [
                {"name": "dead", "backend": "grpc", "endpoint": "grpc://127.0.0.1:9",
                 "timeout_s": 5},
                {"name": "alive", "backend": "grpc",
                 "endpoint": f"grpc://{workers.grpc_addresses[0]}", "usd_per_hour": 0.0},
            ],
            "policy": {"max_shard_items": 8, "min_shard_items": 1},
        },
        source="test",
    )  # fmt: skip
    x = digits[0][:32]

    async def run() -> Any:
        async with FrontDoorRuntime(settings, settings.targets, env={}) as rt:
            return await rt.front_door.infer("digits", None, InferRequest((Tensor("X", x),)))

    response = asyncio.run(run())
    got = {t.name: t.data for t in response.outputs}
    np.testing.assert_array_equal(got["probabilities"], direct(x)["probabilities"])
    assert {s.target for s in response.report.result.shards} == {"alive"}
    attempts = [[a.target for a in shard.attempts] for shard in response.report.result.shards]
    assert ["dead", "alive"] in attempts  # the dead target was tried, and its shards re-sent
    assert response.report.result.redispatched == attempts.count(["dead", "alive"])
