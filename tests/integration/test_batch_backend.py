"""BatchBackend against moto's S3 and Batch (server mode on 127.0.0.1) with the real boto3 clients,
and the worker's batch entry point run as real subprocesses.

The executor seam is ``tests.fakes.batch_aws.Executor`` (its docstring says how it works).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from core.backends import Backend, BackendContext, backend_class
from core.backends.base import ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.backends.batch import BatchBackend, BatchOptions
from core.backends.http import HttpBackend
from core.config import Policy, Target
from core.dispatch.dispatcher import Dispatcher
from core.errors import ConfigError, MalformedResponse, TargetTimeout, TargetUnavailable
from core.planning.shards import Shard, split
from core.wire.session import make_session
from core.wire.staging import (
    MANIFEST_ENV,
    Manifest,
    StagingLayout,
    encode_arrays,
    failure_message,
)
from core.wire.tensors import InferRequest, Tensor
from gpu_containers import DEMO_REPOSITORY, DEMO_TEST_SET
from tests.fakes.batch_aws import (
    BUCKET,
    CHILD_TIMEOUT_S,
    PREFIX,
    RECLAIM,
    REGION,
    ROOT,
    Aws,
    Executor,
    batch_target,
    child_env,
    executor_for,
    moto_batch,
    spawn,
    staged_keys,
)


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    with moto_batch() as running:
        yield running


@pytest.fixture
def executor(aws: Aws, tmp_path: Path) -> Executor:
    return executor_for(aws, tmp_path)


@pytest.fixture(autouse=True)
def _no_forced_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """40 held-out digits and the model's outputs for them from a direct onnxruntime run."""
    x = np.load(DEMO_TEST_SET)["x"][:40]
    session = ort.InferenceSession(str(DEMO_REPOSITORY / "digits" / "1" / "model.onnx"))
    return x, tuple(session.run(None, {"X": x}))


def dispatcher(targets: list[Target], backends: dict[str, Backend]) -> Dispatcher:
    # 40 items, 10 per shard: four shards, all on the cheapest target while it has room.
    policy = Policy(max_shard_items=10, min_shard_items=10, backoff_ms=0, deadline_ms=120_000)
    return Dispatcher(targets, backends, policy)


def assert_exact(outputs: tuple[Tensor, ...], expected: tuple[np.ndarray, ...]) -> None:
    got = {t.name: t.data for t in outputs}
    assert list(got) == ["label", "probabilities"]
    for name, want in zip(got, expected, strict=True):
        assert got[name].dtype == want.dtype
        assert np.array_equal(got[name], want), name


# ------------------------------------------------------------------------------- through dispatch


async def test_array_job_through_dispatcher_equals_direct_run(aws, executor, digits):
    x, expected = digits
    backend = BatchBackend(session=executor.session())
    target = batch_target(aws)

    result = await dispatcher([target], {"batch": backend}).dispatch(
        "digits", None, InferRequest((Tensor("X", x),))
    )
    await backend.aclose()

    assert_exact(result.outputs, expected)
    assert [s.target for s in result.shards] == ["batch-a"] * 4
    assert result.redispatched == 0
    (job,) = executor.submitted
    assert job["jobQueue"] == aws.queue_arn
    assert job["jobDefinition"] == aws.definition_arn
    assert job["arrayProperties"]["size"] == 4
    env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert env[MANIFEST_ENV].startswith(f"s3://{BUCKET}/{PREFIX}/")
    assert env[MANIFEST_ENV].endswith("/manifest.json")
    assert env["GPUFAN_BATCH_REGION"] == REGION
    (definition,) = aws.batch.describe_job_definitions(**BatchOptions.of(target).definition_filter)[
        "jobDefinitions"
    ]
    assert {"type": "GPU", "value": "1"} in definition["containerProperties"][
        "resourceRequirements"
    ]
    assert sorted(i for i, _, _ in executor.exits) == [0, 1, 2, 3]
    assert all(status == 0 for _, status, _ in executor.exits), executor.exits
    assert staged_keys(aws) == []


async def test_failed_children_are_redispatched_to_another_batch_target(aws, executor, digits):
    x, expected = digits
    executor.verdicts = {0: {1: "reclaim", 2: "bad-model"}}
    backend = BatchBackend(session=executor.session())
    targets = [batch_target(aws, "batch-a", 0.2), batch_target(aws, "batch-b", 0.5)]

    result = await dispatcher(targets, {"batch": backend}).dispatch(
        "digits", None, InferRequest((Tensor("X", x),))
    )
    await backend.aclose()

    assert_exact(result.outputs, expected)
    assert [s.target for s in result.shards] == ["batch-a", "batch-b", "batch-b", "batch-a"]
    assert result.redispatched == 2
    reclaimed, crashed = (result.shards[i].attempts[0] for i in (1, 2))
    assert not reclaimed.ok and "TargetUnavailable" in (reclaimed.error or "")
    assert RECLAIM in (reclaimed.error or "")
    assert "Essential container in task exited" in (crashed.error or "")
    assert (2, 2) in {(i, status) for i, status, _ in executor.exits[:4]}  # bad input: exit 2
    assert staged_keys(aws) == []


async def test_failed_array_job_falls_back_to_a_local_worker(
    aws, executor, digits, monkeypatch, module_worker_pool, demo_repo
):
    x, expected = digits
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")  # moto fails every job it is given
    pool = module_worker_pool(demo_repo, 1)
    local = Target(
        name="onprem",
        backend="http",
        endpoint=pool.endpoints[0],
        pricing="on_demand",
        usd_per_hour=1.0,
    )
    backend = BatchBackend(session=executor.session())
    async with make_session() as session:
        backends: dict[str, Backend] = {"batch": backend, "http": HttpBackend(session)}
        result = await dispatcher([batch_target(aws), local], backends).dispatch(
            "digits", None, InferRequest((Tensor("X", x),))
        )
    await backend.aclose()

    assert_exact(result.outputs, expected)
    assert [s.target for s in result.shards] == ["onprem"] * 4
    assert all("FAILED" in (s.attempts[0].error or "") for s in result.shards)
    assert executor.exits == []  # nothing ran: every child had failed already
    assert staged_keys(aws) == []


# ----------------------------------------------------------------------------- the backend alone


def job_for(timeout_s: float = 60.0) -> ShardJob:
    return ShardJob("digits", None, None, timeout_s, asyncio.Semaphore(8))


async def run_all(
    backend: BatchBackend, target: Target, shards: list[Shard], timeout_s: float = 60.0
) -> dict[int, ShardOutcome]:
    """Every outcome of one ``run``, by shard index, after the backend's cleanups are done."""
    outcomes = {o.shard.index: o async for o in backend.run(target, job_for(timeout_s), shards)}
    await backend.aclose()
    return outcomes


async def test_one_shard_is_a_plain_job(aws, executor, digits):
    x, expected = digits
    executor.as_module = True
    (shard,) = split("one", [Tensor("X", x[:5])], [5])
    backend = BatchBackend(session=executor.session())

    (outcome,) = (await run_all(backend, batch_target(aws), [shard])).values()

    assert isinstance(outcome, ShardOk), outcome
    assert_exact(outcome.outputs, tuple(e[:5] for e in expected))
    (job,) = executor.submitted
    assert "arrayProperties" not in job
    assert executor.exits[0][:2] == (0, 0)
    assert staged_keys(aws) == []


async def test_child_without_outputs_is_malformed(aws, executor, digits):
    x, _ = digits
    executor.verdicts = {0: {0: "skip"}}
    shards = split("skip", [Tensor("X", x[:8])], [4, 4])
    backend = BatchBackend(session=executor.session())

    outcomes = await run_all(backend, batch_target(aws), shards)

    assert isinstance(outcomes[0], ShardFailed)
    assert isinstance(outcomes[0].error, MalformedResponse)
    assert "wrote no s3://" in str(outcomes[0].error)
    assert isinstance(outcomes[1], ShardOk)
    assert staged_keys(aws) == []


async def test_unfinished_children_time_out_and_are_terminated(aws, executor, digits):
    x, _ = digits
    executor.verdicts = {0: {1: "hang"}}
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    backend = BatchBackend(session=executor.session(), clock=lambda: now[0], sleep=sleep)
    target = batch_target(aws, poll_initial_s=2.0, poll_max_s=10.0)
    shards = split("hang", [Tensor("X", x[:8])], [4, 4])

    outcomes = await run_all(backend, target, shards, timeout_s=30.0)

    assert isinstance(outcomes[0], ShardOk)
    assert isinstance(outcomes[1], ShardFailed)
    assert isinstance(outcomes[1].error, TargetTimeout)
    assert sum(waits) == pytest.approx(30.0)
    assert 3 <= len(waits) <= 30  # doubling from 2 s to 10 s: a handful of polls, not hundreds
    assert all(w <= 10.0 for w in waits)
    (job,) = executor.submitted
    parent = aws.batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]
    assert "gpufan: no answer within 30 s" in parent["statusReason"]
    assert staged_keys(aws) == []


async def test_closing_early_terminates_the_job_and_deletes_what_was_staged(aws, executor, digits):
    x, _ = digits
    executor.verdicts = {0: {1: "hang"}}
    shards = split("close", [Tensor("X", x[:8])], [4, 4])
    backend = BatchBackend(session=executor.session())

    outcomes = backend.run(batch_target(aws), job_for(), shards)
    first = await anext(outcomes)
    await outcomes.aclose()  # what the dispatcher does once it has every answer elsewhere
    await backend.aclose()

    assert isinstance(first, ShardOk) and first.shard.index == 0
    (job,) = executor.submitted
    parent = aws.batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]
    assert "no longer needs these shards" in parent["statusReason"]
    assert staged_keys(aws) == []


async def test_bytes_tensors_are_declined_before_anything_is_submitted(aws, executor):
    words = np.array([[b"a"], [b"b"]], dtype=object)
    shards = split("bytes", [Tensor("text", words)], [1, 1])
    backend = BatchBackend(session=executor.session())

    assert await run_all(BatchBackend(), batch_target(aws), []) == {}
    outcomes = await run_all(backend, batch_target(aws), shards)

    assert len(outcomes) == 2
    for outcome in outcomes.values():
        assert isinstance(outcome, ShardFailed) and isinstance(outcome.error, TargetUnavailable)
        assert "BYTES" in str(outcome.error)
    assert executor.submitted == []
    assert staged_keys(aws) == []


async def test_options_health_and_metadata(aws, executor):
    backend = backend_class("batch").create(BackendContext(session=None))  # type: ignore[arg-type]
    assert isinstance(backend, BatchBackend) and isinstance(backend, Backend)
    backend = BatchBackend(session=executor.session())
    target = batch_target(aws)
    with pytest.raises(ConfigError, match=r"options\.bucket is required"):
        BatchOptions.of(
            target.model_copy(update={"options": {"job_queue": "q", "job_definition": "d"}})
        )
    with pytest.raises(ConfigError, match="unknown options"):
        BatchOptions.of(batch_target(aws, jobqueue="typo"))
    broken = target.model_copy(update={"options": {"job_queue": "gpu-q"}})
    (shard,) = split("cfg", [Tensor("X", np.zeros((1, 64), np.float32))], [1])
    (failed,) = [o async for o in backend.run(broken, job_for(), [shard])]
    assert isinstance(failed, ShardFailed) and isinstance(failed.error, ConfigError)

    assert await backend.ready(target)
    assert not await backend.ready(batch_target(aws, job_queue="no-such-queue"))
    assert not await backend.ready(batch_target(aws, job_definition="no-such-definition"))
    with pytest.raises(TargetUnavailable, match="cannot answer model metadata"):
        await backend.model_metadata(target, "digits", None)
    with pytest.raises(TargetUnavailable, match="cannot answer model config"):
        await backend.model_config(target, "digits", None)
    await backend.aclose()
    described = {"jobId": "p:3", "statusReason": RECLAIM, "container": {"exitCode": 137}}
    assert failure_message("t", described) == f"t: Batch job p:3 FAILED: {RECLAIM} (exit code 137)"


def test_importing_the_backend_needs_no_aws_sdk():
    code = (
        "import sys, core.backends.batch, core.wire.staging\n"
        "assert not {'boto3', 'botocore'} & set(sys.modules), 'an AWS SDK was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=CHILD_TIMEOUT_S)


# ------------------------------------------------------------------------------- the entry point


def test_entry_point_exit_status_separates_bad_input_from_runtime_failure(
    aws, digits, tmp_path, executor
):
    x, _ = digits
    layout = StagingLayout.for_dispatch(BUCKET, PREFIX, "by-hand")
    manifest = Manifest("digits", None, None, ("s/0", "s/1", "s/2"))
    aws.s3.put_object(Bucket=BUCKET, Key=layout.manifest_key, Body=manifest.to_json())
    inputs = {0: {"X": x[:3]}, 2: {"X": x[:3, :10]}}  # 1 has none; 2 has the wrong shape
    for i, arrays in inputs.items():
        aws.s3.put_object(Bucket=BUCKET, Key=layout.inputs_key(i), Body=encode_arrays(arrays))
    job = {MANIFEST_ENV: layout.manifest_url, "GPUFAN_BATCH_REGION": REGION}
    cases = {
        "ok": (0, DEMO_REPOSITORY, job),
        "missing inputs": (1, DEMO_REPOSITORY, job),
        "wrong shape": (2, DEMO_REPOSITORY, job),
        "bad model": (0, executor.broken_repo, job),
        "no manifest variable": (0, DEMO_REPOSITORY, {}),
        "s3 unreachable": (0, DEMO_REPOSITORY, {**job, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}),
    }
    procs = {}
    for name, (index, repo, env) in cases.items():
        args = [sys.executable, "-m", "gpu_containers.batch_job", "--model-repo", str(repo)]
        full = {**child_env(aws, {"AWS_BATCH_JOB_ARRAY_INDEX": str(index)}), **env}
        procs[name] = spawn(args, full)
    results = {name: (p.wait(CHILD_TIMEOUT_S), p.communicate()[1]) for name, p in procs.items()}

    try:
        assert results["ok"][0] == 0, results["ok"]
        written = aws.s3.get_object(Bucket=BUCKET, Key=layout.outputs_key(0))["Body"].read()
        assert len(written) > 0
        for name in ("missing inputs", "wrong shape", "bad model", "no manifest variable"):
            assert results[name][0] == 2, (name, results[name])
        assert "NoSuchKey" in results["missing inputs"][1]
        assert "expects shape" in results["wrong shape"][1]
        assert "cannot load the model" in results["bad model"][1]
        assert results["s3 unreachable"][0] == 1, results["s3 unreachable"]
        assert all("Traceback" not in stderr for _, stderr in results.values())
    finally:
        for o in aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=layout.prefix).get("Contents", []):
            aws.s3.delete_object(Bucket=BUCKET, Key=o["Key"])
