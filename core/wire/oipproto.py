"""The Open Inference Protocol's gRPC messages <-> gpufan's tensors, dicts and errors.

The messages are the ones Triton serves (``inference.GRPCInferenceService`` in
``grpc_service.proto``, and ``model_config.proto`` for ModelConfig), as NVIDIA generates them in
``tritonclient.grpc``: the same proto KServe's ``open_inference_grpc.proto`` restates, so one
set of messages speaks to tritonclient, perf_analyzer, Triton and KServe alike.

Pure functions only (the server is ``core.wire.grpcserver``, the caller ``core.backends.grpc``).
Tensors travel as ``raw_input_contents``/``raw_output_contents`` (one little-endian buffer per
tensor, BYTES elements length-prefixed, as the binary extension lays them out); a request may
instead give typed ``contents`` — gRPC's counterpart of JSON data — which are checked against
the datatype's range exactly as JSON is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, MutableMapping
from typing import Any

import grpc
import numpy as np
import orjson
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from core.errors import (
    BadRequest,
    ClientError,
    GpufanError,
    MalformedResponse,
    TargetTimeout,
    TargetUnavailable,
    first_few,
)
from core.wire.tensors import (
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    array_from_raw,
    array_from_values,
    dtype_of,
    raw_bytes,
)

__all__ = [
    "config_from_pb",
    "config_to_pb",
    "error_for_code",
    "metadata_from_pb",
    "metadata_to_pb",
    "request_from_pb",
    "request_to_pb",
    "response_from_pb",
    "response_to_pb",
    "status_code",
]

# Which typed-contents field carries each datatype (FP16 has none: it travels raw only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# A caller's mistake by the target's account: the shard itself is wrong, wherever it runs.
_CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
}


def status_code(e: GpufanError) -> grpc.StatusCode:
    """The gRPC status of an error, as its HTTP status maps: 4xx to the matching client codes,
    503/502 to UNAVAILABLE (the caller may retry), other 5xx to INTERNAL."""
    if e.status in _CODES:
        return _CODES[e.status]
    if e.status in (502, 503):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INVALID_ARGUMENT if e.status < 500 else grpc.StatusCode.INTERNAL


def error_for_code(code: grpc.StatusCode, details: str, where: str) -> GpufanError:
    """A target's gRPC error in gpufan's tree, as ``core.wire.client.error_for_status`` maps
    HTTP: a client code keeps its status and the server's text; a deadline is a TargetTimeout;
    everything else (UNAVAILABLE, INTERNAL, RESOURCE_EXHAUSTED, ...) a TargetUnavailable."""
    if code in _CLIENT_CODES:
        return ClientError(details, status=_CLIENT_CODES[code])
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TargetTimeout(f"{where}: deadline exceeded: {details}")
    return TargetUnavailable(f"{where} answered {code.name}: {details}")


# ------------------------------------------------------------------------------------ parameters


def _params_from_pb(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(p, which)
    return out


def _params_to_pb(params: Mapping[str, Any], into: MutableMapping[str, pb.InferParameter]) -> None:
    for key, value in params.items():
        p = into[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            p.int64_param = value
        elif isinstance(value, int) and 0 <= value < 2**64:
            p.uint64_param = value
        elif isinstance(value, float):
            p.double_param = value
        elif isinstance(value, str):
            p.string_param = value
        else:  # OIP parameters are scalars; a structure travels as JSON text, as REST's report
            p.string_param = orjson.dumps(value).decode()


# ---------------------------------------------------------------------------------- tensors


def _tensor_from_contents(t: Any) -> np.ndarray:
    """A tensor given as typed ``contents`` (gRPC's JSON): every value checked as JSON's are."""
    field = _CONTENTS.get(t.datatype)
    if field is None:
        dtype_of(t.datatype)  # an unknown datatype is named as such
        raise BadRequest(
            f"tensor {t.name!r}: {t.datatype} has no typed contents; send it in raw contents"
        )
    others = [f.name for f, _ in t.contents.ListFields() if f.name != field]
    if others:
        raise BadRequest(
            f"tensor {t.name!r}: {t.datatype} data goes in contents.{field}, got {others}"
        )
    values = list(getattr(t.contents, field))
    if t.datatype == "BYTES":
        count = math.prod(t.shape)
        if len(values) != count:
            raise BadRequest(
                f"tensor {t.name!r}: shape {list(t.shape)} needs {count} elements, "
                f"got {len(values)}"
            )
        return np.array(values, dtype=object).reshape(tuple(t.shape))
    return array_from_values(t.name, t.datatype, tuple(t.shape), values)


def _tensors_from_pb(tensors: Any, raw: Any, what: str) -> tuple[Tensor, ...]:
    if raw and len(raw) != len(tensors):
        raise BadRequest(f"{what}: {len(raw)} raw contents for {len(tensors)} tensors")
    out = []
    for i, t in enumerate(tensors):
        if raw:
            if t.HasField("contents"):
                raise BadRequest(f"tensor {t.name!r}: both raw and typed contents given")
            arr = array_from_raw(t.name, t.datatype, tuple(t.shape), memoryview(raw[i]))
        else:
            arr = _tensor_from_contents(t)
        out.append(Tensor(t.name, arr, _params_from_pb(t.parameters)))
    return tuple(out)


def request_from_pb(msg: pb.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest as the data plane takes it; every malformation is a BadRequest."""
    inputs = _tensors_from_pb(msg.inputs, msg.raw_input_contents, "inputs")
    if not inputs:
        raise BadRequest("'inputs' is empty")
    twice = [n for n, k in Counter(t.name for t in inputs).items() if k > 1]
    if twice:
        raise BadRequest(f"input(s) given more than once: {first_few(twice)}")
    outputs = tuple(RequestedOutput(o.name) for o in msg.outputs) or None
    return InferRequest(inputs, outputs, msg.id or None, _params_from_pb(msg.parameters))


def request_to_pb(model: str, version: str | None, req: InferRequest) -> pb.ModelInferRequest:
    """An InferRequest as a ModelInferRequest, every input in raw contents."""
    msg = pb.ModelInferRequest(model_name=model, model_version=version or "", id=req.id or "")
    for t in req.inputs:
        entry = msg.inputs.add(name=t.name, datatype=t.datatype, shape=t.data.shape)
        _params_to_pb(t.parameters, entry.parameters)
        msg.raw_input_contents.append(bytes(raw_bytes(t.data)))
    for o in req.outputs or ():
        msg.outputs.add(name=o.name)
    _params_to_pb({k: v for k, v in req.parameters.items() if k != "binary_data_output"},
                  msg.parameters)  # fmt: skip
    return msg


def response_to_pb(r: InferResponse) -> pb.ModelInferResponse:
    """An InferResponse as a ModelInferResponse: raw outputs, the report as JSON text."""
    msg = pb.ModelInferResponse(
        model_name=r.model_name, model_version=r.model_version or "", id=r.id or ""
    )
    for t in r.outputs:
        msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.data.shape)
        msg.raw_output_contents.append(bytes(raw_bytes(t.data)))
    _params_to_pb(r.wire_parameters(), msg.parameters)
    return msg


def response_from_pb(msg: pb.ModelInferResponse, where: str) -> InferResponse:
    """A target's ModelInferResponse; one that is not well-formed is the target's fault."""
    try:
        outputs = _tensors_from_pb(msg.outputs, msg.raw_output_contents, "outputs")
    except BadRequest as e:
        raise MalformedResponse(f"{where}: {e}") from None
    return InferResponse(
        msg.model_name,
        outputs,
        msg.model_version or None,
        msg.id or None,
        _params_from_pb(msg.parameters),
    )


# --------------------------------------------------------------------------- metadata, config


def metadata_to_pb(doc: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """The REST model metadata as its gRPC message (``parameters``, gpufan's own, stay REST's)."""
    msg = pb.ModelMetadataResponse(
        name=doc.get("name", ""),
        versions=[str(v) for v in doc.get("versions") or ()],
        platform=doc.get("platform", ""),
    )
    for key, into in (("inputs", msg.inputs), ("outputs", msg.outputs)):
        for t in doc.get(key) or ():
            into.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
    return msg


def metadata_from_pb(msg: pb.ModelMetadataResponse) -> dict[str, Any]:
    """A target's metadata message in REST's shape (the front door checks and merges those)."""

    def tensors(ts: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]

    return {
        "name": msg.name,
        "versions": list(msg.versions),
        "platform": msg.platform,
        "inputs": tensors(msg.inputs),
        "outputs": tensors(msg.outputs),
    }


def config_to_pb(doc: Mapping[str, Any]) -> pb.ModelConfigResponse:
    """Triton's model configuration (REST's JSON form) as ModelConfigResponse."""
    config = json_format.ParseDict(dict(doc), mc.ModelConfig(), ignore_unknown_fields=True)
    return pb.ModelConfigResponse(config=config)


def config_from_pb(msg: pb.ModelConfigResponse) -> dict[str, Any]:
    """ModelConfigResponse as REST's JSON (protobuf writes int64 as strings: dims become ints)."""
    doc = json_format.MessageToDict(msg.config, preserving_proto_field_name=True)
    for key in ("input", "output"):
        for t in doc.get(key, ()):
            if "dims" in t:
                t["dims"] = [int(d) for d in t["dims"]]
            if "reshape" in t:
                t["reshape"]["shape"] = [int(d) for d in t["reshape"].get("shape", ())]
    return doc
