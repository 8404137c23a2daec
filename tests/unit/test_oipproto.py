"""The OIP's gRPC messages <-> gpufan's tensors and errors: round trips and refusals, no network."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from core.errors import (
    BadRequest,
    ClientError,
    MalformedResponse,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    TargetTimeout,
    TargetUnavailable,
    Unauthorized,
)
from core.wire.oipproto import (
    config_from_pb,
    config_to_pb,
    error_for_code,
    metadata_from_pb,
    metadata_to_pb,
    request_from_pb,
    request_to_pb,
    response_from_pb,
    response_to_pb,
    status_code,
)
from core.wire.tensors import InferRequest, InferResponse, RequestedOutput, Tensor

ARRAYS = {
    "FP32": np.array([[1.5, -2.25, np.nan]], dtype=np.float32),
    "FP16": np.array([[0.5, -1.0, 65504.0]], dtype=np.float16),
    "FP64": np.array([[1e300, -0.0, np.inf]]),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT64": np.array([[2**62, -(2**62), 0]], dtype=np.int64),
    "UINT64": np.array([[2**64 - 1, 0, 1]], dtype=np.uint64),
    "BOOL": np.array([[True, False, True]]),
    "BYTES": np.array([[b"gpu", "f\u00e4n".encode(), b""]], dtype=object),
}


def test_every_datatype_survives_a_request_and_a_response_round_trip() -> None:
    request = InferRequest(
        tuple(Tensor(f"in_{d}", a) for d, a in ARRAYS.items()),
        (RequestedOutput("out_FP32"),),
        "r-1",
        {"slo_ms": 250.0, "max_shards": 4, "tag": "a", "strict": True},
    )
    back = request_from_pb(pb.ModelInferRequest.FromString(
        request_to_pb("m", "2", request).SerializeToString()
    ))  # fmt: skip
    assert back.id == "r-1"
    assert back.parameters == {"slo_ms": 250.0, "max_shards": 4, "tag": "a", "strict": True}
    assert [o.name for o in back.outputs or ()] == ["out_FP32"]
    for sent, got in zip(request.inputs, back.inputs, strict=True):
        assert (got.name, got.data.dtype) == (sent.name, sent.data.dtype)
        np.testing.assert_array_equal(got.data, sent.data)

    response = InferResponse("m", request.inputs, "2", "r-1", {"queue_depth": 3, "u": 0.5})
    decoded = response_from_pb(response_to_pb(response), "t")
    assert decoded.parameters == {"queue_depth": 3, "u": 0.5}
    for sent, got in zip(response.outputs, decoded.outputs, strict=True):
        np.testing.assert_array_equal(got.data, sent.data)


def _typed(datatype: str, shape: list[int], **contents: object) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )
    return pb.ModelInferRequest(model_name="m", inputs=[tensor])


def test_typed_contents_are_read_and_checked_like_json() -> None:
    got = request_from_pb(_typed("INT16", [2, 2], int_contents=[1, -2, 3, 32767]))
    assert got.inputs[0].data.dtype == np.int16
    np.testing.assert_array_equal(got.inputs[0].data, [[1, -2], [3, 32767]])
    text = request_from_pb(_typed("BYTES", [2], bytes_contents=[b"a", b"bc"]))
    assert list(text.inputs[0].data) == [b"a", b"bc"]


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (_typed("INT8", [1], int_contents=[300]), "INT8"),
        (_typed("FP32", [2, 2], fp32_contents=[1.0, 2.0]), "needs 4 elements, got 2"),
        (_typed("FP16", [1], fp32_contents=[1.0]), "send it in raw contents"),
        (_typed("FP32", [1], int_contents=[1]), "contents.fp32_contents"),
        (_typed("NOPE", [1]), "unknown datatype 'NOPE'"),
        (_typed("BYTES", [3], bytes_contents=[b"a"]), "needs 3 elements, got 1"),
        (pb.ModelInferRequest(model_name="m"), "'inputs' is empty"),
    ],
)
def test_malformed_requests_are_bad_requests_naming_the_problem(
    message: pb.ModelInferRequest, fragment: str
) -> None:
    with pytest.raises(BadRequest, match=fragment):
        request_from_pb(message)


def test_raw_contents_must_match_the_inputs_and_their_shapes() -> None:
    msg = request_to_pb("m", None, InferRequest((Tensor("x", np.zeros((2, 3), np.float32)),)))
    msg.raw_input_contents.append(b"")
    with pytest.raises(BadRequest, match="2 raw contents for 1 tensors"):
        request_from_pb(msg)
    msg = request_to_pb("m", None, InferRequest((Tensor("x", np.zeros((2, 3), np.float32)),)))
    msg.inputs[0].shape[:] = [2, 4]
    with pytest.raises(BadRequest, match="needs 32 bytes, got 24"):
        request_from_pb(msg)
    twice = request_to_pb("m", None, InferRequest((Tensor("x", np.zeros(1)),) * 2))
    with pytest.raises(BadRequest, match="more than once"):
        request_from_pb(twice)


def test_a_targets_malformed_response_is_its_fault() -> None:
    msg = response_to_pb(InferResponse("m", (Tensor("y", np.zeros(4, np.float32)),)))
    msg.raw_output_contents[0] = b"\x00" * 3
    with pytest.raises(MalformedResponse, match=r"^t: "):
        response_from_pb(msg, "t")


def test_metadata_and_config_keep_rests_shape() -> None:
    doc = {
        "name": "m", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
        "parameters": {"execution_provider": "CPUExecutionProvider"},
    }  # fmt: skip
    assert metadata_from_pb(metadata_to_pb(doc)) == {
        k: v for k, v in doc.items() if k != "parameters"
    }
    config = {
        "name": "m", "max_batch_size": 8,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [64]}],
        "output": [{"name": "y", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}}],
        "dynamic_batching": {"max_queue_delay_microseconds": 200},
        "parameters": {"variant": {"string_value": "fp32"}},
        "gpufan_only": "ignored",
    }  # fmt: skip
    back = config_from_pb(config_to_pb(config))
    assert back["input"] == config["input"]
    assert back["output"] == config["output"]
    assert back["max_batch_size"] == 8
    assert back["parameters"] == {"variant": {"string_value": "fp32"}}


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BadRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Overloaded("x"), grpc.StatusCode.UNAVAILABLE),
        (TargetTimeout("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (TargetUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_errors_map_to_the_grpc_status_of_their_http_status(error: Exception, code: object) -> None:
    assert status_code(error) == code  # type: ignore[arg-type]


def test_a_targets_grpc_codes_map_back_as_http_statuses_do() -> None:
    bad = error_for_code(grpc.StatusCode.INVALID_ARGUMENT, "shape", "t")
    assert isinstance(bad, ClientError)
    assert (bad.status, str(bad)) == (400, "shape")
    assert error_for_code(grpc.StatusCode.NOT_FOUND, "m", "t").status == 404
    assert isinstance(error_for_code(grpc.StatusCode.DEADLINE_EXCEEDED, "", "t"), TargetTimeout)
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                 grpc.StatusCode.RESOURCE_EXHAUSTED):  # fmt: skip
        assert isinstance(error_for_code(code, "", "t"), TargetUnavailable), code
