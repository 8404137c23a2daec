"""BatchBackend against moto's S3 and Batch (server mode on 127.0.0.1) with the real boto3 clients,
and the worker's batch entry point run as real subprocesses.

The executor seam. moto's simple Batch backend (``{"batch": {"use_docker": false}}``) marks every
job SUCCEEDED the moment it is submitted, runs nothing and never sets
``AWS_BATCH_JOB_ARRAY_INDEX`` (reference/clouds.md 3.1). So the test plays the compute environment
itself: ``Executor`` is registered on the backend's boto3 session as a botocore
``after-call.batch.SubmitJob`` handler, which runs after moto accepted the job and before
``submit_job`` returns to the backend, hence before its first ``describe_jobs`` poll. For every
child it runs the image's entry point (``gpufan worker`` + the job definition's command, i.e.
``gpufan worker --batch --model-repo ...``; or ``python -m gpu_containers.batch_job``) as a process,
with the child's environment as ``describe_jobs`` reports it plus ``AWS_BATCH_JOB_ARRAY_INDEX``,
against moto's S3. Then it records the verdict the way Batch would: a child whose process exited
non-zero, or one the test has "reclaimed", becomes FAILED with Batch's ``statusReason``. That is
the one place the test reaches past the AWS API, into moto's in-process job objects.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import onnxruntime as ort
import pytest
from moto.batch.models import batch_backends
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer

from core.backends import Backend, BackendContext, backend_class
from core.backends._staging import (
    MANIFEST_ENV,
    Manifest,
    StagingLayout,
    encode_arrays,
    failure_message,
)
from core.backends.base import ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.backends.batch import BatchBackend, BatchOptions
from core.backends.http import HttpBackend
from core.config import Policy, Target
from core.dispatch import Dispatcher
from core.errors import ConfigError, MalformedResponse, TargetTimeout, TargetUnavailable
from core.httpclient import make_session
from core.plan import Shard, split
from core.tensors import InferRequest, Tensor
from gpu_containers import DEMO_REPOSITORY, DEMO_TEST_SET

REGION = "us-east-1"
BUCKET = "gpufan-staging"
PREFIX = "gpufan/test"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60
RECLAIM = "Host EC2 (instance i-0123456789abcdef0) terminated."


@dataclass
class Aws:
    url: str
    batch: Any
    s3: Any
    queue_arn: str
    definition_arn: str


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    """A moto server with a GPU spot compute environment, a queue, a GPU job definition and the
    staging bucket, as the Terraform module would create them."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    config = json.dumps({"batch": {"use_docker": False}}).encode()
    urllib.request.urlopen(urllib.request.Request(url + "/moto-api/config", config, method="POST"))
    kw = {"endpoint_url": url, "region_name": REGION, **CREDS}
    ec2, iam = boto3.client("ec2", **kw), boto3.client("iam", **kw)
    batch, s3 = boto3.client("batch", **kw), boto3.client("s3", **kw)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="gpu", Description="gpu", VpcId=vpc)["GroupId"]
    role = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName="ecs")["InstanceProfile"]["Arn"]
    ce = batch.create_compute_environment(
        computeEnvironmentName="gpu-spot",
        type="MANAGED",
        state="ENABLED",
        serviceRole=role,
        computeResources={
            "type": "SPOT",
            "allocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED",
            "minvCpus": 0,
            "maxvCpus": 64,
            "instanceTypes": ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"],
            "subnets": [subnet],
            "securityGroupIds": [sg],
            "instanceRole": profile,
            "ec2Configuration": [{"imageType": "ECS_AL2023_NVIDIA"}],
        },
    )
    queue = batch.create_job_queue(
        jobQueueName="gpu-q",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce["computeEnvironmentArn"]}],
    )
    definition = batch.register_job_definition(
        jobDefinitionName="gpufan-infer",
        type="container",
        containerProperties={
            "image": "gpufan-worker:0.1.0",
            # The image's ENTRYPOINT is `gpufan worker`: the command supplies its flags.
            "command": ["--batch", "--model-repo", "/models"],
            "resourceRequirements": [
                {"type": "VCPU", "value": "4"},
                {"type": "MEMORY", "value": "15000"},
                {"type": "GPU", "value": "1"},
            ],
        },
        retryStrategy={
            "attempts": 2,
            "evaluateOnExit": [
                {"onExitCode": "2", "action": "EXIT"},
                {"onStatusReason": "Host EC2*", "action": "RETRY"},
            ],
        },
    )
    s3.create_bucket(Bucket=BUCKET)
    yield Aws(url, batch, s3, queue["jobQueueArn"], definition["jobDefinitionArn"])
    server.stop()


def child_env(aws: Aws, job_env: dict[str, str]) -> dict[str, str]:
    """A job's process environment: what Batch passes, credentials, and moto as the endpoint."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    return {
        **keep,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": aws.url,
        "AWS_MAX_ATTEMPTS": "1",
        "OMP_NUM_THREADS": "1",
        **job_env,
    }


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@dataclass
class Executor:
    """Runs the children of every submitted job (see the module docstring).

    ``verdicts[n][i]`` changes child ``i`` of the ``n``-th submission: ``"reclaim"`` (not run;
    FAILED as a spot reclaim), ``"bad-model"`` (run against a broken repository), ``"skip"`` (not
    run; left SUCCEEDED without outputs), ``"hang"`` (not run; left RUNNING).
    """

    aws: Aws
    broken_repo: Path
    as_module: bool = False  # python -m gpu_containers.batch_job, not the image's entry point
    verdicts: dict[int, dict[int, str]] = field(default_factory=dict)
    submitted: list[dict[str, Any]] = field(default_factory=list)  # describe_jobs of parents
    exits: list[tuple[int, int, str]] = field(default_factory=list)  # (index, status, stderr)

    def session(self) -> boto3.session.Session:
        session = boto3.session.Session(region_name=REGION, **CREDS)
        session.events.register("after-call.batch.SubmitJob", self.on_submit)
        return session

    def on_submit(self, parsed: dict[str, Any], **_: Any) -> None:
        if "jobId" not in parsed:
            return
        parent = self.aws.batch.describe_jobs(jobs=[parsed["jobId"]])["jobs"][0]
        verdicts = self.verdicts.get(len(self.submitted), {})
        self.submitted.append(parent)
        size = (parent.get("arrayProperties") or {}).get("size")
        children = [f"{parent['jobId']}:{i}" for i in range(size)] if size else [parent["jobId"]]
        running = {}
        for i, child in enumerate(self.aws.batch.describe_jobs(jobs=children)["jobs"]):
            verdict = verdicts.get(i)
            if child["status"] != "SUCCEEDED" or verdict in ("reclaim", "skip", "hang"):
                continue
            env = {e["name"]: e["value"] for e in child["container"]["environment"]}
            if size:
                env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(i)
            repo = self.broken_repo if verdict == "bad-model" else DEMO_REPOSITORY
            if self.as_module:
                args = ["-m", "gpu_containers.batch_job", "--model-repo", str(repo)]
            else:  # the image's ENTRYPOINT (`gpufan worker`) + the job definition's command
                command = [
                    str(repo) if a == "/models" else a for a in child["container"]["command"]
                ]
                args = ["-m", "core.cli", "worker", *command]
            running[i] = spawn([sys.executable, *args], child_env(self.aws, env))
        for i, proc in running.items():
            _, stderr = proc.communicate(timeout=CHILD_TIMEOUT_S)
            self.exits.append((i, proc.returncode, stderr))
            if proc.returncode != 0:
                self.record(children[i], "FAILED", "Essential container in task exited")
        for i, verdict in verdicts.items():
            if verdict == "reclaim":
                self.record(children[i], "FAILED", RECLAIM)
            elif verdict == "hang":
                self.record(children[i], "RUNNING")

    def record(self, job_id: str, status: str, reason: str | None = None) -> None:
        """What Batch's scheduler would note about a child (moto's job object, in process)."""
        job = batch_backends[DEFAULT_ACCOUNT_ID][REGION].get_job_by_id(job_id)
        job.status = status
        job.job_stopped = status != "RUNNING"
        job.job_stopped_reason = reason


@pytest.fixture
def executor(aws: Aws, tmp_path: Path) -> Executor:
    broken = tmp_path / "broken"
    (broken / "digits" / "1").mkdir(parents=True)
    (broken / "digits" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    return Executor(aws, broken)


@pytest.fixture(autouse=True)
def _no_forced_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)


def batch_target(aws: Aws, name: str = "batch-a", usd: float = 0.2, **options: Any) -> Target:
    opts = {"job_queue": "gpu-q", "job_definition": "gpufan-infer", "bucket": BUCKET}
    opts |= {"prefix": PREFIX, "endpoint_url": aws.url, "poll_initial_s": 0.05, "poll_max_s": 0.2}
    return Target(
        name=name,
        backend="batch",
        cloud="aws",
        region=REGION,
        pricing="spot",
        usd_per_hour=usd,
        max_concurrency=8,
        timeout_s=60,
        options=opts | options,
    )


def staged_keys(aws: Aws) -> list[str]:
    listing = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX + "/")
    return [o["Key"] for o in listing.get("Contents", [])]


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
        "import sys, core.backends.batch, core.backends._staging\n"
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
