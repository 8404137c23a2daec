"""The ``batch`` backend: shards as the children of one AWS Batch array job, staged in S3.

Where HTTP backends send shards to a server that is already up, a Batch target has no server: a
call stages every shard's inputs in S3 (layout in ``core.wire.staging``), submits one array
job whose child ``i`` runs shard ``i`` (``gpufan worker --batch``, ``gpu_containers.batch_job``),
then polls the children and yields each outcome as its child finishes. Batch is for throughput at
spot prices, not latency: give Batch targets a ``timeout_s`` of minutes, not seconds.

Target options are ``core.wire.staging.BatchOptions`` (``job_queue``, ``job_definition``,
``bucket`` required); ``Target.region`` is the Batch and S3 region.

Mapping of what Batch says (every failure is retryable: the dispatcher re-dispatches the shard,
possibly to another cloud):

- child ``FAILED`` (container exited non-zero, spot reclaim "Host EC2 (instance …) terminated")
  -> ``TargetUnavailable`` carrying the ``statusReason`` and exit code;
- child ``SUCCEEDED`` without a readable ``outputs.npz`` -> ``MalformedResponse``;
- children unfinished after ``timeout_s`` -> ``TargetTimeout``, and the array job is terminated;
- an AWS API error while staging or submitting -> ``TargetUnavailable`` for every shard.

The target's ``max_concurrency`` slots are not taken per shard: the compute environment's
``maxvCpus`` is what bounds how many children run, and Batch queues the rest itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from core.backends.base import BackendContext, ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.config import Target
from core.errors import GpufanError, MalformedResponse, TargetTimeout, TargetUnavailable
from core.planning.shards import Shard
from core.wire.staging import (
    MAX_ARRAY,
    BatchOptions,
    Manifest,
    StagingLayout,
    child_ids,
    decode_arrays,
    encode_arrays,
    failure_message,
    missing_object,
    poll_waits,
    submit_request,
)
from core.wire.tensors import Tensor

__all__ = ["BatchBackend", "BatchOptions"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_DESCRIBE_CHUNK = 100  # DescribeJobs takes at most 100 job ids
_DELETE_CHUNK = 1000  # S3 DeleteObjects takes at most 1,000 keys
# describe_jobs failing this many times in a row means the target is gone, not throttling.
_DESCRIBE_FAILURES = 3


@contextmanager
def _aws_errors(target: Target, doing: str) -> Iterator[None]:
    """Map botocore's errors into the tree: the target could not do ``doing`` (retryable)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as e:  # str(ClientError) names the code and operation
        raise TargetUnavailable(f"{target.name}: {doing} failed: {e}") from e


def _no_server(target: Target, what: str) -> TargetUnavailable:
    return TargetUnavailable(
        f"{target.name}: an AWS Batch target cannot answer {what} (no server runs between "
        "jobs); ask an HTTP target"
    )


class BatchBackend:
    """AWS Batch array jobs over S3 staging; one boto3 client per (service, region, endpoint).

    Args:
        session: a ``boto3.session.Session``; None builds one on first use (standard credential
            chain). Tests pass their own to hook botocore events.
        clock, sleep, rng: the poll loop's time and jitter, injected so tests run instantly.
    """

    name = "batch"

    def __init__(
        self,
        *,
        session: Any | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clients: dict[tuple[str, str, str | None], Any] = {}
        self._lock = threading.Lock()  # boto3 sessions may not create clients concurrently
        self._cleanups: set[asyncio.Task[None]] = set()  # staged objects still being deleted

    @classmethod
    def create(cls, ctx: BackendContext) -> BatchBackend:
        """Built by the front door; AWS credentials come from boto3's chain, never the config."""
        return cls()

    def _client(self, service: str, target: Target, opts: BatchOptions) -> Any:
        """The cached client, made on a worker thread (it reads JSON models); boto3 is imported
        here, on first use, so ``import core.backends.batch`` needs no AWS SDK."""
        key = (service, target.region, opts.endpoint_url)
        with self._lock:
            if key not in self._clients:
                if self._session is None:
                    import boto3

                    self._session = boto3.session.Session()
                self._clients[key] = self._session.client(
                    service, region_name=target.region, endpoint_url=opts.endpoint_url
                )
            return self._clients[key]

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        """Stage, submit one array job, and yield each shard's outcome as its child finishes.

        Staged objects are deleted when the iterator ends, is closed or is cancelled; children
        still running then are terminated.
        """
        if not shards:
            return
        started = self._clock()
        run: _Run | None = None
        try:
            try:
                run = _Run(self, target, job, shards)
                await run.stage()
                await run.submit()
            except GpufanError as e:
                for shard in shards:
                    yield ShardFailed(shard, target.name, e, self._clock() - started)
                return
            async for outcome in run.poll(started):
                yield outcome
        finally:
            if run is not None:
                await run.close()

    async def model_metadata(
        self, target: Target, model: str, version: str | None
    ) -> dict[str, Any]:
        """Raises: TargetUnavailable, always: Batch runs jobs, not a server, so nothing here can
        describe a model, and the front door asks the next target after a retryable error."""
        raise _no_server(target, "model metadata")

    async def model_config(self, target: Target, model: str, version: str | None) -> dict[str, Any]:
        """Raises: TargetUnavailable, always (see ``model_metadata``)."""
        raise _no_server(target, "model config")

    async def ready(self, target: Target) -> bool:
        """The job queue is ENABLED and VALID and the job definition is ACTIVE.

        Raises:
            ConfigError: the target's options are invalid.
        """
        opts = BatchOptions.of(target)

        def check() -> bool:
            batch = self._client("batch", target, opts)
            queues = batch.describe_job_queues(jobQueues=[opts.job_queue])["jobQueues"]
            defs = batch.describe_job_definitions(**opts.definition_filter)["jobDefinitions"]
            return any(
                q.get("state") == "ENABLED" and q.get("status") == "VALID" for q in queues
            ) and any(d.get("status") == "ACTIVE" for d in defs)

        try:
            with _aws_errors(target, "checking the job queue and definition"):
                return await asyncio.to_thread(check)
        except TargetUnavailable as e:
            log.info("%s", e)
            return False

    async def aclose(self) -> None:
        """Finish the cleanups still running, then drop the clients (and their pools)."""
        await asyncio.gather(*self._cleanups, return_exceptions=True)
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


class _Run:
    """One ``run`` call: its staged objects, its array job and its unfinished children."""

    def __init__(
        self, backend: BatchBackend, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> None:
        """Raises: ConfigError, when the target's options are invalid."""
        self.backend = backend
        self.target = target
        self.opts = opts = BatchOptions.of(target)
        self.job = job
        self.shards = list(shards)
        self.layout = StagingLayout.for_dispatch(opts.bucket, opts.prefix, uuid.uuid4().hex)
        self.parent: str | None = None
        self.pending: dict[str, tuple[int, Shard]] = {}  # child job id -> (array index, shard)

    def _client(self, service: str) -> Any:
        return self.backend._client(service, self.target, self.opts)

    async def stage(self) -> None:
        """Upload every shard's inputs and then the manifest, concurrently.

        Raises:
            TargetUnavailable: an upload failed, a tensor cannot be staged (BYTES), or there are
                more shards than one array job can hold.
        """
        n, layout, job = len(self.shards), self.layout, self.job
        if n > MAX_ARRAY:
            raise TargetUnavailable(f"{self.target.name}: {n} shards; an array holds {MAX_ARRAY}")
        outputs = None if job.outputs is None else tuple(o.name for o in job.outputs)
        manifest = Manifest(job.model, job.version, outputs, tuple(s.id for s in self.shards))
        results = await asyncio.gather(  # encoding copies arrays: off the event loop too
            *(asyncio.to_thread(self._put_inputs, i, s) for i, s in enumerate(self.shards)),
            return_exceptions=True,  # every upload ends before cleanup lists the prefix
        )
        if failed := next((r for r in results if isinstance(r, BaseException)), None):
            raise failed
        await asyncio.to_thread(self._put, layout.manifest_key, manifest.to_json())

    def _put_inputs(self, index: int, shard: Shard) -> None:
        try:
            body = encode_arrays({t.name: t.data for t in shard.inputs})
        except ValueError as e:
            raise TargetUnavailable(f"{self.target.name}: cannot stage {shard.id}: {e}") from None
        self._put(self.layout.inputs_key(index), body)

    def _put(self, key: str, body: bytes) -> None:
        with _aws_errors(self.target, f"staging s3://{self.layout.bucket}/{key}"):
            self._client("s3").put_object(Bucket=self.layout.bucket, Key=key, Body=body)

    async def submit(self) -> None:
        """One array job whose child ``i`` runs shard ``i``."""
        n = len(self.shards)
        request = submit_request(
            self.opts, self.layout, self.target.region, self.job.model, n, self.job.timeout_s
        )

        def call() -> str:
            with _aws_errors(self.target, "submitting the array job"):
                return str(self._client("batch").submit_job(**request)["jobId"])

        self.parent = await asyncio.to_thread(call)
        ids = child_ids(self.parent, n)
        self.pending = {
            cid: (i, s) for i, (cid, s) in enumerate(zip(ids, self.shards, strict=True))
        }

    async def poll(self, started: float) -> AsyncIterator[ShardOutcome]:
        """Describe the unfinished children until none is left or ``timeout_s`` has passed."""
        backend, target = self.backend, self.target
        deadline = started + self.job.timeout_s
        failures = 0
        for wait in poll_waits(self.opts, self.job.timeout_s, backend._rng):
            try:
                described = await asyncio.to_thread(self._describe, list(self.pending))
                failures = 0
            except TargetUnavailable as e:
                failures += 1
                log.warning("%s (poll failure %d of %d)", e, failures, _DESCRIBE_FAILURES)
                if failures >= _DESCRIBE_FAILURES:
                    for outcome in self._fail_pending(e, started):
                        yield outcome
                    return
                described = []
            done = [d for d in described if d.get("status") in ("SUCCEEDED", "FAILED")]
            for finished in await asyncio.gather(*(self._finish(d, started) for d in done)):
                if finished is not None:
                    yield finished
            if not self.pending:
                return
            remaining = deadline - backend._clock()
            if remaining <= 0:
                break
            await backend._sleep(min(wait, remaining))
        await self._terminate(f"gpufan: no answer within {self.job.timeout_s:g} s")
        error = TargetTimeout(
            f"{target.name}: Batch children unfinished after {self.job.timeout_s:g} s; terminated"
        )
        for outcome in self._fail_pending(error, started):
            yield outcome

    def _fail_pending(self, error: GpufanError, started: float) -> Iterator[ShardOutcome]:
        elapsed = self.backend._clock() - started
        pending, self.pending = self.pending, {}
        for _, shard in pending.values():
            yield ShardFailed(shard, self.target.name, error, elapsed)

    def _describe(self, ids: list[str]) -> list[dict[str, Any]]:
        batch = self._client("batch")
        out: list[dict[str, Any]] = []
        with _aws_errors(self.target, "describing the array job's children"):
            for k in range(0, len(ids), _DESCRIBE_CHUNK):
                out += batch.describe_jobs(jobs=ids[k : k + _DESCRIBE_CHUNK])["jobs"]
        return out

    async def _finish(self, described: dict[str, Any], started: float) -> ShardOutcome | None:
        """The outcome of a child that reached SUCCEEDED or FAILED (None: not one of ours)."""
        entry = self.pending.pop(str(described.get("jobId")), None)
        if entry is None:
            return None
        index, shard = entry
        name = self.target.name
        if described["status"] == "FAILED":
            error = TargetUnavailable(failure_message(name, described))
            return ShardFailed(shard, name, error, self.backend._clock() - started)
        try:
            outputs = await asyncio.to_thread(self._read_outputs, index)
        except GpufanError as e:
            return ShardFailed(shard, name, e, self.backend._clock() - started)
        return ShardOk(shard, name, outputs, self.backend._clock() - started)

    def _read_outputs(self, index: int) -> tuple[Tensor, ...]:
        key = self.layout.outputs_key(index)
        where = f"s3://{self.layout.bucket}/{key}"
        try:
            with _aws_errors(self.target, f"reading {where}"):
                body = self._client("s3").get_object(Bucket=self.layout.bucket, Key=key)
                data = body["Body"].read()
        except TargetUnavailable as e:
            if missing_object(e.__cause__):
                raise MalformedResponse(
                    f"{self.target.name}: child {index} SUCCEEDED but wrote no {where}"
                ) from None
            raise
        try:
            arrays = decode_arrays(data, where)
        except ValueError as e:
            raise MalformedResponse(f"{self.target.name}: child {index} SUCCEEDED: {e}") from None
        return tuple(Tensor(n, a) for n, a in arrays.items())

    async def _terminate(self, reason: str) -> None:
        """Terminate the array job (its unfinished children with it); best effort."""
        if self.parent is None:
            return
        try:
            with _aws_errors(self.target, f"terminating Batch job {self.parent}"):
                await asyncio.to_thread(
                    self._client("batch").terminate_job, jobId=self.parent, reason=reason
                )
        except TargetUnavailable as e:
            log.warning("%s; it runs on until its attemptDurationSeconds", e)

    async def close(self) -> None:
        """Terminate children nobody waits for any more, then delete the dispatch's objects.

        The work runs as its own task: a cancelled caller (the dispatcher, once it has every
        answer) stops waiting at once, and ``BatchBackend.aclose`` waits for what is left.
        """
        task = asyncio.create_task(self._cleanup())
        self.backend._cleanups.add(task)
        task.add_done_callback(self.backend._cleanups.discard)
        await asyncio.shield(task)

    async def _cleanup(self) -> None:
        if self.pending:
            await self._terminate("gpufan: the dispatch no longer needs these shards")
            self.pending = {}
        layout = self.layout

        def delete() -> None:
            s3 = self._client("s3")
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=layout.bucket, Prefix=layout.prefix
            )
            keys = [{"Key": o["Key"]} for page in pages for o in page.get("Contents", ())]
            for k in range(0, len(keys), _DELETE_CHUNK):
                chunk = {"Objects": keys[k : k + _DELETE_CHUNK], "Quiet": True}
                s3.delete_objects(Bucket=layout.bucket, Delete=chunk)

        try:
            with _aws_errors(self.target, f"deleting s3://{layout.bucket}/{layout.prefix}"):
                await asyncio.to_thread(delete)
        except TargetUnavailable as e:
            log.warning("%s; a lifecycle rule on the prefix should expire them", e)
