"""The OIP codec: exact round trips for every datatype, and a clear 400 for every malformation."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.http import InferResult

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
            # NaN and infinities too: JSON spells them as strings (the binary extension as bits)
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
    (_json(_x(data=[1.5, 2], datatype="INT32")), None, "INT32 data must be integers, got 1.5"),
    (_json(_x(data=[[1], [2, 3]])), None, "not a valid FP32 array"),
    (_json(_x(data=["a", "b"])), None, "FP32 data must be numbers"),
    (_json(_x(data=["nan", 1])), None, "FP32 data must be numbers"),
    (_json(_x(data=[0, 1], datatype="BOOL")), None, "BOOL data must be true/false"),
    (_json(_x(shape=[1] * 65)), None, "at most 64 non-negative"),
    # element counts that overflow int64 (to 0, or to what the data holds) are exact here
    (
        _json(_x(shape=[2**32, 2**32], data=[])),
        None,
        r"'x': shape \[4294967296, 4294967296\] is larger",
    ),
    (_json(_x(shape=[2**63, 2], data=[])), None, "'x': shape .* is larger than any array"),
    (_json(_x(shape=[0, 2**62, 4], data=[])), None, "'x': shape .* is larger than any array"),
    (_json(_x(shape=[2**30, 64], data=[])), None, "needs 68719476736 elements, got 0"),
    # values out of their datatype's range name the tensor, the value and the range
    (_json(_x(data=[1, 1e39])), None, r"'x': 1e\+39 is out of range for FP32"),
    (_json(_x(data=[7e4, 1], datatype="FP16")), None, "70000.0 is out of range for FP16"),
    (_json(_x(data=[1, 300], datatype="UINT8")), None, "integer 300 is out of range for UINT8"),
    (_json(_x(data=[-1, 2], datatype="UINT8")), None, "integer -1 is out of range for UINT8"),
    (_json(_x(data=[1, 2**63], datatype="INT64")), None, "integer 9223372036854775808 is out"),
    (
        b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "data": [1, %d]}]}' % 2**64,
        None,
        "'x': an integer beyond 64 bits is out of range for INT64",
    ),
    (
        b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [%d]}]}'
        % (-(2**63) - 1),
        None,
        "'x': an integer beyond 64 bits is out of range for INT64",
    ),
    (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}), None, "neither 'data'"),
    (
        _json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}] * 2}),
        None,
        r"input\(s\) given more than once: \['x'\]",
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


def test_binary_data_size_is_an_integer_not_a_bool() -> None:
    header = _binary_header("UINT8", [1], True)
    with pytest.raises(BadRequest, match="binary_data_size must be a non-negative integer"):
        decode_request(header + b"\1", len(header))


def test_unclaimed_binary_bytes_are_rejected() -> None:
    req = InferRequest((Tensor("x", np.zeros(2, np.float32)),))
    body, headers = encode_request(req, binary=True)
    with pytest.raises(BadRequest, match="not claimed"):
        decode_request(b"".join(body) + b"junk", headers[HEADER_LENGTH])


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("UINT64", [1, 2**63, 2**64 - 1]),  # numpy reads int beside uint64 as float64: not here
        ("INT64", [-(2**63), 2**63 - 1]),
        ("INT32", []),
        ("BOOL", []),
    ],
)
def test_integers_at_their_limits_decode_exactly(datatype: str, values: list[int]) -> None:
    body = _json({"inputs": [{"name": "x", "datatype": datatype, "shape": [len(values)],
                              "data": values}]})  # fmt: skip
    assert decode_request(body).inputs[0].data.tolist() == values


def _binary_header(datatype: str, shape: list[int], size: int) -> bytes:
    tensor = {"name": "x", "datatype": datatype, "shape": shape,
              "parameters": {"binary_data_size": size}}  # fmt: skip
    return _json({"inputs": [tensor]})


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([2**32, 2**32], "'x': shape .* is larger than any array"),
        ([2**63, 2], "'x': shape .* is larger than any array"),
        ([2**20, 2**20], "needs 4398046511104 bytes, got 0"),
    ],
)
def test_binary_shapes_are_checked_exactly(shape: list[int], message: str) -> None:
    header = _binary_header("FP32", shape, 0)
    with pytest.raises(BadRequest, match=message):
        decode_request(header, len(header))


@pytest.mark.parametrize("count", [2**27, 2**40])
def test_bytes_count_beyond_its_blob_is_refused_before_allocating(count: int) -> None:
    blob = struct.pack("<I", 5) + b"hello"
    header = _binary_header("BYTES", [count], len(blob))
    tracemalloc.start()
    try:
        with pytest.raises(BadRequest, match=f"'x': {count:,} BYTES elements need at least"):
            decode_request(header + blob, len(header))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def _nonfinite_response() -> InferResponse:
    y = np.array([[1.5, np.nan], [np.inf, -np.inf]], np.float32)
    return InferResponse("m", (Tensor("y", y), Tensor("h", y.astype(np.float16))))


def test_nonfinite_json_outputs_are_spelled_never_null() -> None:
    body, headers = encode_response(_nonfinite_response())
    doc = orjson.loads(body[0])
    assert [o["data"] for o in doc["outputs"]] == [[1.5, "NaN", "Infinity", "-Infinity"]] * 2
    back = decode_response(b"".join(body), headers.get(HEADER_LENGTH))
    for sent, got in zip(_nonfinite_response().outputs, back.outputs, strict=True):
        np.testing.assert_array_equal(got.data.astype(sent.data.dtype), sent.data)


def test_tritonclient_reads_nonfinite_json_outputs() -> None:
    body, _ = encode_response(_nonfinite_response())
    result = InferResult.from_response_body(b"".join(body))
    want = _nonfinite_response().outputs[0].data
    np.testing.assert_array_equal(result.as_numpy("y"), want)
    np.testing.assert_array_equal(result.as_numpy("h"), want.astype(np.float16))


def test_a_message_names_a_few_offenders_and_their_count() -> None:
    tensor = {"datatype": "FP32", "shape": [1], "data": [1]}
    inputs = [{"name": f"in{i}", **tensor} for i in range(10_000)] * 2
    with pytest.raises(BadRequest) as caught:
        decode_request(_json({"inputs": inputs}))
    message = str(caught.value)
    assert "['in0', 'in1', 'in2', 'in3', 'in4', ...] (10,000 in all)" in message
    assert len(message) < 200


# ------------------------------------------------------------- an answer passed on as written


def _answer(*tensors: Tensor, binary: bool = True) -> bytes:
    chunks, headers = encode_response(InferResponse("m", tensors), None, binary)
    return b"".join(chunks), headers.get(HEADER_LENGTH)


def test_a_binary_answer_is_passed_on_as_written_when_asked_binary() -> None:
    a = Tensor("a", np.arange(6, dtype=np.float32).reshape(2, 3))
    b = Tensor("b", np.array([[1], [2]], dtype=np.int64), {"note": "kept"})
    body, length = _answer(a, b)
    got = decode_response(body, length, keep_written=True)
    assert got.written is not None and [e["name"] for e in got.written.entries] == ["a", "b"]
    chunks, headers = encode_response(got, None, True)
    assert chunks[1] is got.written.blob  # the target's bytes, not a copy or a re-encoding
    again = decode_response(b"".join(chunks), headers[HEADER_LENGTH])
    for want, out in zip((a, b), again.outputs, strict=True):
        np.testing.assert_array_equal(out.data, want.data)
    assert again.outputs[1].parameters == {"note": "kept"}
    # asked as JSON (for one output, or by default): encoded from the tensors as always
    json_only, _ = encode_response(got, (RequestedOutput("a", False),), True)
    assert orjson.loads(json_only[0])["outputs"][0]["data"] == list(range(6))
    assert orjson.loads(encode_response(got, None, False)[0][0])["outputs"][1]["data"] == [1, 2]


def test_only_a_wholly_binary_answer_is_kept() -> None:
    a = Tensor("a", np.arange(3, dtype=np.float32))
    body, length = _answer(a, binary=False)
    assert decode_response(body, length, keep_written=True).written is None  # JSON data
    body, length = _answer(a)
    assert decode_response(body, length).written is None  # not asked to keep
    with pytest.raises(BadRequest, match="not claimed"):  # never kept: refused whole
        decode_response(body + b"junk", length, keep_written=True)
    doc = orjson.loads(body[: int(length)])
    doc["outputs"][0]["data"] = [9.0, 9.0, 9.0]  # beside its binary data: ignored by the decoder
    header = orjson.dumps(doc)
    both = decode_response(header + body[int(length) :], len(header), keep_written=True)
    assert both.written is None  # so it is never passed on to a client
    np.testing.assert_array_equal(both.outputs[0].data, a.data)
