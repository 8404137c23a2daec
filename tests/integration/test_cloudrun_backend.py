"""CloudRunBackend: the real ``google-cloud-run`` client against a loopback Admin API fake, and its
data plane to a real gpufan worker.

GIVEN a fake Cloud Run API (``tests.fakes.cloudrun_api``) whose service's ``uri`` is a local
gpufan worker that answers only ``Authorization: Bearer <TOKEN>``, and ``fetch_id_token`` stubbed
to mint TOKEN (it would ask the metadata server: google-auth's id_token.fetch_id_token)
WHEN shards run through the backend, directly or through a Dispatcher, and the autoscaler's calls
(describe, set_scaling) go to the API
THEN results equal one direct onnxruntime run exactly, the SDK sent the documented REST requests,
and a scaled-to-zero service's first shard is reported as a cold start.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import google.oauth2.id_token
import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials

from core.backends import BackendContext, backend_class
from core.backends.base import ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.backends.cloudrun import CloudRunBackend, Scaling
from core.config import Policy, Target
from core.dispatch.dispatcher import Dispatcher
from core.errors import ConfigError, TargetTimeout, TargetUnavailable
from core.planning.loads import WARM_S
from core.planning.shards import split
from core.wire.session import make_session
from core.wire.tensors import InferRequest, Tensor
from gpu_containers import DEMO_REPOSITORY
from tests.fakes.cloudrun_api import FakeCloudRunApi
from tests.integration.conftest import PoolFactory

MODEL = "digits"
TOKEN = "id-token-minted-for-the-test"
SERVICE = "projects/p/locations/us-central1/services/llm"
SERVICE_PATH = f"/v2/{SERVICE}"


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def worker(module_worker_pool: PoolFactory) -> str:
    """One gpufan worker that refuses any other bearer token than TOKEN."""
    pool = module_worker_pool(DEMO_REPOSITORY, 1, env={"GPUFAN_WORKER_TOKEN": TOKEN})
    return pool.endpoints[0]


class Cloud:
    """The fake API, the audiences the stubbed ``fetch_id_token`` was asked for, and
    ``backend(**kw)``: a CloudRunBackend on the fake (all closed at teardown)."""

    def __init__(self, api: FakeCloudRunApi, session: Any) -> None:
        self.api, self.session = api, session
        self.audiences: list[str] = []
        self.made: list[CloudRunBackend] = []

    def fetch_id_token(self, request: Any, audience: str) -> str:
        self.audiences.append(audience)
        return TOKEN

    def backend(self, **kw: Any) -> CloudRunBackend:
        options, anonymous = self.api.client_options, AnonymousCredentials()
        self.made.append(
            CloudRunBackend(self.session, client_options=options, credentials=anonymous, **kw)
        )
        return self.made[-1]


@pytest.fixture
async def cloud(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cloud]:
    session = make_session(max_connections=16)
    with FakeCloudRunApi() as api:
        c = Cloud(api, session)
        # The one stub allowed: the real call asks the metadata server (google-auth id_token).
        monkeypatch.setattr(google.oauth2.id_token, "fetch_id_token", c.fetch_id_token)
        yield c
        for backend in c.made:
            await backend.aclose()
    await session.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_target(name: str = "run-l4", **over: Any) -> Target:
    fields: dict[str, Any] = {"backend": "cloudrun", "region": "us-central1", "cold_start_s": 20.0}
    fields |= {"scale_to_zero": True, "options": {"project": "p", "service": "llm"}}
    return Target(name=name, **{**fields, **over})


def job(timeout_s: float = 10.0) -> ShardJob:
    return ShardJob(MODEL, None, None, timeout_s, asyncio.Semaphore(4))


async def outcomes(
    backend: CloudRunBackend, target: Target, x: np.ndarray, sizes: list[int], j: ShardJob
) -> list[ShardOutcome]:
    shards = split("req", (Tensor("X", x),), sizes)
    return [o async for o in backend.run(target, j, shards)]


def assert_matches_direct(got: list[ShardOutcome], direct: Callable[..., Any]) -> None:
    assert got and all(isinstance(o, ShardOk) for o in got), got
    for o in got:
        assert isinstance(o, ShardOk)
        want = direct(o.shard.inputs[0].data)
        assert {t.name: t.data.tolist() for t in o.outputs} == {
            k: v.tolist() for k, v in want.items()
        }


# ------------------------------------------------------------------------------------ control plane


async def test_describe_reads_the_service_and_caches_it(cloud: Cloud) -> None:
    cloud.api.seed("p", "us-central1", "llm", uri="https://llm-abc-uc.a.run.app", max_instances=3)
    backend = cloud.backend()
    info = await backend.describe(run_target())
    assert info.name == SERVICE and info.uri == "https://llm-abc-uc.a.run.app" and info.ready
    assert (info.gpu, info.gpu_count, info.cpu, info.memory_gib) == ("nvidia-l4", 1, 4.0, 16.0)
    assert info.scaling == info.revision_scaling == Scaling(0, 3) and info.min_instances == 0
    assert info.gpu_zonal_redundancy_disabled
    await backend.describe(run_target())  # cached: the URI rarely changes
    assert [(r.method, r.path, r.query) for r in cloud.api.requests] == [("GET", SERVICE_PATH, {})]
    await backend.describe(run_target(), refresh=True)
    assert len(cloud.api.requests) == 2


async def test_set_scaling_patches_only_service_scaling_and_waits_for_the_operation(
    cloud: Cloud,
) -> None:
    cloud.api.seed("p", "us-central1", "llm", uri="https://llm-abc-uc.a.run.app")
    cloud.api.polls_before_done = 1  # the PATCH answers done:false; the first poll finishes it
    backend = cloud.backend()
    assert await backend.set_scaling(run_target(), 1, 5) == Scaling(1, 5)
    patch, poll = cloud.api.requests
    assert (patch.method, patch.path) == ("PATCH", SERVICE_PATH)
    assert patch.query == {"updateMask": ["scaling"]}
    assert patch.body == {"scaling": {"minInstanceCount": 1, "maxInstanceCount": 5}}
    assert poll.method == "GET"
    assert poll.path.startswith("/v2/projects/p/locations/us-central1/operations/")
    template = cloud.api.services[SERVICE]["template"]
    assert template["scaling"] == {"maxInstanceCount": 3}  # the revision was left alone
    assert (await backend.describe(run_target())).min_instances == 1  # the operation's answer
    assert len(cloud.api.requests) == 2
    assert await backend.scaling(run_target()) == Scaling(1, 5)  # read fresh
    assert cloud.api.requests[-1].method == "GET" and cloud.api.requests[-1].path == SERVICE_PATH

    cloud.api.polls_before_done = 0
    assert await backend.set_scaling(run_target(), 0) == Scaling(0, None)
    # proto3 leaves zero values out: both bounds go unset
    assert cloud.api.requests[-1].body == {"scaling": {}}
    with pytest.raises(ValueError, match="bad instance bounds"):
        await backend.set_scaling(run_target(), 3, 2)


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ({"accelerator": None}, "no NVIDIA GPU"),
        ({"cpu": "2"}, "nvidia-l4 needs at least 4 CPU, the service has 2$"),
        (
            {"cpu": "2000m", "memory": "8Gi"},
            "at least 4 CPU, the service has 2; .* 16 GiB memory, the service has 8$",
        ),
    ],
)
async def test_check_gpu_refuses_a_service_that_cannot_hold_an_l4(
    cloud: Cloud, seed: dict[str, Any], message: str
) -> None:
    cloud.api.seed("p", "us-central1", "ok", uri="https://ok.a.run.app")
    cloud.api.seed("p", "us-central1", "llm", uri="https://llm.a.run.app", **seed)
    backend = cloud.backend()
    ok = run_target("ok", options={"project": "p", "service": "ok"})
    assert (await backend.check_gpu(ok)).gpu == "nvidia-l4"
    with pytest.raises(ConfigError, match=message) as e:
        await backend.check_gpu(run_target())
    assert "run-l4" in str(e.value) and SERVICE in str(e.value)


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"options": {"service": "llm"}}, "targets[run-l4].options.project"),
        ({"options": {"project": "p"}}, "targets[run-l4].options.service"),
        ({"options": {"project": "p", "service": "a/b"}}, "targets[run-l4].options.service"),
        ({"options": {"project": "p", "service": "llm", "auth": "x"}}, "options.auth"),
        ({"options": {"project": "p", "service": "llm", "auth": "bearer"}}, "token_env"),
        ({"options": {"project": "p", "service": "llm", "zone": "a"}}, "unknown key(s) zone"),
        ({"region": "local"}, "targets[run-l4].region"),
    ],
)
async def test_bad_options_are_config_errors_naming_the_key(
    cloud: Cloud, over: dict, key: str
) -> None:
    backend = cloud.backend()
    with pytest.raises(ConfigError) as e:
        await backend.describe(run_target(**over))
    assert key in str(e.value)
    (failed,) = await outcomes(
        backend, run_target(**over), np.zeros((1, 64), np.float32), [1], job()
    )
    assert isinstance(failed, ShardFailed) and isinstance(failed.error, ConfigError)
    assert cloud.api.requests == []  # nothing reached the API


async def test_an_unknown_service_is_unavailable_not_a_crash(cloud: Cloud) -> None:
    backend = cloud.backend()
    with pytest.raises(TargetUnavailable, match="Cloud Run API answered 404"):
        await backend.describe(run_target())
    assert not await backend.ready(run_target())
    (failed,) = await outcomes(backend, run_target(), np.zeros((1, 64), np.float32), [1], job())
    assert isinstance(failed, ShardFailed) and isinstance(failed.error, TargetUnavailable)


# ------------------------------------------------------------------------------------ data plane


async def test_shards_run_on_the_service_uri_with_an_id_token(
    cloud: Cloud, worker: str, digits: np.ndarray, direct: Callable[..., Any]
) -> None:
    cloud.api.seed("p", "us-central1", "llm", uri=worker)
    backend = cloud.backend()
    got = await outcomes(backend, run_target(), digits[:50], [20, 20, 10], job())
    assert_matches_direct(got, direct)  # the worker refuses anything but "Bearer TOKEN"
    assert cloud.audiences == [worker]  # the base URL; minted once and cached
    meta = await backend.model_metadata(run_target(), MODEL, None)
    assert meta["name"] == MODEL and meta["inputs"][0]["name"] == "X"
    assert cloud.audiences == [worker]


async def test_a_token_the_service_refuses_fails_the_shard_retryably(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch, worker: str
) -> None:
    monkeypatch.setattr(google.oauth2.id_token, "fetch_id_token", lambda _r, _a: "not-it")
    cloud.api.seed("p", "us-central1", "llm", uri=worker)
    (failed,) = await outcomes(
        cloud.backend(), run_target(), np.zeros((2, 64), np.float32), [2], job()
    )
    assert isinstance(failed, ShardFailed) and isinstance(failed.error, TargetUnavailable)
    assert "answered 401" in str(failed.error)


async def test_endpoint_overrides_the_uri_but_the_audience_stays_the_service(
    cloud: Cloud, worker: str, digits: np.ndarray, direct: Callable[..., Any]
) -> None:
    cloud.api.seed("p", "us-central1", "llm", uri="https://llm-abc-uc.a.run.app")
    got = await outcomes(cloud.backend(), run_target(endpoint=worker), digits[:8], [8], job())
    assert_matches_direct(got, direct)
    assert cloud.audiences == ["https://llm-abc-uc.a.run.app"]


async def test_bearer_auth_sends_the_targets_token_and_mints_no_id_token(
    cloud: Cloud, worker: str, digits: np.ndarray, direct: Callable[..., Any]
) -> None:
    cloud.api.seed("p", "us-central1", "llm", uri=worker)
    t = run_target(
        token_env="RUN_TOKEN", options={"project": "p", "service": "llm", "auth": "bearer"}
    )
    got = await outcomes(cloud.backend(tokens={t.name: TOKEN}), t, digits[:8], [8], job())
    assert_matches_direct(got, direct)
    assert cloud.audiences == []


async def test_ready_needs_the_terminal_condition_and_a_ready_worker(
    cloud: Cloud, worker: str
) -> None:
    cloud.api.seed("p", "us-central1", "llm", uri=worker)
    cloud.api.seed("p", "us-central1", "failed", uri=worker, ready=False)
    cloud.api.seed("p", "us-central1", "dead", uri="http://127.0.0.1:9")
    backend = cloud.backend()
    assert await backend.ready(run_target())
    for service in ("failed", "dead"):
        assert not await backend.ready(run_target(options={"project": "p", "service": service}))


async def test_a_scaled_to_zero_service_reports_its_first_shard_as_a_cold_start(
    cloud: Cloud, worker: str, digits: np.ndarray
) -> None:
    cloud.api.seed("p", "us-central1", "llm", uri=worker, min_instances=0)
    cloud.api.seed("p", "us-central1", "warm", uri=worker, min_instances=1)
    clock = Clock()
    backend = cloud.backend(clock=clock)
    t, x = run_target(), digits[:4]

    async def cold(t: Target, j: ShardJob) -> bool:
        (o,) = await outcomes(backend, t, x, [4], j)
        assert isinstance(o, ShardOk), o
        return o.cold_start

    # A cold shard gets cold_start_s more: this timeout alone could never cover a round trip.
    assert await cold(t, job(timeout_s=1e-4))
    (late,) = await outcomes(backend, t, x, [4], job(timeout_s=1e-4))
    assert isinstance(late, ShardFailed) and isinstance(late.error, TargetTimeout)
    assert not await cold(t, job())  # it answered a moment ago: an instance is up
    clock.now += WARM_S
    assert await cold(t, job())  # idle long enough to have scaled to zero again
    assert [r.path for r in cloud.api.requests].count(SERVICE_PATH) == 2  # describe TTL ran out too
    warm = run_target("warm-l4", options={"project": "p", "service": "warm"})
    assert not await cold(warm, job())  # min instances keep one up


async def test_dispatcher_over_cloudrun_matches_onnxruntime_and_reports_the_cold_start(
    cloud: Cloud, worker: str, digits: np.ndarray, direct: Callable[..., Any]
) -> None:
    cloud.api.seed("p", "us-central1", "llm", uri=worker)
    t = run_target(max_concurrency=4)
    dispatcher = Dispatcher([t], {"cloudrun": cloud.backend()}, Policy(max_shard_items=32))
    x = digits[:200]
    result = await dispatcher.dispatch(MODEL, None, InferRequest((Tensor("X", x),)))
    want = direct(x)
    assert {o.name: o.data.tolist() for o in result.outputs} == {
        k: v.tolist() for k, v in want.items()
    }
    assert len(result.shards) > 1 and all(s.target == "run-l4" for s in result.shards)
    attempts = [a for s in result.report()["shards"] for a in s["attempts"]]
    assert all(a.get("cold_start") is True for a in attempts)
    again = await dispatcher.dispatch(MODEL, None, InferRequest((Tensor("X", x[:40]),)))
    assert not any(a.get("cold_start") for s in again.report()["shards"] for a in s["attempts"])
    assert cloud.audiences == [worker]


# ------------------------------------------------------------------------------------ wiring


async def test_registered_and_built_from_the_context() -> None:
    session = make_session()
    try:
        backend = backend_class("cloudrun").create(BackendContext(session, {"t": "x"}))
        assert isinstance(backend, CloudRunBackend) and backend.name == "cloudrun"
    finally:
        await session.close()


def test_importing_the_backend_imports_no_google_sdk() -> None:
    probe = (
        "import sys, core.backends.cloudrun; "
        "assert not [m for m in sys.modules if m.startswith(('google.cloud.run', 'google.auth'))]"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
