"""Large flat numeric JSON arrays decode straight to numpy, slice by slice, to the same values
(and the same errors) as parsing the body whole; anything else is parsed whole."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from core.errors import BadRequest
from core.wire import jsonlift
from core.wire.tensors import decode_request


def _body(data: object, datatype: str = "FP32", shape: list[int] | None = None, **extra: object):
    n = [int(np.asarray(data).size)] if shape is None else shape
    tensor = {"name": "x", "shape": n, "datatype": datatype, "data": data, **extra}
    return orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)


def _whole(body: bytes) -> np.ndarray:
    doc = orjson.loads(body)
    return np.asarray(doc["inputs"][0]["data"], dtype=np.float64).ravel()


def test_floats_across_many_slices_decode_bitwise_as_a_whole_parse() -> None:
    values = np.random.default_rng(0).standard_normal(300_000) * 1e3  # ~6 MB: 20+ slices
    body = _body(values.tolist(), "FP64")
    assert len(jsonlift.lift(body).spans) == 1
    got = decode_request(body).inputs[0].data
    np.testing.assert_array_equal(got, values)
    assert got.dtype == np.float64


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "INT32", "UINT8", "INT64"])
def test_every_numeric_datatype_matches_the_whole_parse(datatype: str) -> None:
    values = np.arange(20_000) % 200
    body = _body(values.tolist(), datatype, shape=[100, 200])
    got = decode_request(body).inputs[0].data
    assert got.shape == (100, 200) and got.dtype.name == np.dtype(got.dtype).name
    np.testing.assert_array_equal(got.ravel(), values.astype(got.dtype))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1.0] * 5000 + [1e39], "out of range for FP32"),
        ("[" + "1," * 5000 + "2,,3]", "not a list of numbers"),
    ],
)
def test_lifted_values_are_checked_like_the_rest(data: object, message: str) -> None:
    if isinstance(data, str):  # hand-written text: an invalid list
        body = b'{"inputs":[{"name":"x","shape":[5003],"datatype":"FP32","data":' + data.encode()
        body += b"}]}"
    else:
        body = _body(data)
    with pytest.raises(BadRequest, match=message):
        decode_request(body)


def test_a_count_that_differs_from_the_shape_names_both() -> None:
    body = _body([0.5] * 5000, shape=[5001])
    message = r"tensor 'x': shape \[5001\]: needs 5001 elements, got 5000"
    with pytest.raises(BadRequest, match=message):
        decode_request(body)


def test_nested_arrays_strings_and_small_arrays_are_not_lifted() -> None:
    assert not jsonlift.lift(_body([[0.5] * 3000] * 2)).spans
    assert not jsonlift.lift(_body(["NaN"] * 3000)).spans
    assert not jsonlift.lift(_body([0.5] * 10)).spans
    np.testing.assert_array_equal(decode_request(_body([[0.5] * 3000] * 2)).inputs[0].data, 0.5)


def test_a_data_array_that_is_not_a_tensors_data_is_decoded_as_sent() -> None:
    """``"data": [...]`` inside parameters is lifted too; unclaimed, the body is parsed whole."""
    body = _body([1.5] * 3000, parameters={"note": "x"})
    body = body.replace(b'"note":"x"', b'"data":[' + b"7," * 3000 + b"7]")
    assert len(jsonlift.lift(body).spans) == 2
    tensor = decode_request(body).inputs[0]
    assert tensor.parameters["data"] == [7] * 3001  # as sent, not a marker
    np.testing.assert_array_equal(tensor.data, 1.5)


def test_a_forged_marker_is_just_an_object() -> None:
    forged = {"\u0000gpufan-lifted-0000000000000000": 0}
    with pytest.raises(BadRequest, match="tensor 'x'"):
        decode_request(_body(forged, shape=[1]))
