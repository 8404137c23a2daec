"""The OIP codec: exact round trips for every datatype, and a clear 400 for every malformation."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core.errors import BadRequest
from core.wire.tensors import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

NUMERIC = [
    np.bool_,
    np.uint8,
    np.uint16,
    np.int8,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
]


def _roundtrip(arrays: dict[str, np.ndarray], binary: bool) -> InferRequest:
    req = InferRequest(tuple(Tensor(n, a) for n, a in arrays.items()))
    body, headers = encode_request(req, binary=binary)
    return decode_request(b"".join(body), headers.get(HEADER_LENGTH))


@pytest.mark.parametrize("binary", [True, False])
@given(data=st.data())
def test_numeric_tensors_round_trip_exactly(binary: bool, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(NUMERIC))
    arr = data.draw(
        hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
            # JSON has no NaN or infinity; the binary extension carries them (covered below)
            elements={"allow_nan": binary, "allow_infinity": binary}
            if np.dtype(dtype).kind == "f"
            else None,
        )
    )
    got = _roundtrip({"x": arr}, binary).inputs[0].data
    assert got.dtype == arr.dtype
    assert got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)  # NaN == NaN here


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_tensors_round_trip(binary: bool) -> None:
    arr = np.array([[b"ab", b""], [b"\xc3\xa9t\xc3\xa9", b"zz"]], dtype=object)
    got = _roundtrip({"s": arr}, binary).inputs[0].data
    assert got.shape == (2, 2)
    assert got.tolist() == arr.tolist()


def test_binary_inputs_are_views_of_the_body() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    req = InferRequest((Tensor("x", arr),))
    body, headers = encode_request(req, binary=True)
    raw = b"".join(body)
    got = decode_request(raw, headers[HEADER_LENGTH]).inputs[0].data
    assert got.base is not None and not got.flags.owndata  # no copy was made


def test_response_honours_per_output_binary_flags() -> None:
    resp = InferResponse("m", (Tensor("a", np.ones((2, 2), np.float32)), Tensor("b", np.arange(2))))
    body, headers = encode_response(resp, (RequestedOutput("a", True), RequestedOutput("b", False)))
    header = orjson.loads(body[0])
    assert "data" not in header["outputs"][0]
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert header["outputs"][1]["data"] == [0, 1]
    back = decode_response(b"".join(body), headers[HEADER_LENGTH])
    np.testing.assert_array_equal(back.outputs[0].data, np.ones((2, 2), np.float32))


def _json(doc: object) -> bytes:
    return orjson.dumps(doc)


def _x(**over: object) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2], **over}]}


BAD = [
    (b"{not json", None, "malformed JSON"),
    (b"[1, 2]", None, "must be an object"),
    (_json({}), None, "no 'inputs'"),
    (_json({"inputs": []}), None, "'inputs' is empty"),
    (_json(_x(datatype="FLOAT")), None, "unknown datatype 'FLOAT'"),
    (_json(_x(shape=[3])), None, "needs 3 elements, got 2"),
    (_json(_x(shape=[-1])), None, "non-negative integers"),
    (_json(_x(data=[1.5, 2], datatype="INT32")), None, "does not match datatype INT32"),
    (_json(_x(data=[1, 300], datatype="UINT8")), None, "outside the range of UINT8"),
    (_json(_x(data=[[1], [2, 3]])), None, "not a valid FP32 array"),
    (_json(_x(data=["a", "b"])), None, "does not match datatype FP32"),
    (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}), None, "neither 'data'"),
    (
        _json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}] * 2}),
        None,
        "duplicate input",
    ),
    (_json({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}), None, "string 'name'"),
    (b"{}", "x", "must be an integer"),
    (b"{}", "99", "outside the body"),
]


@pytest.mark.parametrize(("body", "header", "message"), BAD)
def test_malformed_requests_name_the_problem(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_request(body, header)


def test_truncated_binary_body_is_a_bad_request() -> None:
    req = InferRequest((Tensor("x", np.zeros((4, 4), np.float32)),))
    body, headers = encode_request(req, binary=True)
    raw = b"".join(body)[:-10]
    with pytest.raises(BadRequest, match="truncated"):
        decode_request(raw, headers[HEADER_LENGTH])


def test_binary_size_must_match_shape() -> None:
    header = _json(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [3],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    with pytest.raises(BadRequest, match="needs 12 bytes, got 8"):
        decode_request(header + b"\0" * 8, len(header))


def test_unclaimed_binary_bytes_are_rejected() -> None:
    req = InferRequest((Tensor("x", np.zeros(2, np.float32)),))
    body, headers = encode_request(req, binary=True)
    with pytest.raises(BadRequest, match="not claimed"):
        decode_request(b"".join(body) + b"junk", headers[HEADER_LENGTH])
