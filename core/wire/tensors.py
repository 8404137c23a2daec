"""numpy <-> Open Inference Protocol (KServe v2) tensors, JSON and the binary tensor extension.

Grammar (https://github.com/kserve/open-inference-protocol, Triton binary extension)::

    body      := json_header [binary_blob*]   # Inference-Header-Content-Length: len(json_header)
    request   := {"id"?, "parameters"?, "inputs": [tensor], "outputs"?: [{"name", "parameters"?}]}
    response  := {"model_name", "model_version"?, "id"?, "parameters"?, "outputs": [tensor]}
    tensor    := {"name", "datatype", "shape": [int], "parameters"?, "data"?}
                 # binary: parameters.binary_data_size = n and the n bytes follow the header
    BYTES     := binary: repeated (uint32 little-endian length, bytes); JSON: list of strings
    FP* JSON  := numbers, and the strings "NaN", "Infinity", "-Infinity" (JSON has no such number)

Every count and size is exact (Python ints) and checked against the body before anything is
allocated, and every JSON value against its datatype's range: a client's mistake is a 400 naming
the tensor, never an overflow.

Binary tensors stay buffers: decoding is ``np.frombuffer`` over the request body (read-only
views, no copy), and encoding returns a list of buffers that the HTTP layer writes as they are.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson

from core.errors import BadRequest, first_few
from core.wire.budget import JSON_FACTOR, PARSED_JSON_FACTOR
from core.wire.jsonlift import Lifted, lift

__all__ = [
    "HEADER_LENGTH",
    "REPORT_PARAMETER",
    "BinaryOutputs",
    "InferRequest",
    "InferResponse",
    "Report",
    "RequestedOutput",
    "Tensor",
    "WireBody",
    "array_from_raw",
    "array_from_values",
    "datatype_of",
    "decode_request",
    "decode_response",
    "dtype_of",
    "encode_request",
    "encode_response",
    "raw_bytes",
]

HEADER_LENGTH = "inference-header-content-length"
REPORT_PARAMETER = "gpufan_report"  # the front door's report, as JSON text in parameters

_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_DATATYPES = {dt: name for name, dt in _DTYPES.items()}
_LE = {name: dt.newbyteorder("<") for name, dt in _DTYPES.items() if name != "BYTES"}
_MAX_DIMS = 64  # numpy 2's NPY_MAXDIMS
_MAX_BYTES = 2**63 - 1  # numpy's limit on an array's size in bytes (a signed 64-bit intp)
_PREFIX = 4  # the uint32 length before each BYTES element
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of an OIP datatype name; BadRequest names the valid ones."""
    try:
        return _DTYPES[datatype]
    except (KeyError, TypeError):
        raise BadRequest(f"unknown datatype {datatype!r}; valid: {', '.join(_DTYPES)}") from None


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The OIP datatype name of a numpy dtype (str/bytes arrays are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _DATATYPES[dtype.newbyteorder("=")]
    except KeyError:
        raise BadRequest(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named array; ``data`` is any numpy array (object arrays of bytes for BYTES)."""

    name: str
    data: np.ndarray
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def datatype(self) -> str:
        return datatype_of(self.data.dtype)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An entry of the request's ``outputs``; ``binary`` None means the request-level default."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class WireBody:
    """A request as it arrived over REST: the bytes its tensors are views of, and its
    Inference-Header-Content-Length; what lets a one-shard request be relayed to an OIP target
    as it is, never re-encoded (``core.dispatch.relay``). ``header`` is a rewritten JSON header
    that replaces the body's first ``replaces`` bytes (``without_parameters``)."""

    body: bytes
    header_length: str | None
    header: bytes | None = None
    replaces: int = 0

    @property
    def size(self) -> int:
        return len(self.body) if self.header is None else (
            len(self.header) + len(self.body) - self.replaces
        )  # fmt: skip

    @property
    def buffers(self) -> tuple[bytes | memoryview, ...]:
        """What to send, in order, without joining them."""
        if self.header is None:
            return (self.body,)
        return (self.header, memoryview(self.body)[self.replaces :])

    def without_parameters(self, names: AbstractSet[str]) -> WireBody | None:
        """This request with the request-level ``parameters`` in ``names`` taken out of its JSON
        header, its binary tensors untouched (sent as views); None for a JSON body, whose data
        is in the header (re-encoding that is the full path's work)."""
        if self.header_length is None:
            return None
        n = int(self.header_length)
        doc = orjson.loads(memoryview(self.body)[:n])
        kept = {k: v for k, v in (doc.get("parameters") or {}).items() if k not in names}
        if kept:
            doc["parameters"] = kept
        else:
            doc.pop("parameters", None)
        header = orjson.dumps(doc)
        return WireBody(self.body, str(len(header)), header, n)


@dataclass(frozen=True, slots=True)
class InferRequest:
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] | None = None  # None: every output of the model
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    wire: WireBody | None = field(default=None, compare=False)  # set by ``decode_request``

    @property
    def binary_output_default(self) -> bool:
        return bool(self.parameters.get("binary_data_output", False))


class Report(Protocol):
    """A typed account of how a response was made, carried beside it until the wire encodes it."""

    def as_json(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class BinaryOutputs:
    """A response's outputs as its server wrote them, every one binary: their JSON entries and
    the bytes after the header, so the front door passes a relayed answer on as it came
    (``encode_response``) instead of encoding its tensors again."""

    entries: tuple[Mapping[str, Any], ...]
    blob: memoryview


@dataclass(frozen=True, slots=True)
class InferResponse:
    """An infer response; ``report`` (the front door's) is encoded as ``parameters.gpufan_report``
    by ``encode_response`` — a JSON string, since OIP parameter values are scalars. A decoded
    response has the string in ``parameters`` and no ``report``."""

    model_name: str
    outputs: tuple[Tensor, ...]
    model_version: str | None = None
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    report: Report | None = field(default=None, compare=False)
    written: BinaryOutputs | None = field(default=None, compare=False)  # the outputs as they came

    def wire_parameters(self) -> dict[str, Any]:
        """The parameters as sent: with the report, if any, as JSON text (REST and gRPC alike)."""
        parameters = dict(self.parameters)
        if self.report is not None:
            parameters[REPORT_PARAMETER] = orjson.dumps(self.report.as_json()).decode()
        return parameters


# ---------------------------------------------------------------------------------------- decode


def _split_body(
    body: bytes,
    header_length: str | int | None,
    *,
    lift_arrays: bool = True,
    charge: Charge | None = None,
) -> tuple[dict[str, Any], memoryview, Lifted]:
    view = memoryview(body)
    if header_length is None or header_length == "":
        json_part, blob = body, view[len(view) :]
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 <= n <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes"
            )
        json_part, blob = bytes(view[:n]), view[n:]
    lifted = lift(json_part) if lift_arrays else Lifted.whole(json_part)
    if charge is not None:
        parsed = len(lifted.skeleton) * (PARSED_JSON_FACTOR - JSON_FACTOR)
        charge(parsed + lifted.slice_bytes * PARSED_JSON_FACTOR)
    try:
        doc = orjson.loads(lifted.skeleton)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"the JSON body must be an object, got {type(doc).__name__}")
    return doc, blob, lifted


def _shape(name: str, raw: Any) -> tuple[int, ...]:
    if (
        not isinstance(raw, list)
        or len(raw) > _MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw)
    ):
        raise BadRequest(
            f"tensor {name!r}: 'shape' must be a list of at most {_MAX_DIMS} non-negative integers"
        )
    return tuple(raw)


def _element_count(name: str, shape: tuple[int, ...], itemsize: int) -> int:
    """The exact element count: Python ints, so ``[2**32, 2**32]`` is 2**64, never an int64
    wrapped to 0. numpy multiplies every dim but zeros when it shapes an array, so a shape whose
    nonzero dims exceed its byte limit is refused even when it holds no element."""
    if math.prod(max(d, 1) for d in shape) * itemsize > _MAX_BYTES:
        raise BadRequest(f"tensor {name!r}: shape {list(shape)} is larger than any array can be")
    return math.prod(shape)


def _decode_bytes_blob(name: str, buf: memoryview, count: int) -> np.ndarray:
    """Every element carries a 4-byte length, so a count the blob cannot hold is refused before
    anything is allocated: the array and the walk are bounded by the bytes present."""
    if count * _PREFIX > len(buf):
        raise BadRequest(
            f"tensor {name!r}: {count:,} BYTES elements need at least {count * _PREFIX:,} bytes "
            f"({_PREFIX} of length each), got {len(buf):,}"
        )
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + _PREFIX > len(buf):
            raise BadRequest(f"tensor {name!r}: BYTES data ends after {i} of {count} elements")
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += _PREFIX
        if pos + n > len(buf):
            raise BadRequest(f"tensor {name!r}: BYTES element {i} runs past the end of its data")
        out[i] = bytes(buf[pos : pos + n])
        pos += n
    if pos != len(buf):
        raise BadRequest(f"tensor {name!r}: {len(buf) - pos} stray bytes after BYTES data")
    return out


def _decode_tensor(raw: Any, blob: memoryview, offset: int, lifted: Lifted) -> tuple[Tensor, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BadRequest("every tensor must be an object with a string 'name'")
    name = raw["name"]
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise BadRequest(f"tensor {name!r}: 'datatype' is missing")
    dtype = dtype_of(datatype)
    shape = _shape(name, raw.get("shape"))
    count = _element_count(name, shape, dtype.itemsize)
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"tensor {name!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"tensor {name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(blob):
            raise BadRequest(
                f"tensor {name!r}: binary data truncated: needs {size} bytes at offset {offset}, "
                f"body has {len(blob) - offset}"
            )
        arr = _raw_array(name, datatype, dtype, shape, count, blob[offset : offset + size])
        params = {k: v for k, v in params.items() if k != "binary_data_size"}
        return Tensor(name, arr, params), offset + size
    if "data" not in raw:
        raise BadRequest(f"tensor {name!r} has neither 'data' nor parameters.binary_data_size")
    index = lifted.span_of(raw["data"])
    if index is not None:
        try:
            arr = lifted.parse(
                index, count, dtype, lambda values: _json_array(name, datatype, dtype, values)
            )
        except ValueError as e:
            raise BadRequest(f"tensor {name!r}: shape {list(shape)}: {e}") from None
        return Tensor(name, arr.reshape(shape), params), offset
    arr = _values_array(name, datatype, dtype, shape, count, raw["data"])
    return Tensor(name, arr, params), offset


def array_from_raw(name: str, datatype: str, shape: Sequence[int], buf: memoryview) -> np.ndarray:
    """A tensor's array from its raw bytes (the binary extension's blob, gRPC's raw contents):
    little-endian values, or length-prefixed elements for BYTES; a view of ``buf``, no copy."""
    dtype = dtype_of(datatype)
    checked = _shape(name, list(shape))
    count = _element_count(name, checked, dtype.itemsize)
    return _raw_array(name, datatype, dtype, checked, count, buf)


def array_from_values(name: str, datatype: str, shape: Sequence[int], values: Any) -> np.ndarray:
    """A tensor's array from its values as JSON (or gRPC's typed contents) carries them, each
    checked against the datatype's range."""
    dtype = dtype_of(datatype)
    checked = _shape(name, list(shape))
    count = _element_count(name, checked, dtype.itemsize)
    return _values_array(name, datatype, dtype, checked, count, values)


def _raw_array(
    name: str,
    datatype: str,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    count: int,
    buf: memoryview,
) -> np.ndarray:
    """``array_from_raw`` once its datatype and shape are checked (``count`` elements)."""
    if datatype == "BYTES":
        return _decode_bytes_blob(name, buf, count).reshape(shape)
    if len(buf) != count * dtype.itemsize:
        raise BadRequest(
            f"tensor {name!r}: shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes, got {len(buf)}"
        )
    return np.frombuffer(buf, dtype=_LE[datatype]).reshape(shape)


def _values_array(
    name: str,
    datatype: str,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    count: int,
    values: Any,
) -> np.ndarray:
    """``array_from_values`` once its datatype and shape are checked (``count`` elements)."""
    arr = _json_array(name, datatype, dtype, values)
    if arr.size != count:
        raise BadRequest(
            f"tensor {name!r}: shape {list(shape)} needs {count} elements, got {arr.size}"
        )
    return arr.reshape(shape)


def raw_bytes(arr: np.ndarray) -> bytes | memoryview:
    """An array as raw tensor bytes: little-endian values, or length-prefixed BYTES elements
    (``array_from_raw``'s inverse)."""
    if datatype_of(arr.dtype) == "BYTES":
        parts = []
        for v in arr.ravel():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    c = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return c.data.cast("B") if c.size else b""


def _json_array(name: str, datatype: str, dtype: np.dtype[Any], data: Any) -> np.ndarray:
    """The flat array of a tensor's JSON ``data``, every value checked against the datatype."""
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).ravel()
            return np.array(
                [s.encode() if isinstance(s, str) else _bytes_or_fail(name, s) for s in flat],
                dtype=object,
            )
        if datatype == "BOOL":
            arr = np.asarray(data)
            if arr.size and arr.dtype != np.bool_:
                raise BadRequest(f"tensor {name!r}: BOOL data must be true/false")
            return arr.astype(np.bool_).ravel()
        if dtype.kind == "f":
            return _json_floats(name, datatype, dtype, data)
        return _json_ints(name, datatype, dtype, data)
    except ValueError as e:  # ragged nesting
        raise BadRequest(f"tensor {name!r}: data is not a valid {datatype} array: {e}") from None


def _json_ints(name: str, datatype: str, dtype: np.dtype[Any], data: list[Any]) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype.kind not in "biu":
        arr = np.array(_python_ints(name, datatype, data), dtype=object)
    info = np.iinfo(dtype)
    if arr.size:
        low, high = arr.min(), arr.max()
        if low < info.min or high > info.max:
            raise BadRequest(
                f"tensor {name!r}: integer {low if low < info.min else high} is out of range "
                f"for {datatype} (valid: {info.min} to {info.max})"
            )
    return arr.astype(dtype, copy=False).ravel()


def _python_ints(name: str, datatype: str, data: list[Any]) -> list[int]:
    """The values as exact Python ints, for the lists numpy reads as floats: those holding a
    fraction, an integer beyond 64 bits (orjson parses one as a float) or int64 beside uint64
    values (numpy's common type of the two is float64)."""
    values = _flat_objects(data)
    for v in values:
        if isinstance(v, float) and v.is_integer() and abs(v) >= 2**63:
            info = np.iinfo(dtype_of(datatype))
            raise BadRequest(
                f"tensor {name!r}: an integer beyond 64 bits is out of range for {datatype} "
                f"(valid: {info.min} to {info.max})"
            )
        if not isinstance(v, int):
            raise BadRequest(f"tensor {name!r}: {datatype} data must be integers, got {v!r:.40}")
    return values


def _json_floats(name: str, datatype: str, dtype: np.dtype[Any], data: list[Any]) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        arr = np.array([_float_value(name, datatype, v) for v in _flat_objects(data)])
    with np.errstate(over="ignore"):
        out = arr.astype(dtype, copy=False).ravel()
    if dtype.itemsize < 8 and np.isinf(out).any():
        overflowed = np.isinf(out) & np.isfinite(arr.ravel())
        if overflowed.any():
            raise BadRequest(
                f"tensor {name!r}: {arr.ravel()[overflowed.argmax()]} is out of range for "
                f"{datatype} (largest finite magnitude {np.finfo(dtype).max!s})"
            )
    return out


def _flat_objects(data: list[Any]) -> list[Any]:
    flat: list[Any] = np.asarray(data, dtype=object).ravel().tolist()
    return flat


def _float_value(name: str, datatype: str, value: Any) -> float:
    """A JSON number, or one of the spellings ``_json_floats_out`` gives a non-finite value."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, int | float):
        return float(value)
    raise BadRequest(
        f'tensor {name!r}: {datatype} data must be numbers or "NaN", "Infinity", "-Infinity"; '
        f"got {value!r:.40}"
    )


def _bytes_or_fail(name: str, value: Any) -> bytes:
    raise BadRequest(f"tensor {name!r}: BYTES data must be strings, got {type(value).__name__}")


def _decode_tensors(raws: Any, blob: memoryview, what: str, lifted: Lifted) -> tuple[Tensor, ...]:
    if not isinstance(raws, list):
        raise BadRequest(f"'{what}' must be a list of tensors")
    offset = 0
    tensors = []
    for raw in raws:
        t, offset = _decode_tensor(raw, blob, offset, lifted)
        tensors.append(t)
    if offset != len(blob):
        raise BadRequest(f"{len(blob) - offset} bytes of binary data are not claimed by any tensor")
    return tuple(tensors)


Charge = Callable[[int], None]  # reserve bytes beyond the body's own cost, or raise
_T = TypeVar("_T")


class _Relift(Exception):
    """A lifted array was not a tensor's data: parse the body whole."""


def _lifting(decode: Callable[[bool], _T]) -> _T:
    """``decode(lift_arrays=True)``, or the whole-body parse when a lifted array turned out not
    to be a tensor's data."""
    try:
        return decode(True)
    except _Relift:
        return decode(False)


def decode_request(
    body: bytes, header_length: str | int | None = None, *, charge: Charge | None = None
) -> InferRequest:
    """Parse an infer request body; every malformation raises BadRequest naming it.

    ``charge`` is the edge's memory reservation (``core.wire.budget``): JSON that is parsed
    into Python objects (everything but large flat numeric arrays, plus one slice of those at
    a time) is charged for what it will hold beyond the ``budget.JSON_FACTOR`` the edge
    reserved for it.
    """
    return _lifting(lambda lift_arrays: _decode_request(body, header_length, lift_arrays, charge))


def _decode_request(
    body: bytes, header_length: str | int | None, lift_arrays: bool, charge: Charge | None
) -> InferRequest:
    doc, blob, lifted = _split_body(body, header_length, lift_arrays=lift_arrays, charge=charge)
    if "inputs" not in doc:
        raise BadRequest("the request has no 'inputs'")
    inputs = _decode_tensors(doc["inputs"], blob, "inputs", lifted)
    if lifted.unclaimed():
        raise _Relift
    if not inputs:
        raise BadRequest("'inputs' is empty")
    twice = [n for n, k in Counter(t.name for t in inputs).items() if k > 1]
    if twice:
        raise BadRequest(f"input(s) given more than once: {first_few(twice)}")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be an object")
    outputs = None
    if doc.get("outputs") is not None:
        raws = doc["outputs"]
        if not isinstance(raws, list):
            raise BadRequest("'outputs' must be a list")
        outs = []
        for raw in raws:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise BadRequest("every requested output must be an object with a string 'name'")
            p = raw.get("parameters") or {}
            binary = p.get("binary_data") if isinstance(p, dict) else None
            outs.append(RequestedOutput(raw["name"], None if binary is None else bool(binary)))
        outputs = tuple(outs)
    rid = doc.get("id")
    wire = WireBody(body, None if header_length in (None, "") else str(header_length))
    return InferRequest(inputs, outputs, None if rid is None else str(rid), params, wire)


def decode_response(
    body: bytes, header_length: str | int | None = None, *, keep_written: bool = False
) -> InferResponse:
    """Parse an infer response (from a worker or any OIP server). ``keep_written``: when every
    output is binary, keep them as written as well (``InferResponse.written``)."""
    return _lifting(
        lambda lift_arrays: _decode_response(body, header_length, lift_arrays, keep_written)
    )


def _decode_response(
    body: bytes, header_length: str | int | None, lift_arrays: bool, keep_written: bool = False
) -> InferResponse:
    doc, blob, lifted = _split_body(body, header_length, lift_arrays=lift_arrays)
    raws = doc.get("outputs", [])
    outputs = _decode_tensors(raws, blob, "outputs", lifted)
    if lifted.unclaimed():
        raise _Relift
    return InferResponse(
        model_name=str(doc.get("model_name", "")),
        outputs=outputs,
        model_version=doc.get("model_version"),
        id=doc.get("id"),
        parameters=doc.get("parameters") or {},
        written=_written(raws, blob) if keep_written else None,
    )


def _written(raws: list[Any], blob: memoryview) -> BinaryOutputs | None:
    """The outputs as written, if every one is binary and nothing else (the decoder has checked
    each entry against its bytes, and that together they are the whole blob). An entry that
    also carries ``data``, which the decoder ignores, is not passed on: re-encoded instead."""
    binary = all(
        isinstance((r.get("parameters") or {}).get("binary_data_size"), int) and "data" not in r
        for r in raws
    )
    return BinaryOutputs(tuple(raws), blob) if raws and binary else None


# ---------------------------------------------------------------------------------------- encode

Body = list[bytes | memoryview]


def _tensor_json(t: Tensor, binary: bool, blobs: Body) -> dict[str, Any]:
    arr = t.data
    head: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(arr.shape)}
    params = dict(t.parameters)
    if binary:
        buf = raw_bytes(arr)
        params["binary_data_size"] = len(buf)
        blobs.append(buf)
    elif head["datatype"] == "BYTES":
        head["data"] = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()
        ]
    elif arr.dtype.kind == "f":
        head["data"] = _json_floats_out(arr)
    else:
        head["data"] = np.ascontiguousarray(arr).ravel()
    if params:
        head["parameters"] = params
    return head


def _json_floats_out(arr: np.ndarray) -> np.ndarray | list[float | str]:
    """JSON has no NaN or infinity (orjson writes them as ``null``, which is no tensor value),
    but the OIP grammar admits strings as tensor elements: a non-finite value is spelled
    ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, which ``float()``, numpy (and so tritonclient's
    ``np.array(data, dtype)``), JavaScript's ``Number()`` and ``decode_*`` read back. The output
    stays JSON, as asked, so a plain-JSON client is never sent binary it did not request; one
    that wants the IEEE bits asks for ``binary_data``."""
    flat = np.ascontiguousarray(arr, np.float32 if arr.dtype == np.float16 else None).ravel()
    finite = np.isfinite(flat)
    if finite.all():
        return flat  # orjson writes it at C speed
    values: list[float | str] = flat.tolist()
    for i in np.flatnonzero(~finite).tolist():
        values[i] = _spelling(float(flat[i]))
    return values


def _spelling(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _assemble(doc: dict[str, Any], blobs: Body) -> tuple[Body, dict[str, str]]:
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return [header], {"content-type": "application/json"}
    return [header, *blobs], {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def encode_request(req: InferRequest, binary: bool = True) -> tuple[Body, dict[str, str]]:
    """Serialise a request; with ``binary`` the tensors travel as raw buffers after the header."""
    blobs: Body = []
    doc: dict[str, Any] = {"inputs": [_tensor_json(t, binary, blobs) for t in req.inputs]}
    if req.id is not None:
        doc["id"] = req.id
    if req.parameters:
        doc["parameters"] = dict(req.parameters)
    if req.outputs is not None:
        doc["outputs"] = [
            {"name": o.name, "parameters": {"binary_data": o.binary}}
            if o.binary is not None
            else {"name": o.name}
            for o in req.outputs
        ]
    return _assemble(doc, blobs)


def encode_response(
    resp: InferResponse,
    requested: Sequence[RequestedOutput] | None = None,
    binary_default: bool = False,
) -> tuple[Body, dict[str, str]]:
    """Serialise a response, each output binary or JSON as the request asked; outputs kept as
    written (``InferResponse.written``) go out as they are when the request asked them binary."""
    flags = {o.name: o.binary for o in requested or ()}
    blobs: Body = []

    def binary(name: str) -> bool:
        flag = flags.get(name)
        return binary_default if flag is None else flag

    written = resp.written
    if written is not None and all(binary(e["name"]) for e in written.entries):
        outputs = list(written.entries)
        blobs = [written.blob] if len(written.blob) else []
    else:
        outputs = [_tensor_json(t, binary(t.name), blobs) for t in resp.outputs]
    doc: dict[str, Any] = {"model_name": resp.model_name, "outputs": outputs}
    if resp.model_version is not None:
        doc["model_version"] = resp.model_version
    if resp.id is not None:
        doc["id"] = resp.id
    parameters = resp.wire_parameters()
    if parameters:
        doc["parameters"] = parameters
    return _assemble(doc, blobs)
