"""The front door's data plane: OIP routes over the dispatcher.

``OipHandler(FrontDoor(...))`` is the whole front door as one framework-neutral handler; the local
server, AWS Lambda, Cloud Functions and Azure Functions are thin adapters over it. To a client it
looks like any OIP server; the extras travel in ``parameters``:

- request ``parameters`` (parsed once, by ``core.planning.limits.request_limits``, whose
  docstring says what each means): ``slo_ms``, ``deadline_ms``, ``max_attempts``, ``max_usd``,
  ``origin``, ``clouds``, ``regions``, ``objective``;
- response ``parameters``: ``gpufan_report`` — the placement report, which the wire serialises
  as a JSON *string* (OIP parameter values are scalars, and strict clients reject nested
  objects), plus the scalar summaries ``gpufan_shards``, ``gpufan_redispatched`` and
  ``gpufan_total_ms``.

Each answered request is also handed, as a typed ``Served`` value, to the front door's hooks
(history recording, a function's cost metric): nobody decodes the report back from JSON.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import core
from core.backends import Backend
from core.config import ModelSpec, Target
from core.dispatch.admission import Admission
from core.dispatch.dispatcher import Dispatcher, DispatchResult
from core.errors import ClientError, GpufanError, NoFeasibleTarget, NotFound, RetryableError
from core.planning.costmodel import CostModel
from core.planning.limits import PARAMETERS, request_limits
from core.wire.tensors import InferRequest, InferResponse

__all__ = ["FrontDoor", "Served", "ServedHook"]

log = logging.getLogger(__name__)
_METADATA_TTL_S = 60.0  # model metadata rarely changes; refresh now and then in case a model does


@dataclass(frozen=True, slots=True)
class Served:
    """One answered infer request: what the hooks receive and the response carries as its report.

    ``as_json`` is the report as JSON-able values; the wire serialises it once.
    """

    model: str
    version: str | None
    result: DispatchResult  # items, busy seconds, the estimated cost: see its properties
    total_ms: float

    def as_json(self) -> dict[str, Any]:
        return {**self.result.report(), "total_ms": round(self.total_ms, 3)}


ServedHook = Callable[[Served], None]  # runs on the request path: hand slow work to a thread


@dataclass(frozen=True, slots=True)
class _Cached:
    value: dict[str, Any]
    at: float


def _status(error: BaseException) -> int | None:
    """The HTTP status the target answered, when a target's 4xx caused ``error``."""
    cause = error.__cause__
    return cause.status if isinstance(cause, ClientError) else None


def _senseless_metadata(value: object) -> str | None:
    """Why model metadata cannot be believed, or None: it must name at least one input and one
    output, each with a name, a datatype and a shape (the OIP's tensor metadata)."""
    if not isinstance(value, dict):
        return "model metadata is not an object"
    for side in ("inputs", "outputs"):
        tensors = value.get(side)
        if not isinstance(tensors, list) or not tensors:
            return f"model metadata names no {side}"
        for t in tensors:
            ok = (
                isinstance(t, dict)
                and isinstance(t.get("name"), str)
                and isinstance(t.get("datatype"), str)
                and isinstance(t.get("shape"), list)
            )
            if not ok:
                return f"model metadata has a malformed entry in {side}: {t!r:.80}"
    return None


class FrontDoor:
    """A ``core.wire.oip.DataPlane`` that shards, fans out and merges through a ``Dispatcher``."""

    def __init__(
        self,
        models: Sequence[ModelSpec],
        targets: Sequence[Target],
        backends: Mapping[str, Backend],
        dispatcher: Dispatcher,
        cost_model: CostModel,
        *,
        hooks: Sequence[ServedHook] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cost_model = cost_model
        self._hooks = tuple(hooks)
        self._models = {m.name for m in models}
        self._targets = tuple(targets)
        self._backends = backends
        self._dispatcher = dispatcher
        self._clock = clock
        self._metadata: dict[tuple[str, str | None, str], _Cached] = {}
        self._registry = CollectorRegistry()
        self._requests = Counter(
            "gpufan_requests",
            "Front-door infer requests",
            ["model", "outcome"],
            registry=self._registry,
        )
        self._latency = Histogram(
            "gpufan_request_seconds",
            "Front-door infer latency",
            ["model"],
            registry=self._registry,
        )
        self._shards = Counter(
            "gpufan_shards", "Shards completed, by target", ["target"], registry=self._registry
        )
        self._redispatched = Counter(
            "gpufan_redispatched_shards",
            "Shard re-dispatches after a failure",
            ["model"],
            registry=self._registry,
        )
        # what most requests meet: no gpufan parameters, a model seen before
        self._default_limits = request_limits({}, cost_model.policy, cost_model.origin)
        self._ok: dict[str, tuple[Any, Any]] = {}  # model -> (requests ok, latency) children
        self._done: dict[str, Any] = {}  # target -> its shards-completed child
        policy = cost_model.policy
        self._admission = Admission(
            dispatcher.health,
            max_requests=policy.max_requests_in_flight,
            queue_per_slot=policy.max_queued_shards_per_slot,
            wait_s=policy.admission_wait_ms / 1000,
            registry=self._registry,
        )

    # -------------------------------------------------------------------------------- health

    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return any(self._dispatcher.health.allows(t.name) for t in self._targets)

    async def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "gpufan",
            "version": core.__version__,
            "extensions": ["binary_tensor_data", "model_configuration", "gpufan_placement_report"],
        }

    # -------------------------------------------------------------------------------- models

    def _check_model(self, model: str) -> list[Target]:
        if self._models and model not in self._models:
            raise NotFound(f"unknown model {model!r}; served: {', '.join(sorted(self._models))}")
        serving = [t for t in self._targets if t.serves(model)]
        if not serving:
            raise NoFeasibleTarget(f"no target serves model {model!r}")
        return serving

    async def _from_targets(self, kind: str, model: str, version: str | None) -> dict[str, Any]:
        """Ask healthy targets in turn; the first sensible answer wins and is cached.

        A peer is believed only when its answer makes sense: model metadata that names no
        inputs or outputs (KServe's empty answer for a model it serves through a custom
        predictor) is skipped and logged, never cached or passed on. A target without the
        optional ``/config`` route (404) is skipped too. When every target answered but none
        could say (no route, no inputs), the error is a 404 that names them rather than a 503:
        nothing is down, and asking again will not help.
        """
        key = (model, version, kind)
        cached = self._metadata.get(key)
        now = self._clock()
        if cached and now - cached.at < _METADATA_TTL_S:
            return cached.value
        errors, lacking, senseless = [], [], []
        for target in self._check_model(model):
            if not self._dispatcher.health.allows(target.name):
                continue
            backend = self._backends[target.backend]
            try:
                if kind == "metadata":
                    value = await backend.model_metadata(target, model, version)
                else:
                    value = await backend.model_config(target, model, version)
            except RetryableError as e:
                if kind == "config" and _status(e) == 404:
                    lacking.append(target.name)
                errors.append(f"{target.name}: {e}")
                continue
            problem = _senseless_metadata(value) if kind == "metadata" else None
            if problem is not None:
                log.warning("model %r: %s's metadata skipped: %s", model, target.name, problem)
                errors.append(f"{target.name}: {problem}")
                senseless.append(target.name)
                continue
            self._metadata[key] = _Cached(value, now)
            return value
        if lacking and len(lacking) == len(errors):
            raise NotFound(
                f"model {model!r}: no target has a model configuration route "
                f"(404 from {', '.join(lacking)})"
            )
        if senseless and len(senseless) == len(errors):  # they answered; none says what it is
            raise NotFound(f"model {model!r}: no target describes it ({'; '.join(errors)})")
        raise NoFeasibleTarget(
            f"no healthy target answered for model {model!r}: {'; '.join(errors) or 'none healthy'}"
        )

    async def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        return await self._from_targets("metadata", model, version)

    async def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        return await self._from_targets("config", model, version)

    async def model_ready(self, model: str, version: str | None) -> bool:
        """Whether a healthy target answers for the model (unknown model: 404)."""
        self._check_model(model)
        try:
            await self.model_metadata(model, version)
        except NoFeasibleTarget:
            return False
        except NotFound:  # targets answered, only without describing the model: it is served
            return True
        return True

    # -------------------------------------------------------------------------------- infer

    def admit(self, model: str) -> AbstractAsyncContextManager[None]:
        """Admission (``core.dispatch.admission``): shed at the door when the model's targets
        have a full queue or too many requests are in flight (event jobs are not gated)."""
        return self._admission.admit(model)

    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        self._check_model(model)
        cost_model = self._cost_model
        params = request.parameters
        limits = (
            request_limits(params, cost_model.policy, cost_model.origin)
            if params and not params.keys().isdisjoint(PARAMETERS)
            else self._default_limits
        )
        started = time.perf_counter()
        try:
            result = await self._dispatcher.dispatch(
                model, version, request, limits=limits, request_id=request.id
            )
        except GpufanError as e:
            self._requests.labels(model, type(e).__name__).inc()
            if isinstance(e, NoFeasibleTarget) and self._benched(model):
                e.retry_after_s = math.ceil(cost_model.policy.breaker_cooldown_s)
            raise
        total_ms = (time.perf_counter() - started) * 1000
        ok = self._ok.get(model)
        if ok is None:  # labels() validates and locks each call: once per model
            ok = self._ok[model] = (self._requests.labels(model, "ok"), self._latency.labels(model))
        ok[0].inc()
        ok[1].observe(total_ms / 1000)
        now = self._clock()
        for shard in result.shards:
            done = self._done.get(shard.target)
            if done is None:
                done = self._done[shard.target] = self._shards.labels(shard.target)
            done.inc()
            last = shard.attempts[-1]
            cost_model.observe(model, shard.target, shard.items, last.ms / 1000, now=now)
        if result.redispatched:
            self._redispatched.labels(model).inc(result.redispatched)
        served = Served(model, version, result, total_ms)
        for hook in self._hooks:
            try:
                hook(served)
            except Exception:  # a hook's failure is its own: the answer is already computed
                log.exception("front-door hook %r failed", hook)
        return InferResponse(
            model_name=model,
            model_version=version,
            id=request.id,
            outputs=result.outputs,
            parameters={
                "gpufan_shards": len(result.shards),
                "gpufan_redispatched": result.redispatched,
                "gpufan_total_ms": round(total_ms, 3),
            },
            report=served,
            written=result.written,
        )

    def _benched(self, model: str) -> bool:
        """Whether some target serving ``model`` is held back by its breaker just now."""
        health = self._dispatcher.health
        return any(t.serves(model) and not health.allows(t.name) for t in self._targets)

    def metrics(self) -> tuple[bytes, str]:
        return generate_latest(
            self._registry
        ) + self._dispatcher.health.exposition(), CONTENT_TYPE_LATEST
