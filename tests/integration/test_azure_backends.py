"""The ``aca`` and ``aci`` backends: real azure-mgmt clients against a loopback ARM fake, and the
data plane against a real gpufan worker process.

GIVEN a fake Azure Resource Manager (``tests.fakes.arm_api``) whose container app and container
group point at a local worker serving the demo ``digits`` model behind a bearer token,
WHEN the backends describe, scale, create, delete and run shards,
THEN the SDKs send the documented requests (api-versions, bodies, a TLS-only bearer token), ARM
errors land in gpufan's tree naming the resource, and results equal one direct onnxruntime run.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest

from core.backends import backend_class
from core.backends._azure import ArmAccess
from core.backends.aca import AcaBackend, Scaling
from core.backends.aci import AciBackend
from core.backends.base import ShardFailed, ShardJob, ShardOk
from core.config import Policy, Target
from core.dispatch.dispatcher import Dispatcher
from core.errors import ConfigError, TargetUnavailable
from core.frontdoor.workers import WorkerPool
from core.planning.shards import split
from core.wire.session import make_session
from core.wire.tensors import InferRequest, Tensor
from gpu_containers import DEMO_REPOSITORY
from tests.fakes.arm_api import APPS, ARM_SCOPE, GROUPS, ArmFake, StaticCredential

SUB = "00000000-0000-0000-0000-00000000a2c1"
RG = "gpufan-rg"
MODEL = "digits"
WORKER_TOKEN = "worker-s3cret-token"
ARM_TOKEN = "arm-token"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def worker(module_worker_pool: Any) -> WorkerPool:
    """One worker that answers only requests carrying ``WORKER_TOKEN``."""
    return module_worker_pool(DEMO_REPOSITORY, 1, env={"GPUFAN_WORKER_TOKEN": WORKER_TOKEN})


@pytest.fixture(scope="module")
def worker_port(worker: WorkerPool) -> int:
    return int(worker.endpoints[0].rsplit(":", 1)[1])


@pytest.fixture
def arm() -> Iterator[ArmFake]:
    with ArmFake(expected_token=ARM_TOKEN, aci_fqdn="127.0.0.1") as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[Any]:
    http = make_session(max_connections=16)
    yield http
    await http.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make(session: Any, clock: Clock) -> AsyncIterator[Callable[..., Any]]:
    """``make(cls, arm, tokens=..., credential=...)``: a backend wired to the fake; all closed."""
    made: list[Any] = []

    def build(cls: type, fake: ArmFake, tokens: Any = None, credential: Any = None) -> Any:
        cred = credential or StaticCredential(ARM_TOKEN)
        access = ArmAccess(cred, fake.client_kwargs(cred))
        tokens = {"aca-t4": WORKER_TOKEN, "aci-cpu": WORKER_TOKEN} if tokens is None else tokens
        backend = cls(session, tokens, access=access, clock=clock)
        made.append(backend)
        return backend

    yield build
    for backend in made:
        await backend.aclose()


def aca_target(name: str = "aca-t4", *, app: str = "gpufan-t4", **kw: Any) -> Target:
    options = {"subscription_id": SUB, "resource_group": RG, "app": app, "scheme": "http"}
    options.update(kw.pop("options", {}))
    return Target(name=name, backend="aca", cloud="azure", region="westus3", options=options, **kw)


def aci_target(name: str = "aci-cpu", *, port: int = 8080, **kw: Any) -> Target:
    options = {
        "subscription_id": SUB,
        "resource_group": RG,
        "container_group": "gpufan-cpu",
        "image": "gpufanacr.azurecr.io/gpufan-worker:1.0",
        "port": port,
        "create": True,
    }
    options.update(kw.pop("options", {}))
    return Target(name=name, backend="aci", cloud="azure", region="eastus", options=options, **kw)


def job() -> ShardJob:
    return ShardJob(MODEL, None, None, 10.0, asyncio.Semaphore(4))


async def run_and_check(backend: Any, target: Target, x: np.ndarray, direct: Any) -> list[Any]:
    """Run ``x`` in three shards; every output equals the direct run of its rows exactly."""
    shards = split("req", (Tensor("X", x),), [len(x) // 3, len(x) // 3, len(x) - 2 * (len(x) // 3)])
    outcomes = [o async for o in backend.run(target, job(), shards)]
    assert len(outcomes) == 3
    for o in outcomes:
        assert isinstance(o, ShardOk), o
        want = direct(o.shard.inputs[0].data)
        for tensor in o.outputs:
            np.testing.assert_array_equal(tensor.data, want[tensor.name])
    return outcomes


# ------------------------------------------------------------------------------------ aca


async def test_aca_describe_reads_the_app_through_the_sdk(
    arm: ArmFake, make: Any, clock: Clock
) -> None:
    arm.add_container_app(SUB, RG, "gpufan-t4", fqdn="gpufan-t4.env.westus3.azurecontainerapps.io")
    cred = StaticCredential(ARM_TOKEN)
    aca = make(AcaBackend, arm, credential=cred)
    app = await aca.describe(aca_target())
    assert app.fqdn == "gpufan-t4.env.westus3.azurecontainerapps.io"
    assert app.provisioning_state == "Succeeded" and app.running_status == "Running"
    assert app.workload_profile_name == "gpu-t4" and app.scaling == Scaling(0, 2)
    assert app.cooldown_s == 300.0 and app.location == "westus3"
    assert app.latest_revision_fqdn == "gpufan-t4--r1.fake-env.westus3.azurecontainerapps.io"
    (sent,) = arm.requests
    assert sent.method == "GET" and sent.query == {"api-version": "2026-07-01"}
    assert sent.path == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/{APPS}/gpufan-t4"
    assert sent.headers["authorization"] == f"Bearer {ARM_TOKEN}"
    assert cred.scopes[0] == (ARM_SCOPE,)

    await aca.describe(aca_target())  # within the TTL: no second ARM read
    clock.now += 11
    await aca.describe(aca_target())
    assert len(arm.requests) == 2


@pytest.mark.parametrize("lro", ["sync", "async"])
async def test_aca_set_scaling_patches_only_the_scale(lro: str, make: Any) -> None:
    with ArmFake(expected_token=ARM_TOKEN, lro=lro) as arm:
        before = arm.add_container_app(SUB, RG, "gpufan-t4", fqdn="x.example", max_replicas=2)
        aca = make(AcaBackend, arm)
        with pytest.raises(ValueError, match="replica bounds"):
            await aca.set_scaling(aca_target(), 3, 2)
        assert arm.requests == []

        app = await aca.set_scaling(aca_target(), 1, 4)
        assert app.scaling == Scaling(1, 4) and await aca.scaling(aca_target()) == Scaling(1, 4)
        patch = next(r for r in arm.requests if r.method == "PATCH")
        assert patch.query == {"api-version": "2026-07-01"}
        template = patch.body["properties"]["template"]
        assert template["scale"] == {"minReplicas": 1, "maxReplicas": 4}
        assert template["containers"] == before["properties"]["template"]["containers"]
        assert set(patch.body) <= {"location", "properties"}
        assert set(patch.body["properties"]) == {"template"}
        polls = [r for r in arm.requests if "/operationResults/" in r.path]
        assert len(polls) == (2 if lro == "async" else 0)  # one InProgress, one Succeeded


async def test_aca_set_scaling_sets_the_cooldown_a_target_prices_its_bursts_with(
    make: Any,
) -> None:
    with ArmFake(expected_token=ARM_TOKEN) as arm:
        arm.add_container_app(SUB, RG, "gpufan-t4", fqdn="x.example")
        aca = make(AcaBackend, arm)
        held = aca_target(pricing="serverless", idle_hold_s=59.5)
        app = await aca.set_scaling(held, 0, 8)
        patch = next(r for r in arm.requests if r.method == "PATCH")
        scale = patch.body["properties"]["template"]["scale"]
        assert scale == {"minReplicas": 0, "maxReplicas": 8, "cooldownPeriod": 60}
        assert app.cooldown_s == 60.0  # read back: what cold starts are judged by


async def test_aca_runs_shards_at_the_apps_fqdn_with_the_worker_token(
    arm: ArmFake, make: Any, clock: Clock, worker_port: int, digits: np.ndarray, direct: Any
) -> None:
    arm.add_container_app(SUB, RG, "gpufan-t4", fqdn=f"127.0.0.1:{worker_port}", min_replicas=0)
    aca = make(AcaBackend, arm)
    first = await run_and_check(aca, aca_target(), digits[:30], direct)
    assert all(o.cold_start for o in first)  # scale-to-zero app, never answered before
    clock.now += 60
    again = await run_and_check(aca, aca_target(), digits[30:60], direct)
    assert not any(o.cold_start for o in again)  # answered within the cooldown
    clock.now += 301
    assert all(o.cold_start for o in await run_and_check(aca, aca_target(), digits[:9], direct))
    assert await aca.ready(aca_target())
    meta = await aca.model_metadata(aca_target(), MODEL, None)
    assert meta["inputs"][0]["name"] == "X"

    untokened = make(AcaBackend, arm, tokens={})
    shards = split("r", (Tensor("X", digits[:2]),), [2])
    (refused,) = [o async for o in untokened.run(aca_target(), job(), shards)]
    assert isinstance(refused, ShardFailed) and isinstance(refused.error, TargetUnavailable)
    assert "answered 401" in str(refused.error)  # the worker wants its token: it reached it above


async def test_aca_endpoint_override_and_warm_app(
    arm: ArmFake, make: Any, worker: WorkerPool, digits: np.ndarray, direct: Any
) -> None:
    arm.add_container_app(SUB, RG, "gpufan-t4", fqdn="unreachable.example", min_replicas=1)
    aca = make(AcaBackend, arm)
    target = aca_target(endpoint=worker.endpoints[0])
    outcomes = await run_and_check(aca, target, digits[:12], direct)
    assert not any(o.cold_start for o in outcomes)  # one replica is always up


async def test_aca_stopped_app_fails_shards_retryably(arm: ArmFake, make: Any) -> None:
    arm.add_container_app(SUB, RG, "gpufan-t4", fqdn="x.example", runningStatus="Stopped")
    aca = make(AcaBackend, arm)
    shards = split("r", (Tensor("X", np.zeros((4, 64), np.float32)),), [2, 2])
    failed = [o async for o in aca.run(aca_target(), job(), shards)]
    assert len(failed) == 2 and all(isinstance(o, ShardFailed) for o in failed)
    assert all(isinstance(o.error, TargetUnavailable) and "Stopped" in str(o.error) for o in failed)
    assert not await aca.ready(aca_target())


# ------------------------------------------------------------------------------------ errors


async def test_missing_options_are_config_errors_naming_the_key(arm: ArmFake, make: Any) -> None:
    aca, aci = make(AcaBackend, arm), make(AciBackend, arm)
    bad_aca = Target(name="aca-t4", backend="aca", options={"subscription_id": SUB, "app": "a"})
    with pytest.raises(ConfigError, match=r"targets\[aca-t4\]\.options\.resource_group"):
        await aca.describe(bad_aca)
    bad_aci = aci_target(options={"container_group": None})
    with pytest.raises(ConfigError, match=r"options\.container_group is required"):
        await aci.describe(bad_aci)
    no_image = Target(
        name="aci-cpu",
        backend="aci",
        options={
            "subscription_id": SUB,
            "resource_group": RG,
            "container_group": "g",
            "create": True,
        },
    )
    with pytest.raises(ConfigError, match=r"options\.image is required"):
        await aci.ensure(no_image)
    with pytest.raises(
        ConfigError, match="unknown memory_gib for backend 'aci'; valid: container_group, cpu"
    ):
        await aci.describe(aci_target(options={"memory_gib": 32}))
    assert [r.method for r in arm.requests] == ["GET"]  # ensure looked; nothing was sent after


async def test_arm_errors_map_into_gpufans_tree(arm: ArmFake, make: Any) -> None:
    aca = make(AcaBackend, arm)
    with pytest.raises(
        ConfigError, match="container app 'nope' in resource group 'gpufan-rg'"
    ) as e:
        await aca.describe(aca_target(app="nope"))
    assert "was not found" in str(e.value)
    shards = split("r", (Tensor("X", np.zeros((2, 64), np.float32)),), [2])
    (failed,) = [o async for o in aca.run(aca_target(app="nope"), job(), shards)]
    assert isinstance(failed.error, TargetUnavailable) and "'nope'" in str(failed.error)

    arm.add_container_app(SUB, RG, "gpufan-t4", fqdn="x.example")
    for status, code, match in [
        (403, "AuthorizationFailed", "not authorised for container app 'gpufan-t4'"),
        (429, "TooManyRequests", "answered 429"),
        (503, "ServiceUnavailable", "answered 503"),
        (409, "Conflict", "answered 409"),
    ]:
        arm.fail_next(status, code)
        with pytest.raises(TargetUnavailable, match=match):
            await aca.describe(aca_target(), fresh=True)
    arm.fail_next(400, "InvalidRequestContent", "bad body")
    with pytest.raises(ConfigError, match=r"refused .*: 400 InvalidRequestContent: bad body"):
        await aca.describe(aca_target(), fresh=True)

    wrong = make(AcaBackend, arm, credential=StaticCredential("stolen"))
    with pytest.raises(TargetUnavailable, match=r"not authorised .* AuthenticationFailed"):
        await wrong.describe(aca_target())


async def test_production_policy_never_sends_the_token_over_http(
    arm: ArmFake, session: Any
) -> None:
    # Only base_url is overridden: the SDK's own TLS-only bearer policy stays in force.
    access = ArmAccess(StaticCredential(ARM_TOKEN), {"base_url": arm.base_url, "retry_total": 0})
    aca = AcaBackend(session, {}, access=access)
    with pytest.raises(TargetUnavailable, match="non-TLS"):
        await aca.describe(aca_target())
    await aca.aclose()
    assert arm.requests == []


def test_registry_and_lazy_sdk_imports() -> None:
    assert backend_class("aca") is AcaBackend and backend_class("aci") is AciBackend
    script = """
import asyncio, sys
sys.modules["azure"] = None  # as if no azure package were installed
from core.backends import BackendContext
from core.backends.aca import AcaBackend
from core.config import Target
from core.errors import ConfigError
from core.wire.session import make_session

async def main():
    session = make_session()
    aca = AcaBackend.create(BackendContext(session))
    t = Target(name="t", backend="aca", options={"subscription_id": "s",
               "resource_group": "g", "app": "a"})
    try:
        await aca.describe(t)
    except ConfigError as e:
        print("ConfigError:", e)
    await session.close()

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert "ConfigError: Azure targets need the azure-mgmt-appcontainers" in done.stdout


# ------------------------------------------------------------------------------------ aci


async def test_aci_create_describe_run_delete_round_trip(
    make: Any, worker_port: int, digits: np.ndarray, direct: Any, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    with ArmFake(expected_token=ARM_TOKEN, lro="async", aci_fqdn="127.0.0.1") as arm:
        aci = make(AciBackend, arm)
        target = aci_target(port=worker_port)
        group = await aci.ensure(target)
        assert group.provisioning_state == "Succeeded" and group.state == "Running"
        assert group.fqdn == "127.0.0.1" and group.ip == "20.1.2.3" and group.gpu is None
        assert group.ports == (worker_port,) and group.location == "eastus"

        put = next(r for r in arm.requests if r.method == "PUT")
        assert put.query == {"api-version": "2023-05-01"}
        assert put.path == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/{GROUPS}/gpufan-cpu"
        assert any("/operationStatuses/" in r.path for r in arm.requests)  # 201 + async polling
        props = put.body["properties"]
        (container,) = props["containers"]
        c = container["properties"]
        assert container["name"] == "worker" and c["image"] == target.options["image"]
        assert c["ports"] == [{"port": worker_port, "protocol": "TCP"}]
        assert c["resources"]["requests"] == {"cpu": 4.0, "memoryInGB": 16.0}  # no gpu
        assert c["environmentVariables"] == [
            {"name": "GPUFAN_WORKER_TOKEN", "secureValue": WORKER_TOKEN}
        ]
        assert props["restartPolicy"] == "Always" and props["osType"] == "Linux"
        ip = props["ipAddress"]
        assert ip["type"] == "Public" and ip["dnsNameLabel"] == "gpufan-cpu"
        assert ip["ports"] == [{"port": worker_port, "protocol": "TCP"}]
        assert put.body["location"] == "eastus"
        assert all(WORKER_TOKEN not in str(r.body) for r in arm.requests if r.method == "GET")
        assert WORKER_TOKEN not in caplog.text and ARM_TOKEN not in caplog.text

        assert await aci.describe(target) == group
        assert await aci.ready(target)
        await run_and_check(aci, target, digits[:40], direct)
        assert len([r for r in arm.requests if r.method == "PUT"]) == 1
        assert await aci.ensure(target) == group  # exists: left as it is
        assert len([r for r in arm.requests if r.method == "PUT"]) == 1

        await aci.delete(target)
        assert any(r.method == "DELETE" for r in arm.requests)
        assert arm.resources == {}
        with pytest.raises(ConfigError, match=r"container group 'gpufan-cpu' .* not found"):
            await aci.describe(target)
        await aci.delete(target)  # already gone: ARM answers 204, and that is fine
        assert not await aci.ready(target)


async def test_aci_ensure_respects_create_false_and_needs_a_token(arm: ArmFake, make: Any) -> None:
    aci = make(AciBackend, arm)
    with pytest.raises(ConfigError, match=r"does not exist and options\.create is false"):
        await aci.ensure(aci_target(options={"create": False}))
    with pytest.raises(ConfigError, match="without a bearer token; set token_env"):
        await make(AciBackend, arm, tokens={}).ensure(aci_target())
    assert [r.method for r in arm.requests] == ["GET", "GET"]


async def test_aci_failed_provisioning_is_retryable(make: Any) -> None:
    with ArmFake(expected_token=ARM_TOKEN, lro="async") as arm:
        arm.operation_error = ("InaccessibleImage", "image pull failed")
        with pytest.raises(TargetUnavailable, match="failed: InaccessibleImage: image pull failed"):
            await make(AciBackend, arm).ensure(aci_target())


async def test_aci_gpu_request_warns_of_the_retirement(make: Any, caplog: Any) -> None:
    gpu = aci_target(options={"gpu_sku": "V100", "memory_gb": 32, "cpu": 6})
    with ArmFake(expected_token=ARM_TOKEN, aci_gpu_skus=["V100"]) as legacy:
        with caplog.at_level(logging.WARNING, logger="core.backends.aci"):
            group = await make(AciBackend, legacy).ensure(gpu)
        assert group.gpu == "1x V100"
        assert "retired on 2025-07-14" in caplog.text
        put = next(r for r in legacy.requests if r.method == "PUT")
        requests = put.body["properties"]["containers"][0]["properties"]["resources"]["requests"]
        assert requests == {"cpu": 6.0, "memoryInGB": 32.0, "gpu": {"count": 1, "sku": "V100"}}

    with ArmFake(expected_token=ARM_TOKEN) as today:  # no GPU SKU offered any more
        aci = make(AciBackend, today)
        with pytest.raises(ConfigError, match=r"SkuNotAvailable.*retired on 2025-07-14"):
            await aci.ensure(gpu)
        with pytest.raises(ConfigError, match=r"gpu_sku must be one of K80, P100, V100.*retired"):
            await aci.ensure(aci_target(options={"gpu_sku": "A100"}))


# ------------------------------------------------------------------------------------ dispatch


async def test_dispatcher_over_aca_and_aci(
    arm: ArmFake, make: Any, worker_port: int, digits: np.ndarray, direct: Any
) -> None:
    arm.add_container_app(SUB, RG, "gpufan-t4", fqdn=f"127.0.0.1:{worker_port}")
    aca, aci = make(AcaBackend, arm), make(AciBackend, arm)
    await aci.ensure(aci_target(port=worker_port))
    targets = [
        aca_target(app="deleted-app", name="aca-gone", max_concurrency=2),  # ARM 404
        aca_target(usd_per_hour=0.5, pricing="serverless", max_concurrency=2),
        aci_target(port=worker_port, usd_per_hour=0.2, pricing="on_demand", max_concurrency=2),
    ]
    dispatcher = Dispatcher(
        targets,
        {"aca": aca, "aci": aci},
        Policy(max_shard_items=16, min_shard_items=4, backoff_ms=1, breaker_failures=1),
    )
    x = digits[:100]
    result = await dispatcher.dispatch(MODEL, None, InferRequest((Tensor("X", x),)))
    want = direct(x)
    for tensor in result.outputs:
        np.testing.assert_array_equal(tensor.data, want[tensor.name])
    gone = [a for s in result.shards for a in s.attempts if a.target == "aca-gone"]
    assert gone and all(not a.ok for a in gone)  # the cheapest target was tried, and failed
    assert result.redispatched == len(gone)
    assert {s.target for s in result.shards} == {"aca-t4", "aci-cpu"}
