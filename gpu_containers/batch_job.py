"""The worker's AWS Batch entry point: run one staged shard, write its outputs, exit.

The job definition's command is ``gpufan worker --batch --model-repo DIR`` (or
``python -m gpu_containers.batch_job --model-repo DIR``). ``core.backends.batch`` submitted the
job; this is its other end (the S3 layout is ``core.wire.staging``). Environment::

    GPUFAN_BATCH_MANIFEST       s3://BUCKET/PREFIX/DISPATCH/manifest.json (set per job by gpufan)
    GPUFAN_BATCH_REGION         the bucket's region (set per job by gpufan; else boto3's default)
    AWS_BATCH_JOB_ARRAY_INDEX   this child's index (set by Batch; absent for a plain job: 0)
    AWS_ENDPOINT_URL            optional, boto3's own: an S3 endpoint other than AWS (tests)

The shard runs through the same ``WorkerDataPlane`` the OIP server uses, so inputs are checked
against the model's signature the same way and outputs are selected the same way.

Exit status: 0 outputs written; 2 bad input (no or garbled manifest or inputs, inputs that do not
fit the model, a model repository that cannot serve the manifest's model) — permanent, so the job
definition's retry strategy should not retry it; 1 runtime failure (S3 unreachable, onnxruntime
failed) — transient, worth a retry. Either way the reason is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from core.errors import (
    ClientError,
    ConfigError,
    JobError,
    PermanentJobError,
    RetryableJobError,
)
from core.wire.staging import (
    ARRAY_INDEX_ENV,
    MANIFEST_ENV,
    REGION_ENV,
    Manifest,
    StagingLayout,
    decode_arrays,
    encode_arrays,
    missing_object,
)
from core.wire.tensors import InferRequest, InferResponse, RequestedOutput, Tensor
from gpu_containers.dataplane import WorkerDataPlane
from gpu_containers.repository import Repository

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "build_parser",
    "main",
    "run_job",
]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2


@contextmanager
def _s3_errors(doing: str) -> Iterator[None]:
    """A missing object is bad input (retrying cannot create it); any other AWS error is not."""
    from botocore.exceptions import BotoCoreError
    from botocore.exceptions import ClientError as AwsClientError

    try:
        yield
    except AwsClientError as e:
        err = e.response.get("Error", {})
        cls = PermanentJobError if missing_object(e) else RetryableJobError
        raise cls(f"{doing}: {err.get('Code')}: {err.get('Message', e)}") from e
    except BotoCoreError as e:
        raise RetryableJobError(f"{doing}: {e}") from e


def _array_index(env: dict[str, str]) -> int:
    raw = env.get(ARRAY_INDEX_ENV, "0")
    if not raw.isdigit():
        raise PermanentJobError(f"{ARRAY_INDEX_ENV} must be an integer >= 0, got {raw!r}")
    return int(raw)


def _layout(env: dict[str, str]) -> StagingLayout:
    url = env.get(MANIFEST_ENV)
    if not url:
        raise PermanentJobError(f"{MANIFEST_ENV} is not set: gpufan sets it on every job")
    try:
        return StagingLayout.from_manifest_url(url)
    except ValueError as e:
        raise PermanentJobError(f"{MANIFEST_ENV}: {e}") from None


def _read(s3: Any, layout: StagingLayout, key: str) -> bytes:
    with _s3_errors(f"reading s3://{layout.bucket}/{key}"):
        body: bytes = s3.get_object(Bucket=layout.bucket, Key=key)["Body"].read()
        return body


def _plane(model_repo: str, model: str, intra_op_threads: int) -> WorkerDataPlane:
    """A data plane over the one model the manifest names (others in the repository stay
    unloaded: a job pays for the sessions it builds)."""
    try:
        repository = Repository.load(model_repo)
        entry = repository.entry(model)
        return WorkerDataPlane(
            Repository(repository.root, {model: entry}), intra_op_threads=intra_op_threads
        )
    except (ConfigError, ClientError) as e:
        raise PermanentJobError(str(e)) from None


async def _infer(
    plane: WorkerDataPlane, manifest: Manifest, inputs: dict[str, Any]
) -> InferResponse:
    outputs = None
    if manifest.outputs is not None:
        outputs = tuple(RequestedOutput(n) for n in manifest.outputs)
    request = InferRequest(tuple(Tensor(n, a) for n, a in inputs.items()), outputs)
    try:
        return await plane.infer(manifest.model, manifest.version, request)
    finally:
        await plane.close()


def _run(model_repo: str, intra_op_threads: int, env: dict[str, str]) -> None:
    """Run the shard of this child and write its outputs.

    Raises:
        PermanentJobError: bad input (exit 2); RetryableJobError: a runtime failure (exit 1).
    """
    index = _array_index(env)
    layout = _layout(env)
    import boto3

    s3 = boto3.client("s3", region_name=env.get(REGION_ENV) or None)
    try:
        manifest = Manifest.from_json(_read(s3, layout, layout.manifest_key))
    except ValueError as e:
        raise PermanentJobError(f"{layout.manifest_url}: {e}") from None
    if index >= len(manifest.shards):
        raise PermanentJobError(f"array index {index}, but the manifest has {len(manifest.shards)}")
    try:
        inputs = decode_arrays(_read(s3, layout, layout.inputs_key(index)), "inputs")
    except ValueError as e:
        raise PermanentJobError(str(e)) from None
    plane = _plane(model_repo, manifest.model, intra_op_threads)
    try:
        response = asyncio.run(_infer(plane, manifest, inputs))
    except ClientError as e:
        raise PermanentJobError(f"shard {manifest.shards[index]}: {e}") from None
    except Exception as e:  # onnxruntime raises its own types: any of them is a runtime failure
        raise RetryableJobError(f"inference failed: {type(e).__name__}: {e}") from e
    body = encode_arrays({t.name: t.data for t in response.outputs})
    key = layout.outputs_key(index)
    with _s3_errors(f"writing s3://{layout.bucket}/{key}"):
        s3.put_object(Bucket=layout.bucket, Key=key, Body=body)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufan worker --batch",
        description="Run one shard staged by gpufan's AWS Batch backend and exit.",
    )
    p.add_argument(
        "--model-repo", required=True, help="repository: DIR/{model}/{version}/model.onnx"
    )
    p.add_argument(
        "--intra-op-threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)"
    )
    return p


def run_job(
    model_repo: str, *, intra_op_threads: int = 1, env: dict[str, str] | None = None
) -> int:
    """Run this child's shard (``env`` defaults to the process environment).

    Returns:
        The exit status: 0 outputs written, 2 bad input, 1 runtime failure; the reason for a
        non-zero one is printed on stderr.
    """
    try:
        _run(model_repo, intra_op_threads, dict(os.environ if env is None else env))
    except JobError as e:
        print(f"gpufan batch job: {e}", file=sys.stderr)
        return EXIT_RUNTIME if e.retryable else EXIT_BAD_INPUT
    except Exception as e:  # a traceback in the job's log helps nobody decide about retries
        print(f"gpufan batch job: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_job(args.model_repo, intra_op_threads=args.intra_op_threads)


if __name__ == "__main__":
    raise SystemExit(main())
