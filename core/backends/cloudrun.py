"""The ``cloudrun`` backend: a Cloud Run service with an NVIDIA GPU running gpufan's worker.

The data plane is the ``http`` one, pointed at the service's URI (or the target's ``endpoint``)
with a Google ID token for that URI, since a private service checks ``roles/run.invoker`` on every
request. The control plane is the Cloud Run Admin API v2 (``run_v2.ServicesClient``, REST), for
``describe``, ``check_gpu`` and the autoscaler's ``set_scaling`` (service-level: no new revision).
Target options: ``project``, ``service`` (the region is the target's) and ``auth``: ``id_token``
(default) or ``bearer`` (the target's ``token_env``). A service with no minimum instances that has
not answered for ``core.planning.loads.WARM_S`` may have none up: its shards are reported
``cold_start`` and get ``cold_start_s`` more time. The SDK is imported on first use; credentials
come only from google-auth's standard chain.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp

from core.backends.base import BackendContext, ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.backends.http import HttpBackend
from core.config import Target
from core.errors import ConfigError, GpufanError, TargetTimeout, TargetUnavailable
from core.planning.loads import WARM_S
from core.planning.shards import Shard

if TYPE_CHECKING:
    from google.cloud import run_v2

__all__ = [
    "OPTION_KEYS",
    "CloudRunBackend",
    "Scaling",
    "ServiceInfo",
]

OPTION_KEYS = ("project", "service", "auth")
_AUTH_MODES = ("id_token", "bearer")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")  # no '/': it would change the resource path
DESCRIBE_TTL_S = 60.0  # the URI rarely changes; scaling seen by cold-start logic may lag this much
ID_TOKEN_TTL_S = 50 * 60.0  # Google ID tokens live an hour (google-auth id_token docs): renew early
OPERATION_TIMEOUT_S = 300.0  # a service-level scaling update normally completes in seconds
# Minimum vCPU and GiB per GPU type (cloud.google.com/run/docs/configuring/services/gpu); another
# nvidia-* type is held to the L4's floor, the smallest Cloud Run offers.
GPU_MINIMUMS = {"nvidia-l4": (4.0, 16.0), "nvidia-rtx-pro-6000": (20.0, 80.0)}
_MEMORY_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_MEMORY_UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)([A-Za-z]*)$")
K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Scaling:
    """Instance bounds; ``max_instances`` None means unset (Cloud Run's default)."""

    min_instances: int
    max_instances: int | None


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What gpufan needs to know about one Cloud Run service (``describe``)."""

    name: str  # projects/P/locations/R/services/S
    uri: str | None  # None while the first revision is still being created
    ready: bool  # terminal condition succeeded and not reconciling
    gpu: str | None  # template.node_selector.accelerator, e.g. "nvidia-l4"
    gpu_count: int  # limits["nvidia.com/gpu"]
    cpu: float | None  # vCPUs of the GPU container (or the first one); None: not set
    memory_gib: float | None
    scaling: Scaling  # service-level: changes without a new revision
    revision_scaling: Scaling  # the revision template's
    gpu_zonal_redundancy_disabled: bool

    @property
    def min_instances(self) -> int:
        """Instances kept up whatever the traffic: either level's minimum keeps some."""
        return max(self.scaling.min_instances, self.revision_scaling.min_instances)


def _options(target: Target) -> tuple[str, str]:
    """The target's service resource name and auth mode; ConfigError names the key and target."""
    where, opts = f"targets[{target.name}]", target.options
    unknown = sorted(set(opts) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}.options: unknown key(s) {', '.join(unknown)}; "
            f"backend 'cloudrun' takes {', '.join(OPTION_KEYS)}"
        )
    for key in ("project", "service"):
        value = opts.get(key)
        if not isinstance(value, str) or not _ID.match(value):
            raise ConfigError(f"{where}.options.{key}: the Cloud Run {key} id, got {value!r}")
    if target.region == "local":
        raise ConfigError(f"{where}.region: set the Cloud Run service's region, e.g. us-central1")
    auth = opts.get("auth", "id_token")
    if auth not in _AUTH_MODES:
        raise ConfigError(f"{where}.options.auth: one of {', '.join(_AUTH_MODES)}, got {auth!r}")
    if auth == "bearer" and target.token_env is None:
        raise ConfigError(f"{where}.options.auth: 'bearer' needs the target's token_env")
    return f"projects/{opts['project']}/locations/{target.region}/services/{opts['service']}", auth


async def _blocking(where: str, call: Callable[[], T]) -> T:
    """Run one blocking SDK call in a thread, mapping google-api-core, google-auth and requests
    errors into gpufan's tree (the one boundary of this module)."""
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as api

    try:
        return await asyncio.to_thread(call)
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise ConfigError(f"{where}: no Google credentials: {e}") from e
    except (TimeoutError, requests.Timeout, api.DeadlineExceeded, api.RetryError) as e:
        raise TargetTimeout(f"{where} timed out ({type(e).__name__})") from e
    except api.GoogleAPICallError as e:
        raise TargetUnavailable(f"{where}: Cloud Run API answered {e.code}: {e.message}") from e
    except (google.auth.exceptions.GoogleAuthError, requests.RequestException) as e:
        raise TargetUnavailable(f"{where}: {type(e).__name__}: {e}") from e


def _quantity(text: str | None, units: Mapping[str, float]) -> float | None:
    m = _QUANTITY.match((text or "").strip())
    if m is None or m.group(2) not in units:
        return None
    return float(m.group(1)) * units[m.group(2)]


def _service_info(svc: run_v2.Service) -> ServiceInfo:
    from google.cloud import run_v2

    template = svc.template
    containers = list(template.containers)
    gpu_containers = [c for c in containers if "nvidia.com/gpu" in c.resources.limits]
    limits = dict((gpu_containers or containers)[0].resources.limits) if containers else {}
    scaling, revision = svc.scaling, template.scaling  # proto3: a max of 0 means unset
    service_scaling = Scaling(scaling.min_instance_count, scaling.max_instance_count or None)
    if scaling.scaling_mode == run_v2.ServiceScaling.ScalingMode.MANUAL:
        service_scaling = Scaling(scaling.manual_instance_count, scaling.manual_instance_count)
    succeeded = svc.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    memory = _quantity(limits.get("memory"), _MEMORY_UNITS)
    return ServiceInfo(
        name=svc.name,
        uri=svc.uri or None,
        ready=succeeded and not svc.reconciling,
        gpu=template.node_selector.accelerator or None,
        gpu_count=int(_quantity(limits.get("nvidia.com/gpu"), {"": 1.0}) or 0),
        cpu=_quantity(limits.get("cpu"), {"": 1.0, "m": 1e-3}),
        memory_gib=None if memory is None else memory / 2**30,
        scaling=service_scaling,
        revision_scaling=Scaling(revision.min_instance_count, revision.max_instance_count or None),
        gpu_zonal_redundancy_disabled=template.gpu_zonal_redundancy_disabled,
    )


def _gpu_problems(info: ServiceInfo) -> list[str]:
    if info.gpu is None or not info.gpu.startswith("nvidia-"):
        return [f"no NVIDIA GPU (template.nodeSelector.accelerator is {info.gpu or 'unset'!r})"]
    problems = []
    if info.gpu_count < 1:
        problems.append("limits['nvidia.com/gpu'] is not set to 1")
    min_cpu, min_gib = GPU_MINIMUMS.get(info.gpu, GPU_MINIMUMS["nvidia-l4"])
    for what, have, need in (("CPU", info.cpu, min_cpu), ("GiB memory", info.memory_gib, min_gib)):
        if have is None or have < need:
            has = "none set" if have is None else f"{have:g}"
            problems.append(f"{info.gpu} needs at least {need:g} {what}, the service has {has}")
    return problems


class _Ttl(Generic[K, V]):
    """Values that expire, each loaded by one caller at a time (no stampede on a cold cache)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self._ttl_s, self._clock = ttl_s, clock
        self._values: dict[K, tuple[float, V]] = {}
        self._locks: dict[K, asyncio.Lock] = {}

    def put(self, key: K, value: V) -> V:
        self._values[key] = (self._clock() + self._ttl_s, value)
        return value

    async def get(self, key: K, load: Callable[[], Awaitable[V]], refresh: bool = False) -> V:
        async with self._locks.setdefault(key, asyncio.Lock()):
            expires, value = self._values.get(key, (0.0, None))
            if refresh or value is None or expires <= self._clock():
                value = self.put(key, await load())
            return value


class CloudRunBackend:
    """Shards to Cloud Run GPU services; also the control plane the autoscaler calls.

    Args:
        session: the shared, pooled session; its owner closes it.
        tokens: target name -> bearer token, for targets with ``auth: bearer``.
        client_options, credentials: passed to ``run_v2.ServicesClient`` (tests point it at a
            loopback fake); None: Google's endpoint and the standard credential chain.
        clock: monotonic seconds, for the caches and the warm/cold decision.
    """

    name = "cloudrun"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        tokens: Mapping[str, str | None] | None = None,
        client_options: dict[str, Any] | None = None,
        credentials: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._tokens = dict(tokens or {})
        self._client_options = client_options
        self._credentials = credentials
        self._clock = clock
        self._client: run_v2.ServicesClient | None = None
        self._client_lock = threading.Lock()  # built in a worker thread, once
        self._services: _Ttl[str, ServiceInfo] = _Ttl(DESCRIBE_TTL_S, clock)
        self._id_tokens: _Ttl[str, str] = _Ttl(ID_TOKEN_TTL_S, clock)
        self._answered_at: dict[str, float] = {}  # service name -> last successful answer

    @classmethod
    def create(cls, ctx: BackendContext) -> CloudRunBackend:
        """Built by the front door; the API client is made on first use."""
        return cls(ctx.session, tokens=ctx.tokens)

    def _services_client(self) -> run_v2.ServicesClient:
        with self._client_lock:
            if self._client is None:
                from google.cloud import run_v2

                options, credentials = self._client_options, self._credentials
                self._client = run_v2.ServicesClient(
                    credentials=credentials, transport="rest", client_options=options
                )
            return self._client

    async def describe(self, target: Target, *, refresh: bool = False) -> ServiceInfo:
        """The target's service, cached for ``DESCRIBE_TTL_S`` unless ``refresh``.

        Raises:
            ConfigError: the target's options are invalid, or there are no credentials.
            TargetUnavailable, TargetTimeout: the API failed or refused (e.g. 404, 403).
        """
        name = _options(target)[0]

        def get() -> run_v2.Service:  # the client is built here too: it may read credentials
            return self._services_client().get_service(name=name, timeout=target.timeout_s)

        async def load() -> ServiceInfo:
            return _service_info(await _blocking(f"{target.name} ({name})", get))

        return await self._services.get(name, load, refresh)

    async def check_gpu(self, target: Target) -> ServiceInfo:
        """The service, if it has an NVIDIA GPU with the CPU and memory that GPU requires.

        Raises:
            ConfigError: saying everything that is wrong with the service's GPU settings.
        """
        info = await self.describe(target)
        if problems := _gpu_problems(info):
            raise ConfigError(
                f"targets[{target.name}]: Cloud Run service {info.name} cannot run GPU shards: "
                + "; ".join(problems)
            )
        return info

    async def scaling(self, target: Target) -> Scaling:
        """The service-level scaling, read fresh from the API."""
        return (await self.describe(target, refresh=True)).scaling

    async def set_scaling(
        self, target: Target, min_instances: int, max_instances: int | None = None
    ) -> Scaling:
        """Set service-level instance bounds (``update_mask=scaling``: no new revision) and wait
        for the operation; returns the scaling the service reports afterwards.

        Raises:
            ValueError: the bounds are negative or inverted.
            TargetUnavailable, TargetTimeout: the API refused or the operation did not finish.
        """
        if min_instances < 0 or (max_instances is not None and max_instances < min_instances):
            raise ValueError(f"bad instance bounds: min {min_instances}, max {max_instances}")
        name = _options(target)[0]

        def update() -> run_v2.Service:  # in a thread: even the SDK's first import is slow
            from google.api_core.future.polling import DEFAULT_POLLING
            from google.cloud import run_v2
            from google.protobuf import field_mask_pb2

            scaling = run_v2.ServiceScaling(
                min_instance_count=min_instances, max_instance_count=max_instances or 0
            )
            request = run_v2.UpdateServiceRequest(
                service=run_v2.Service(name=name, scaling=scaling),
                update_mask=field_mask_pb2.FieldMask(paths=["scaling"]),
            )
            op = self._services_client().update_service(request=request, timeout=target.timeout_s)
            # Poll soon, then back off: the default waits a whole second before the first poll.
            polling = DEFAULT_POLLING.with_delay(initial=0.05, maximum=5.0, multiplier=2.0)
            service: run_v2.Service = op.result(timeout=OPERATION_TIMEOUT_S, polling=polling)
            return service

        info = _service_info(await _blocking(f"{target.name} ({name})", update))
        return self._services.put(name, info).scaling

    async def _id_token(self, target: Target, audience: str) -> str:
        def mint() -> str:
            import google.auth.transport.requests
            from google.oauth2 import id_token

            token: str = id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
            return token

        async def fetch() -> str:
            return await _blocking(f"{target.name}: ID token for {audience}", mint)

        return await self._id_tokens.get(audience, fetch)

    async def _plane(self, target: Target) -> tuple[HttpBackend, ServiceInfo]:
        """The HTTP data plane bound to the service's URL and this moment's credentials."""
        auth = _options(target)[1]
        info = await self.describe(target)
        endpoint = target.endpoint or info.uri
        if endpoint is None:
            raise TargetUnavailable(f"{target.name}: {info.name} has no URI yet")
        token: str | None
        if auth == "id_token":
            audience = urlsplit(info.uri or endpoint)._replace(path="", query="", fragment="")
            token = await self._id_token(target, audience.geturl())
        else:
            token = self._tokens.get(target.name)
        plane = HttpBackend(
            self._session, token_for=lambda _: token, endpoint_for=lambda _: endpoint
        )
        return plane, info

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        """Like the ``http`` backend; a service that may be scaled to zero gets its shards
        marked ``cold_start`` and ``target.cold_start_s`` more time each."""
        started = time.perf_counter()
        try:
            plane, info = await self._plane(target)
        except GpufanError as e:
            for shard in shards:
                yield ShardFailed(shard, target.name, e, time.perf_counter() - started)
            return
        last = self._answered_at.get(info.name)  # no answer for WARM_S: maybe no instance up
        cold = info.min_instances == 0 and (last is None or self._clock() - last >= WARM_S)
        if cold:
            job = replace(job, timeout_s=job.timeout_s + target.cold_start_s)
        async for outcome in plane.run(target, job, shards):
            if isinstance(outcome, ShardOk):
                self._answered_at[info.name] = self._clock()
                if cold:
                    outcome = replace(outcome, cold_start=True)
            yield outcome

    async def _ask(self, target: Target, call: Callable[[HttpBackend], Awaitable[T]]) -> T:
        plane, info = await self._plane(target)
        answer = await call(plane)
        self._answered_at[info.name] = self._clock()
        return answer

    async def model_metadata(
        self, target: Target, model: str, version: str | None
    ) -> dict[str, Any]:
        return await self._ask(target, lambda p: p.model_metadata(target, model, version))

    async def model_config(self, target: Target, model: str, version: str | None) -> dict[str, Any]:
        return await self._ask(target, lambda p: p.model_config(target, model, version))

    async def ready(self, target: Target) -> bool:
        """The service's terminal condition succeeded and its URL answers ``/v2/health/ready``;
        an API failure or an unreachable service is simply not ready."""
        try:
            plane, info = await self._plane(target)
        except GpufanError:
            return False
        if not (info.ready and await plane.ready(target)):
            return False
        self._answered_at[info.name] = self._clock()
        return True

    async def aclose(self) -> None:
        """Close the API client's HTTP session; the data-plane session is not ours."""
        if self._client is not None:
            self._client.transport.close()
