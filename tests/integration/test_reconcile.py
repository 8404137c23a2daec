"""Reconcilers against the loopback Cloud Run and ARM fakes and moto's Batch, driven by one
autoscaler pass each (``core.autoscale.loop`` over ``core.autoscale.reconcile``).

GIVEN an hour of heavy history and four targets (Cloud Run max 3 instances, a container app max 2
replicas, a container group, a Batch compute environment with 64 vCPUs of 4-vCPU jobs),
WHEN a pass runs, THEN each API receives exactly the change the plan asked for; a second pass
sends only reads; a dry run sends only reads; a change within the rate limit is held back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from google.auth.credentials import AnonymousCredentials
from moto.batch.models import batch_backends
from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_api._internal.models import moto_api_backend

from core.autoscale.history import SqliteHistory
from core.autoscale.loop import Autoscaler
from core.autoscale.settings import AutoscaleSettings
from core.backends._azure import ArmAccess
from core.backends.aca import AcaBackend
from core.backends.aci import AciBackend
from core.backends.batch import BatchBackend
from core.backends.cloudrun import CloudRunBackend
from core.config import Target, settings_from_dict
from core.frontdoor.runtime import build_cost_model
from core.wire.session import make_session
from tests.fakes.arm_api import ArmFake, StaticCredential
from tests.fakes.batch_aws import CREDS, REGION, Aws, batch_target, moto_batch
from tests.fakes.cloudrun_api import FakeCloudRunApi

SUB, RG = "00000000-0000-0000-0000-00000000a2c1", "gpufan-rg"
T0 = 1_800_000_000.0  # a minute boundary
MODEL = "resnet"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Fleet:
    run: FakeCloudRunApi
    arm: ArmFake
    aws: Aws
    updates: list[dict[str, Any]]  # UpdateComputeEnvironment parameters, as boto3 sent them
    targets: tuple[Target, ...]
    backends: dict[str, Any]
    history: SqliteHistory
    clock: Clock

    def autoscaler(self, **settings: Any) -> Autoscaler:
        doc = {"models": [{"name": MODEL, "flops_per_item": 4.1e9}]}
        cost_model = build_cost_model(settings_from_dict(doc), self.targets)
        return Autoscaler(
            [MODEL], self.targets, self.backends, cost_model, self.history,
            settings=AutoscaleSettings(**settings), clock=self.clock,
        )  # fmt: skip

    def forget_requests(self) -> None:
        self.run.requests.clear()
        self.arm.requests.clear()
        self.updates.clear()

    def mutating(self) -> list[str]:
        sent = [f"cloudrun {r.method} {r.path}" for r in self.run.requests if r.method != "GET"]
        sent += [f"arm {r.method} {r.path}" for r in self.arm.requests if r.method != "GET"]
        return sent + [f"batch update {u}" for u in self.updates]


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    # moto's backends are process-wide: start clean and leave clean for other modules' servers
    moto_api_backend.reset()
    with moto_batch() as running:
        yield running
    moto_api_backend.reset()


def _play_batch(aws: Aws, updates: list[dict[str, Any]]) -> boto3.session.Session:
    """A session whose UpdateComputeEnvironment calls are recorded, then applied to moto's
    compute environment as Batch would (moto accepts the call but keeps the old figures)."""
    session = boto3.session.Session(region_name=REGION, **CREDS)

    def record(params: dict[str, Any], **_: Any) -> None:
        updates.append(params)

    def apply(http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        env = batch_backends[DEFAULT_ACCOUNT_ID][REGION].get_compute_environment(
            updates[-1]["computeEnvironment"]
        )
        env.compute_resources.update(updates[-1]["computeResources"])

    session.events.register("provide-client-params.batch.UpdateComputeEnvironment", record)
    session.events.register("after-call.batch.UpdateComputeEnvironment", apply)
    return session


@pytest.fixture
async def fleet(aws: Aws, tmp_path: Path) -> AsyncIterator[Fleet]:
    env = batch_backends[DEFAULT_ACCOUNT_ID][REGION].get_compute_environment("gpu-spot")
    env.compute_resources.update(minvCpus=0, desiredvCpus=0, maxvCpus=64)
    updates: list[dict[str, Any]] = []
    with FakeCloudRunApi() as run, ArmFake(aci_fqdn="127.0.0.1") as arm:
        run.seed("p", "us-central1", "llm", uri="http://127.0.0.1:9", min_instances=0,
                 max_instances=3)  # fmt: skip
        arm.add_container_app(SUB, RG, "gpufan-t4", fqdn="127.0.0.1:9", max_replicas=2)
        session = make_session(max_connections=8)
        cred = StaticCredential()
        access = ArmAccess(cred, arm.client_kwargs(cred))
        targets = (
            Target(name="run-l4", backend="cloudrun", cloud="gcp", region="us-central1",
                   accelerator="L4", pricing="serverless", usd_per_hour=1.05, cold_start_s=10,
                   scale_to_zero=True, options={"project": "p", "service": "llm"}),
            Target(name="aca-t4", backend="aca", cloud="azure", region="westus3",
                   accelerator="T4", pricing="serverless", usd_per_hour=0.6,
                   options={"subscription_id": SUB, "resource_group": RG, "app": "gpufan-t4"}),
            Target(name="aci-cpu", backend="aci", cloud="azure", region="eastus",
                   accelerator="T4", pricing="on_demand", usd_per_hour=0.5,
                   options={"subscription_id": SUB, "resource_group": RG, "create": True,
                            "container_group": "gpufan-cpu", "image": "gpufan/worker:1"}),
            batch_target(aws, name="batch-gpu"),
        )  # fmt: skip
        backends = {
            "cloudrun": CloudRunBackend(
                session, client_options=run.client_options, credentials=AnonymousCredentials()
            ),
            "aca": AcaBackend(session, {}, access=access),
            "aci": AciBackend(session, {"aci-cpu": "worker-token"}, access=access),
            "batch": BatchBackend(session=_play_batch(aws, updates)),
        }
        history = SqliteHistory(tmp_path / "history.sqlite3")
        for minute in range(1, 121):  # two hours of ~200k items/s: more than every limit
            history.record(MODEL, T0 - 60 * minute, 25_000, 12_000_000, 4000.0)
        yield Fleet(run, arm, aws, updates, targets, backends, history, Clock())
        history.close()
        for backend in backends.values():
            await backend.aclose()
        await session.close()


async def test_a_pass_sends_the_plan_then_nothing(fleet: Fleet) -> None:
    # WHEN one pass runs
    report = await fleet.autoscaler().run_once()
    changes = {c.target: c for c in report.changes}
    # THEN every target goes to its limit (the load is above them all), and says so
    assert {n: (c.before, c.after, c.action) for n, c in changes.items()} == {
        "run-l4": (0, 3, "applied"),
        "aca-t4": (0, 2, "applied"),
        "aci-cpu": (0, 1, "applied"),
        "batch-gpu": (0, 16, "applied"),
    }
    assert report.models[0].shortfall_items_per_s > 0
    # AND each API received exactly that change
    patches = [r for r in fleet.run.requests if r.method == "PATCH"]
    assert len(patches) == 1 and patches[0].query["updateMask"] == ["scaling"]
    assert patches[0].body["scaling"] == {"minInstanceCount": 3, "maxInstanceCount": 3}
    arm_writes = [(r.method, r.path.rsplit("/", 2)[-2]) for r in fleet.arm.requests
                  if r.method != "GET"]  # fmt: skip
    assert sorted(arm_writes) == [("PATCH", "containerApps"), ("PUT", "containerGroups")]
    app_patch = next(r for r in fleet.arm.requests if r.method == "PATCH")
    assert app_patch.body["properties"]["template"]["scale"]["minReplicas"] == 2
    assert app_patch.body["properties"]["template"]["scale"]["maxReplicas"] == 2
    assert fleet.updates == [
        {"computeEnvironment": "gpu-spot",
         "computeResources": {"minvCpus": 64, "desiredvCpus": 64}}
    ]  # fmt: skip
    described = fleet.aws.batch.describe_compute_environments(computeEnvironments=["gpu-spot"])
    assert described["computeEnvironments"][0]["computeResources"]["minvCpus"] == 64

    # WHEN a second pass runs with nothing changed THEN it only reads
    fleet.forget_requests()
    again = await fleet.autoscaler().run_once()
    assert {c.action for c in again.changes} == {"unchanged"}
    assert fleet.mutating() == []
    assert fleet.run.requests and fleet.arm.requests  # it did read


async def test_dry_run_and_rate_limit_send_nothing(fleet: Fleet) -> None:
    await fleet.autoscaler().run_once()
    fleet.forget_requests()
    # WHEN the plan changes (lower caps) in a dry run THEN the diff is reported, nothing sent
    caps = {"max_instances": {"run-l4": 1, "aca-t4": 1, "batch-gpu": 2}}
    dry = await fleet.autoscaler(**caps).run_once(dry_run=True)
    diff = {c.target: (c.before, c.after, c.action) for c in dry.changes}
    assert diff["run-l4"] == (3, 1, "would_apply")
    assert diff["aca-t4"] == (2, 1, "would_apply")
    assert diff["batch-gpu"] == (16, 2, "would_apply")
    assert fleet.mutating() == []
    # WHEN it runs for real within the rate limit THEN it is held back
    held = await fleet.autoscaler(**caps).run_once()
    assert {c.action for c in held.changes if c.before != c.after} == {"rate_limited"}
    assert fleet.mutating() == []
    # WHEN the rate limit has passed THEN it applies; Batch lowers only minvCpus
    for minute in range(6):  # the load goes on while the rate limit runs out
        fleet.history.record(MODEL, T0 + 60 * minute, 25_000, 12_000_000, 4000.0)
    fleet.clock.now += 301
    applied = await fleet.autoscaler(**caps).run_once()
    assert {c.target for c in applied.changes if c.action == "applied"} == {
        "run-l4", "aca-t4", "batch-gpu",
    }  # fmt: skip
    assert fleet.updates == [
        {"computeEnvironment": "gpu-spot", "computeResources": {"minvCpus": 8}}
    ]
