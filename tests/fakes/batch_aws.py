"""AWS Batch and S3 on moto's server (127.0.0.1), with a test-side executor for the jobs.

moto's simple Batch backend (``{"batch": {"use_docker": false}}``) marks every job SUCCEEDED the
moment it is submitted, runs nothing and never sets ``AWS_BATCH_JOB_ARRAY_INDEX`` (moto 5's
``batch_simple`` backend, ``use_docker: False``). ``Executor`` plays the compute environment:
registered on the backend's boto3 session as a botocore ``after-call.batch.SubmitJob`` handler, it
runs after moto accepted the job and before ``submit_job`` returns (so before the backend's first
poll). For every child it runs the image's entry point (``gpufan worker`` + the job definition's
command) as a real process, with the child's environment as ``describe_jobs`` reports it plus the
array index, against moto's S3; then it records the verdict the way Batch would (a non-zero exit, or
a "reclaimed" child, becomes FAILED with Batch's ``statusReason``) — the one place the harness
reaches past the AWS API, into moto's in-process job objects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from moto.batch.models import batch_backends
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer

from core.config import Target
from gpu_containers import DEMO_REPOSITORY

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


@contextmanager
def moto_batch() -> Iterator[Aws]:
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


def executor_for(aws: Aws, scratch: Path) -> Executor:
    """An executor whose "bad-model" children see a broken repository under ``scratch``."""
    broken = scratch / "broken"
    (broken / "digits" / "1").mkdir(parents=True)
    (broken / "digits" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    return Executor(aws, broken)


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
