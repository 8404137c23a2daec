"""Event-triggered inference: what the cloud functions run for storage events rather than HTTP.

An object lands in a bucket; a storage event (S3 -> SQS, GCS finalize, Azure blob or queue)
names it; ``run_job`` reads it, sends it through the front door's data plane (the same
``FrontDoor.infer`` that serves HTTP — same placement, fan-out and re-dispatch) and writes the
outputs and a result manifest. The convention, the same on every store::

    jobs/<name>.npz                    input: one array per model input, named as the inputs
    jobs/<name>.npy                    input: the single input of a one-input model
    jobs/<name>.json                   input: an OIP JSON infer request
    jobs/<name>.manifest.json          what to run (below); upload it BEFORE the input, whose
                                       arrival starts the job — or put the same JSON in the
                                       input's user metadata ``gpufan-manifest`` (one upload)
    results/<input key>/<version>/outputs.npz   one array per output (success only)
    results/<input key>/<version>/result.json   written last: status, error, placement report,
                                                timings, input key/etag/version

Manifest: ``{"model": "digits", "version": "1"?, "parameters": {"slo_ms": 500,
"origin": "aws:us-east-1", ...}?, "outputs": ["label"]?, "input": "X"?}`` — ``parameters`` are
the front door's request extras; ``input`` names a ``.npy``'s tensor when the model's metadata
should not be asked.

``<version>`` is the store's version id (S3 version, GCS generation) or else the etag, so a
re-delivered event (every queue here delivers at least once) finds the same result key: an ``ok``
result is not computed twice, and anything else is overwritten, never duplicated.

Failures: a bad input (no manifest, wrong shape, unknown model) writes an ``error`` result and
raises ``PermanentJobError``; a transient one (targets or storage unavailable) writes nothing and
raises ``RetryableJobError``. Either fails the event, so the queue's own retry and dead-letter
policy (Terraform's) takes over.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import (
    BadRequest,
    ClientError,
    ConfigError,
    GpufanError,
    JobError,
    ObjectNotFound,
    PermanentJobError,
    RetryableJobError,
    StorageError,
)
from core.storage.base import Storage
from core.wire.client import as_request, requested
from core.wire.oip import DataPlane
from core.wire.staging import encode_arrays
from core.wire.tensors import InferRequest, InferResponse, Tensor, decode_request

if TYPE_CHECKING:
    pass

__all__ = [
    "INPUT_SUFFIXES",
    "JobError",
    "JobManifest",
    "JobOutcome",
    "PermanentJobError",
    "RetryableJobError",
    "is_job_input",
    "result_keys",
    "run_job",
]

INPUT_SUFFIXES = (".npz", ".npy", ".json")
MANIFEST_SUFFIX = ".manifest.json"
METADATA_KEY = "gpufan-manifest"
RESULTS_PREFIX = "results/"
Scalar = str | int | float | bool


class JobManifest(BaseModel):
    """What to run on an input object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    version: str | None = None
    parameters: dict[str, Scalar] = Field(default_factory=dict)
    outputs: tuple[str, ...] | None = None
    input: str | None = None


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What became of one input object. ``status``: ``ok`` (computed now), ``done`` (an ok result
    for this version existed already), ``ignored`` (not a job input: a manifest or a result)."""

    key: str
    status: Literal["ok", "done", "ignored"]
    version: str | None = None
    result_key: str | None = None
    outputs_key: str | None = None


def is_job_input(key: str, results_prefix: str = RESULTS_PREFIX) -> bool:
    """Whether an event for ``key`` starts a job (manifests and results do not)."""
    return (
        key.endswith(INPUT_SUFFIXES)
        and not key.endswith(MANIFEST_SUFFIX)
        and not key.startswith(results_prefix)
    )


def result_keys(key: str, version: str, results_prefix: str = RESULTS_PREFIX) -> tuple[str, str]:
    """``(result.json, outputs.npz)`` keys of one version of one input."""
    base = f"{results_prefix}{key}/{version}/"
    return base + "result.json", base + "outputs.npz"


def _manifest_key(key: str) -> str:
    return key.rsplit(".", 1)[0] + MANIFEST_SUFFIX


def _parse_manifest(raw: bytes | str, where: str) -> JobManifest:
    try:
        return JobManifest.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"{where}: not valid JSON: {e}") from None
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors()
        )
        raise BadRequest(f"{where}: {problems}") from None


async def _manifest(storage: Storage, key: str, metadata: Mapping[str, str]) -> JobManifest:
    if METADATA_KEY in metadata:
        return _parse_manifest(metadata[METADATA_KEY], f"{key} metadata {METADATA_KEY}")
    mkey = _manifest_key(key)
    try:
        found = await storage.get(mkey)
    except ObjectNotFound:
        raise BadRequest(
            f"no manifest for {key}: upload {mkey} before the input, or set the input's "
            f"metadata {METADATA_KEY}"
        ) from None
    return _parse_manifest(found.data, mkey)


def _arrays(key: str, data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` or ``.npy`` (``""`` names a ``.npy``'s one array)."""
    try:
        if key.endswith(".npy"):
            return {"": np.load(io.BytesIO(data), allow_pickle=False)}
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise BadRequest(f"{key} is not a readable numpy file: {e}") from None


async def _single_input(plane: DataPlane, m: JobManifest) -> str:
    if m.input:
        return m.input
    inputs = (await plane.model_metadata(m.model, m.version)).get("inputs") or []
    if len(inputs) != 1:
        raise BadRequest(
            f"model {m.model!r} has {len(inputs)} inputs; a .npy carries one: use .npz, one "
            "array per input"
        )
    return str(inputs[0]["name"])


async def _request(plane: DataPlane, key: str, data: bytes, m: JobManifest) -> InferRequest:
    if key.endswith(".json"):
        req = decode_request(data)
        return replace(
            req,
            parameters={**m.parameters, **req.parameters},  # the request's own extras win
            outputs=req.outputs if req.outputs is not None else requested(m.outputs),
        )
    arrays = _arrays(key, data)
    if not arrays:
        raise BadRequest(f"{key} holds no arrays")
    if "" in arrays:
        arrays = {await _single_input(plane, m): arrays[""]}
    return as_request(arrays, m.outputs, parameters=m.parameters)


def _npz(outputs: Sequence[Tensor]) -> bytes:
    # Not np.savez: its own keywords (file, allow_pickle) would swallow outputs of those names.
    # BYTES outputs are pickled, as np.savez would; whoever loads the result opts in to them.
    return encode_arrays({t.name: t.data for t in outputs}, allow_pickle=True)


def _report(response: InferResponse) -> Any:
    return response.report.as_json() if response.report is not None else None


async def run_job(
    plane: DataPlane,
    storage: Storage,
    key: str,
    *,
    results_prefix: str = RESULTS_PREFIX,
    clock: Callable[[], float] = time.perf_counter,
) -> JobOutcome:
    """Run the job that the object ``key`` starts, once per version of it.

    Raises:
        PermanentJobError: bad input or configuration; an ``error`` result names the cause.
        RetryableJobError: targets or storage unavailable; nothing was written.
    """
    if not is_job_input(key, results_prefix):
        return JobOutcome(key, "ignored")
    started = clock()
    try:
        obj = await storage.get(key)
    except ObjectNotFound as e:  # deleted since the event: nothing to run, nowhere to report
        raise PermanentJobError(f"{key}: the input object is gone: {e}", key) from e
    except GpufanError as e:
        raise _job_error(e, key, None) from e
    result_key, outputs_key = result_keys(key, obj.version, results_prefix)
    head = {"input": {"key": key, "etag": obj.etag, "version": obj.version}}
    try:
        if await storage.exists(result_key):
            previous = orjson.loads((await storage.get(result_key)).data)
            if previous.get("status") == "ok":
                return JobOutcome(key, "done", obj.version, result_key, outputs_key)
        manifest = await _manifest(storage, key, obj.metadata)
        request = await _request(plane, key, obj.data, manifest)
        read_done = clock()
        response = await plane.infer(manifest.model, manifest.version, request)
        infer_done = clock()
        await storage.put(outputs_key, _npz(response.outputs))
        timings = {
            "read": (read_done - started) * 1000,
            "infer": (infer_done - read_done) * 1000,
            "write": (clock() - infer_done) * 1000,
        }
        doc = {
            **head,
            "status": "ok",
            "model": manifest.model,
            "model_version": response.model_version,
            "outputs_key": outputs_key,
            "outputs": {
                t.name: {"datatype": t.datatype, "shape": list(t.data.shape)}
                for t in response.outputs
            },
            "report": _report(response),
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "finished_at": datetime.now(UTC).isoformat(),
        }
        await storage.put(result_key, orjson.dumps(doc), content_type="application/json")
    except GpufanError as e:
        error = _job_error(e, key, result_key)
        if not error.retryable:
            doc = {**head, "status": "error", "error": str(e), "error_type": type(e).__name__}
            try:
                await storage.put(result_key, orjson.dumps(doc), content_type="application/json")
            except GpufanError as unwritten:
                raise _job_error(unwritten, key, None) from e
        raise error from e
    return JobOutcome(key, "ok", obj.version, result_key, outputs_key)


def _job_error(e: GpufanError, key: str, result_key: str | None) -> JobError:
    """Client mistakes and configuration are permanent; everything else may pass."""
    permanent = isinstance(e, ClientError | ConfigError | StorageError)
    cls = PermanentJobError if permanent else RetryableJobError
    return cls(f"{key}: {type(e).__name__}: {e}", key, result_key if permanent else None)
