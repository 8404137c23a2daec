"""One request fanned out over four clouds' backends at once, one of them failing.

GIVEN a Cloud Run target (real ``google-cloud-run`` client -> loopback Admin API fake), an Azure
Container Apps target (real ``azure-mgmt-appcontainers`` client -> loopback ARM fake), an AWS
Batch target (real boto3 -> moto, children run by the test's executor) and a local worker,
WHEN one request's shards land on all four and the Batch child is reclaimed as a spot instance,
THEN the reclaimed shard is re-dispatched to another cloud and the merged result equals one
direct onnxruntime run exactly. Every data plane ends at a real gpufan worker on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials

from core.backends._azure import ArmAccess
from core.backends.aca import AcaBackend
from core.backends.batch import BatchBackend
from core.backends.cloudrun import CloudRunBackend
from core.backends.http import HttpBackend
from core.config import Policy, Target
from core.dispatch.dispatcher import Dispatcher
from core.frontdoor.workers import WorkerPool
from core.wire.session import make_session
from core.wire.tensors import InferRequest, Tensor
from gpu_containers import DEMO_REPOSITORY
from tests.fakes.arm_api import ArmFake, StaticCredential
from tests.fakes.batch_aws import Aws, batch_target, executor_for, moto_batch
from tests.fakes.cloudrun_api import FakeCloudRunApi

TOKEN = "mixed-worker-token"
TOKEN_ENV = "GPUFAN_MIXED_TOKEN"
SUB, RG = "00000000-0000-0000-0000-000000000000", "gpufan"


@pytest.fixture(scope="module")
def workers() -> Iterator[WorkerPool]:
    with WorkerPool(DEMO_REPOSITORY, 3, env={"GPUFAN_WORKER_TOKEN": TOKEN}) as pool:
        yield pool


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    with moto_batch() as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[Any]:
    http = make_session()
    yield http
    await http.close()


async def test_one_request_over_cloud_run_azure_batch_and_local_with_a_reclaim(
    workers: WorkerPool,
    aws: Aws,
    session: Any,
    digits: np.ndarray,
    direct: Callable[[np.ndarray], dict[str, np.ndarray]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)
    run_ep, aca_ep, local_ep = workers.endpoints
    tokens = {"run": TOKEN, "aca": TOKEN, "local": TOKEN}
    with FakeCloudRunApi() as run_api, ArmFake() as arm:
        run_api.seed("p", "us-central1", "infer", uri=run_ep, min_instances=1)
        arm.add_container_app(SUB, RG, "infer", fqdn=aca_ep.removeprefix("http://"))
        credential = StaticCredential()
        executor = executor_for(aws, tmp_path)
        executor.verdicts = {0: {0: "reclaim"}}  # the Batch child is reclaimed mid-flight
        backends = {
            "cloudrun": CloudRunBackend(
                session, tokens=tokens, client_options=run_api.client_options,
                credentials=AnonymousCredentials(),
            ),
            "aca": AcaBackend(
                session, tokens, access=ArmAccess(credential, arm.client_kwargs(credential))
            ),
            "batch": BatchBackend(session=executor.session()),
            "http": HttpBackend(session, token_for=lambda t: tokens.get(t.name)),
        }  # fmt: skip
        free = {"usd_per_hour": 0.0, "max_concurrency": 1, "token_env": TOKEN_ENV}
        targets = [
            Target(name="run", backend="cloudrun", cloud="gcp", region="us-central1",
                   options={"project": "p", "service": "infer", "auth": "bearer"}, **free),
            Target(name="aca", backend="aca", cloud="azure", region="westus3",
                   options={"subscription_id": SUB, "resource_group": RG, "app": "infer",
                            "scheme": "http"}, **free),
            batch_target(aws, name="batch", usd=0.0).model_copy(update={"max_concurrency": 1}),
            Target(name="local", backend="http", endpoint=local_ep, **free),
        ]  # fmt: skip
        dispatcher = Dispatcher(
            targets, backends, Policy(max_shard_items=10, min_shard_items=1, backoff_ms=1)
        )
        x = digits[:40]
        result = await dispatcher.dispatch("digits", None, InferRequest((Tensor("X", x),)))
        for backend in backends.values():
            await backend.aclose()

    expected = direct(x)
    got = {t.name: t.data for t in result.outputs}
    for name, want in expected.items():
        np.testing.assert_array_equal(got[name], want)
    report = result.report()
    first_tries = {s["attempts"][0]["target"] for s in report["shards"]}
    assert first_tries == {"run", "aca", "batch", "local"}  # every cloud got a shard
    reclaimed = [s for s in report["shards"] if s["attempts"][0]["target"] == "batch"]
    assert len(reclaimed) == 1
    attempts = reclaimed[0]["attempts"]
    assert not attempts[0]["ok"] and "Host EC2" in attempts[0]["error"]
    assert attempts[-1]["ok"] and attempts[-1]["target"] != "batch"  # finished on another cloud
    assert result.redispatched == 1
    assert sum(s["items"] for s in report["shards"]) == 40
    assert any(r.method == "GET" and "/services/infer" in r.path for r in run_api.requests)
    assert any("Microsoft.App/containerApps/infer" in r.path for r in arm.requests)
    assert len(executor.submitted) == 1
