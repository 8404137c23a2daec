"""The one protocol every way of running a shard implements, and its typed outcomes.

HTTP-style backends (local, http, cloudrun, aca, aci) send shards concurrently, each under a slot
of the target's concurrency limit; ``batch`` stages them and submits one array job. Either way the
dispatcher sees the same thing: one ``ShardOutcome`` per shard, yielded as each finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import aiohttp

from core.config import Target
from core.errors import ClientError, GpufanError, TargetUnavailable
from core.planning.shards import Shard
from core.wire.h1 import H1Pool, H1Reply, Patience
from core.wire.tensors import InferResponse, RequestedOutput, Tensor, WireBody

__all__ = [
    "Backend",
    "BackendContext",
    "Relaying",
    "ShardFailed",
    "ShardJob",
    "ShardOk",
    "ShardOutcome",
    "WorkerTelemetry",
    "each_completed",
    "target_fault",
]


@dataclass(frozen=True, slots=True)
class ShardJob:
    """What every shard of one dispatch shares."""

    model: str
    version: str | None
    outputs: tuple[RequestedOutput, ...] | None
    timeout_s: float
    slots: asyncio.Semaphore  # the target's concurrency limit, shared by all requests


@dataclass(frozen=True, slots=True)
class WorkerTelemetry:
    """What a worker reports with every response (``parameters`` of the OIP response)."""

    queue_depth: int | None = None
    utilization: float | None = None  # 0..1, GPU where NVML sees one, else the worker's busy share
    items_per_s: float | None = None

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> WorkerTelemetry:
        """Telemetry from response parameters; a missing or non-numeric value is unknown."""

        def number(key: str) -> float | None:
            value = params.get(key)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            return value if ok else None

        depth = number("queue_depth")
        return cls(
            queue_depth=None if depth is None else int(depth),
            utilization=number("utilization"),
            items_per_s=number("items_per_s"),
        )


@dataclass(frozen=True, slots=True)
class ShardOk:
    shard: Shard
    target: str
    outputs: tuple[Tensor, ...]
    elapsed_s: float
    telemetry: WorkerTelemetry = field(default_factory=WorkerTelemetry)
    cold_start: bool = False

    @classmethod
    def answered(
        cls, shard: Shard, target: str, result: InferResponse, elapsed_s: float
    ) -> ShardOk:
        """An OIP server's answer as the shard's outcome, with the telemetry and cold-start
        flag its ``parameters`` carry."""
        params = result.parameters if isinstance(result.parameters, Mapping) else {}
        return cls(
            shard,
            target,
            result.outputs,
            elapsed_s,
            WorkerTelemetry.of(params),
            cold_start=params.get("cold_start") is True,
        )


@dataclass(frozen=True, slots=True)
class ShardFailed:
    shard: Shard
    target: str
    error: GpufanError
    elapsed_s: float


ShardOutcome = ShardOk | ShardFailed


# A target's 401/403/404 says the *target* is misconfigured (wrong token, model not deployed
# there), not that the caller erred: re-dispatch elsewhere and let the breaker bench it.
_TARGET_FAULTS = frozenset({401, 403, 404})


def target_fault(target: Target, e: GpufanError) -> GpufanError:
    """``e`` as the front door should see it: a target's 401/403/404 becomes TargetUnavailable
    (the shard may run elsewhere); any other error stays as it is (a 400 is the caller's)."""
    if isinstance(e, ClientError) and e.status in _TARGET_FAULTS:
        unavailable = TargetUnavailable(f"{target.name} answered {e.status}: {e}")
        unavailable.__cause__ = e
        return unavailable
    return e


async def each_completed(
    tasks: Sequence[asyncio.Task[ShardOutcome]],
) -> AsyncIterator[ShardOutcome]:
    """The tasks' outcomes in completion order; closing or cancelling the iterator cancels
    those still in flight (a backend's ``run`` over one request per shard)."""
    try:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class BackendContext:
    """What backends may need to be built: the pooled session and resolved secrets."""

    session: aiohttp.ClientSession
    tokens: Mapping[str, str | None] = field(default_factory=dict)  # target name -> bearer token
    local_endpoints: Mapping[str, str] = field(default_factory=dict)
    local_token: str | None = None
    h1: H1Pool | None = None  # the relay's lean client (``core.dispatch.relay``); None: no relay


@runtime_checkable
class Backend(Protocol):
    """A way of running shards on a kind of target."""

    name: str

    @classmethod
    def create(cls, ctx: BackendContext) -> Backend:
        """Build the backend from the front door's shared context (one instance per process);
        cloud SDK clients come from each SDK's standard credential chain, created lazily."""
        ...

    def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        """Yield exactly one outcome per shard, in completion order; never raise for a shard's
        failure (yield ``ShardFailed``), so one bad shard cannot hide the others."""
        ...

    async def model_metadata(
        self, target: Target, model: str, version: str | None
    ) -> dict[str, Any]:
        """The model's OIP metadata as the target reports it."""
        ...

    async def model_config(self, target: Target, model: str, version: str | None) -> dict[str, Any]:
        """Triton's model config as the target reports it."""
        ...

    async def ready(self, target: Target) -> bool: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Relaying(Protocol):
    """A backend that can pass a REST request to a target as it arrived (an OIP target reached
    over plain HTTP): the one-shard relay's way through (``core.dispatch.relay``)."""

    def relays(self, target: Target) -> bool:
        """Whether ``relay`` can reach ``target``."""
        ...

    async def relay(
        self,
        target: Target,
        model: str,
        version: str | None,
        wire: WireBody,
        timeout_s: float,
        patience: Patience | None,
    ) -> H1Reply:
        """POST ``wire`` to the target's infer route; the reply as it came (any status).

        Raises:
            TargetUnavailable, TargetTimeout: the target could not be reached or was too slow.
            Abandoned: ``patience`` gave up on the call.
        """
        ...
