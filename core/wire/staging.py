"""The pure half of the ``batch`` backend: options, S3 layout, formats, the job request, polling.

No I/O and no clock: ``core.backends.batch`` does the AWS calls with what this decides, and
``gpu_containers.batch_job`` reads what it lays out, so both ends of a job share one definition::

    s3://{bucket}/{prefix}/{dispatch_id}/manifest.json     model, version, outputs, shard ids
    s3://{bucket}/{prefix}/{dispatch_id}/{i}/inputs.npz    child i's input arrays, by name
    s3://{bucket}/{prefix}/{dispatch_id}/{i}/outputs.npz   child i's output arrays, by name

``i`` is the child's array index (``AWS_BATCH_JOB_ARRAY_INDEX``), and the manifest's ``shards``
list is in child-index order. Arrays travel as ``.npz`` (numpy's zip of ``.npy`` files) rather than
as OIP binary bodies: each file carries its own names, dtypes and shapes, so no header length has
to travel beside it, and an operator reads a stuck job's inputs with one ``np.load``. Archives are
written and read with pickling refused: a bucket is no place to take code from. That rules out
BYTES (object) tensors, which a Batch target therefore declines (another target runs them).
"""

from __future__ import annotations

import io
import math
import random
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from core.config import Target
from core.errors import ConfigError

__all__ = [
    "ARRAY_INDEX_ENV",
    "MANIFEST_ENV",
    "MAX_ARRAY",
    "OPTIONAL_OPTIONS",
    "REGION_ENV",
    "REQUIRED_OPTIONS",
    "BatchOptions",
    "Manifest",
    "StagingLayout",
    "child_ids",
    "decode_arrays",
    "encode_arrays",
    "failure_message",
    "missing_object",
    "poll_waits",
    "submit_request",
]

MANIFEST_ENV = "GPUFAN_BATCH_MANIFEST"  # s3://bucket/key of the dispatch's manifest.json
REGION_ENV = "GPUFAN_BATCH_REGION"  # the bucket's region, for the job's S3 client
ARRAY_INDEX_ENV = "AWS_BATCH_JOB_ARRAY_INDEX"  # set by Batch for array children; absent: 0
_MANIFEST = "manifest.json"
_SCHEMA = 1
# AWS Batch API limits (SubmitJob reference): an array job has 2..10,000 children, and a job
# timeout (attemptDurationSeconds) is at least 60 seconds.
MAX_ARRAY = 10_000
_MIN_ATTEMPT_S = 60
_JOB_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")  # job names: letters, digits, - and _, <= 128
REQUIRED_OPTIONS = ("job_queue", "job_definition", "bucket")
OPTIONAL_OPTIONS = ("prefix", "poll_initial_s", "poll_max_s", "endpoint_url", "compute_environment")


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """A Batch target's ``options``, checked.

    Keys, in a target of ``gpufan.yaml``::

        backend: batch
        region: us-east-1             # Batch and S3 region (the bucket must live there)
        timeout_s: 900                # submit -> last child; unfinished children are terminated
        options:
          job_queue: gpu-q            # required: name or ARN
          job_definition: infer       # required: name, name:revision or ARN
          bucket: my-staging-bucket   # required
          prefix: gpufan/staging      # default
          poll_initial_s: 2.0         # first wait between describe_jobs polls; doubles, jittered
          poll_max_s: 20.0            # longest wait between polls
          endpoint_url: null          # tests: one endpoint (a moto server) for Batch and S3
    """

    job_queue: str
    job_definition: str
    bucket: str
    prefix: str = "gpufan/staging"
    poll_initial_s: float = 2.0
    poll_max_s: float = 20.0
    endpoint_url: str | None = None

    @classmethod
    def of(cls, target: Target) -> BatchOptions:
        """Raises: ConfigError naming the target and the missing, unknown or invalid key."""
        opts = dict(target.options)
        where = f"target {target.name!r} (backend 'batch')"
        unknown = sorted(set(opts) - {*REQUIRED_OPTIONS, *OPTIONAL_OPTIONS})
        if unknown:
            raise ConfigError(
                f"{where}: unknown options {unknown}; "
                f"valid: {[*REQUIRED_OPTIONS, *OPTIONAL_OPTIONS]}"
            )
        for key in (*REQUIRED_OPTIONS, "prefix", "endpoint_url"):
            value = opts.get(key)
            if key in REQUIRED_OPTIONS and value is None:
                raise ConfigError(f"{where}: options.{key} is required")
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}: options.{key} must be a non-empty string")
        for key in ("poll_initial_s", "poll_max_s"):
            value = opts.get(key)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            if value is not None and not ok:
                raise ConfigError(f"{where}: options.{key} must be a number > 0, got {value!r}")
        made = cls(**opts)
        if made.poll_max_s < made.poll_initial_s:
            raise ConfigError(f"{where}: options.poll_max_s must be >= options.poll_initial_s")
        return made

    @property
    def definition_filter(self) -> dict[str, Any]:
        """``describe_job_definitions`` arguments that find the job definition: name:revision
        and ARNs contain a colon and are looked up as given; a bare name means its revisions."""
        jd = self.job_definition
        return {"jobDefinitions": [jd]} if ":" in jd else {"jobDefinitionName": jd}


def poll_waits(opts: BatchOptions, timeout_s: float, rng: random.Random) -> Iterator[float]:
    """Waits between polls: doubling from ``poll_initial_s`` to ``poll_max_s``, each jittered
    into its upper half ("equal jitter", AWS Architecture Blog, "Exponential Backoff And Jitter",
    2015) so concurrent dispatches spread their describe_jobs calls yet every wait is at least
    half the first one. That floor bounds the count of polls by ``timeout_s`` alone."""
    count = math.ceil(timeout_s / (opts.poll_initial_s / 2)) + 1
    for k in range(count):
        ceiling = min(opts.poll_max_s, opts.poll_initial_s * 2 ** min(k, 32))
        yield ceiling * rng.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True)
class StagingLayout:
    """The keys of one dispatch: everything under ``root`` belongs to it and goes with it."""

    bucket: str
    root: str  # "{prefix}/{dispatch_id}", no trailing slash

    @classmethod
    def for_dispatch(cls, bucket: str, prefix: str, dispatch_id: str) -> StagingLayout:
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/{dispatch_id}" if prefix else dispatch_id)

    @classmethod
    def from_manifest_url(cls, url: str) -> StagingLayout:
        """The layout a job finds through its ``GPUFAN_BATCH_MANIFEST`` variable.

        Raises:
            ValueError: ``url`` is not ``s3://bucket/.../manifest.json``.
        """
        bucket, sep, key = url.removeprefix("s3://").partition("/")
        root, _, name = key.rpartition("/")
        if not url.startswith("s3://") or not bucket or not sep or not root or name != _MANIFEST:
            raise ValueError(f"expected s3://BUCKET/PREFIX/{_MANIFEST}, got {url!r}")
        return cls(bucket, root)

    @property
    def prefix(self) -> str:
        """The common prefix of every object of the dispatch (for listing and deleting)."""
        return f"{self.root}/"

    @property
    def manifest_key(self) -> str:
        return f"{self.root}/{_MANIFEST}"

    @property
    def manifest_url(self) -> str:
        return f"s3://{self.bucket}/{self.manifest_key}"

    def inputs_key(self, index: int) -> str:
        return f"{self.root}/{index}/inputs.npz"

    def outputs_key(self, index: int) -> str:
        return f"{self.root}/{index}/outputs.npz"


@dataclass(frozen=True, slots=True)
class Manifest:
    """What every child of one array job shares; ``shards[i]`` is the shard child ``i`` runs."""

    model: str
    version: str | None
    outputs: tuple[str, ...] | None  # None: every output of the model
    shards: tuple[str, ...]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "schema": _SCHEMA,
                "model": self.model,
                "version": self.version,
                "outputs": None if self.outputs is None else list(self.outputs),
                "shards": list(self.shards),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and check a manifest.

        Raises:
            ValueError: not JSON, another schema, or a field of the wrong type.
        """
        try:
            doc: Any = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"manifest is not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("schema") != _SCHEMA:
            raise ValueError(f"manifest is not a gpufan Batch manifest of schema {_SCHEMA}")
        model, version, outputs, shards = (
            doc.get(k) for k in ("model", "version", "outputs", "shards")
        )
        if not isinstance(model, str) or not (version is None or isinstance(version, str)):
            raise ValueError("manifest: 'model' must be a string and 'version' a string or null")
        if outputs is not None and not _strings(outputs):
            raise ValueError("manifest: 'outputs' must be a list of strings or null")
        if not _strings(shards) or not shards:
            raise ValueError("manifest: 'shards' must be a non-empty list of strings")
        return cls(model, version, None if outputs is None else tuple(outputs), tuple(shards))


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def encode_arrays(arrays: Mapping[str, np.ndarray], *, allow_pickle: bool = False) -> bytes:
    """An uncompressed ``.npz`` of ``arrays``, in their order, that ``np.load`` reads.

    Written member by member rather than through ``np.savez``, whose own keyword arguments
    (``file``, ``allow_pickle``) would collide with tensors of those names.

    Args:
        arrays: the members, by name.
        allow_pickle: pickle arrays of Python objects (BYTES) rather than refuse them, as
            ``np.savez`` does; only for a file a person loads, never for staging, which is read
            with pickles refused.

    Raises:
        ValueError: an array holds Python objects (BYTES) and ``allow_pickle`` is false.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            if array.dtype.hasobject and not allow_pickle:
                raise ValueError(
                    f"tensor {name!r} holds Python objects (BYTES); .npz staging carries only "
                    "numeric and boolean tensors"
                )
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=allow_pickle)
    return buf.getvalue()


def decode_arrays(data: bytes, what: str = "archive") -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``, by name, in archive order; pickled members are refused.

    Raises:
        ValueError: ``data`` is not an ``.npz`` of plain arrays (``what`` names it in the message).
    """
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{what} is not a readable .npz of arrays: {e}") from None


def submit_request(
    opts: BatchOptions, layout: StagingLayout, region: str, model: str, n: int, timeout_s: float
) -> dict[str, Any]:
    """``submit_job``'s arguments for ``n`` shards: an array job, or a plain one when ``n`` is 1
    (Batch arrays start at 2 children). The environment points each child at the manifest."""
    name = _JOB_NAME_BAD.sub("-", f"gpufan-{model}")[:100]
    request: dict[str, Any] = {
        "jobName": f"{name}-{layout.root.rsplit('/', 1)[-1][:12]}",
        "jobQueue": opts.job_queue,
        "jobDefinition": opts.job_definition,
        "containerOverrides": {
            "environment": [
                {"name": MANIFEST_ENV, "value": layout.manifest_url},
                {"name": REGION_ENV, "value": region},
            ]
        },
        # A child that outlives the dispatch's patience is stopped by Batch itself as well.
        "timeout": {"attemptDurationSeconds": max(_MIN_ATTEMPT_S, math.ceil(timeout_s))},
    }
    if n >= 2:
        request["arrayProperties"] = {"size": n}
    return request


def child_ids(parent: str, n: int) -> list[str]:
    """Job ids of the children, by array index: ``<parent>:<i>``, or the job itself when plain."""
    return [f"{parent}:{i}" for i in range(n)] if n >= 2 else [parent]


def failure_message(target: str, described: Mapping[str, Any]) -> str:
    """What a FAILED child says: Batch's ``statusReason`` (a spot reclaim reads "Host EC2
    (instance i-...) terminated.") and the container's exit code when there is one."""
    reason = described.get("statusReason") or "no statusReason given"
    code = (described.get("container") or {}).get("exitCode")
    exited = "" if code is None else f" (exit code {code})"
    return f"{target}: Batch job {described.get('jobId')} FAILED: {reason}{exited}"


def missing_object(error: BaseException | None) -> bool:
    """Whether a botocore ``ClientError`` says the S3 object is not there (duck-typed: this
    module imports no AWS SDK)."""
    code = getattr(error, "response", {}).get("Error", {}).get("Code")
    return code in ("NoSuchKey", "404")
