"""Apply a capacity plan on each cloud: one reconciler per backend kind.

Every reconciler reads the current state first and sends nothing when it already matches
(idempotent: a second pass with no change sends only reads). ``reconcile`` adds the rules that are
the same for all: a per-target rate limit (at most one change per ``min_change_interval_s``, clock
injected, last changes kept in the history store so the limit holds across processes) and a dry
run that reports the diff and sends nothing. Partial failure is a normal result: a target whose
API fails becomes a ``failed`` change, and the others are still reconciled.

What "instances" means per backend, and what is set:

- ``cloudrun``: service-level ``minInstanceCount`` (Cloud Run Admin API v2, no new revision);
  ``maxInstanceCount`` is kept, and is the target's limit.
- ``aca``: ``template.scale.minReplicas`` (``maxReplicas`` kept, and the limit).
- ``aci``: a container group is one instance: 1 creates it (``options.create`` must allow it),
  0 deletes it.
- ``batch``: the job queue's first compute environment (or ``options.compute_environment``, where
  the Batch options accept it): ``minvCpus`` = instances x vCPUs per job (the job definition's
  VCPU requirement) and ``desiredvCpus`` raised to it. Batch accepts a new ``desiredvCpus`` only
  at or above the current one (UpdateComputeEnvironment API reference), so scaling down lowers
  ``minvCpus`` and lets Batch release idle instances itself; ``maxvCpus`` is the limit.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from core.config import Target
from core.errors import ConfigError, GpufanError, TargetUnavailable

__all__ = [
    "Change",
    "Current",
    "RateLimit",
    "Reconciler",
    "read_states",
    "reconcile",
    "reconcilers_for",
]

Action = Literal["unchanged", "applied", "would_apply", "rate_limited", "failed"]


@dataclass(frozen=True, slots=True)
class Current:
    """A target's warm capacity as its cloud reports it."""

    instances: int
    max_instances: int | None  # None: no limit reported
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the diff: what the plan wants of a target and what became of it."""

    target: str
    backend: str
    before: int | None
    after: int
    action: Action
    detail: str = ""


class Reconciler(Protocol):
    """Reads and sets one backend kind's warm capacity."""

    async def current(self, target: Target) -> Current: ...

    async def apply(self, target: Target, instances: int, current: Current) -> None: ...


class CloudRunReconciler:
    def __init__(self, backend: Any) -> None:
        self.backend = backend

    async def current(self, target: Target) -> Current:
        s = await self.backend.scaling(target)
        return Current(s.min_instances, s.max_instances, f"min {s.min_instances}")

    async def apply(self, target: Target, instances: int, current: Current) -> None:
        await self.backend.set_scaling(target, instances, current.max_instances)


class AcaReconciler:
    def __init__(self, backend: Any) -> None:
        self.backend = backend

    async def current(self, target: Target) -> Current:
        s = await self.backend.scaling(target)
        return Current(s.min_replicas, s.max_replicas, f"minReplicas {s.min_replicas}")

    async def apply(self, target: Target, instances: int, current: Current) -> None:
        await self.backend.set_scaling(target, instances, max(current.max_instances or 1, 1))


class AciReconciler:
    def __init__(self, backend: Any) -> None:
        self.backend = backend

    async def current(self, target: Target) -> Current:
        try:
            group = await self.backend.describe(target, fresh=True)
        except ConfigError as e:
            from azure.core.exceptions import ResourceNotFoundError

            if isinstance(e.__cause__, ResourceNotFoundError):
                return Current(0, 1, "no container group")
            raise
        return Current(1, 1, f"group {group.state}")

    async def apply(self, target: Target, instances: int, current: Current) -> None:
        if instances > 0:
            await self.backend.ensure(target)
        else:
            await self.backend.delete(target)


class BatchReconciler:
    """Compute environment vCPUs through boto3 (imported on first use)."""

    def __init__(self, session: Any | None = None) -> None:
        self._session = session
        self._clients: dict[tuple[str, str | None], Any] = {}

    def _client(self, target: Target) -> Any:
        from core.backends.batch import BatchOptions

        endpoint = BatchOptions.of(target).endpoint_url
        key = (target.region, endpoint)
        if key not in self._clients:
            if self._session is None:
                import boto3

                self._session = boto3.session.Session()
            self._clients[key] = self._session.client(
                "batch", region_name=target.region, endpoint_url=endpoint
            )
        return self._clients[key]

    def _environment(self, target: Target) -> tuple[str, dict[str, Any], int]:
        """(compute environment name, its computeResources, vCPUs per job)."""
        from core.backends.batch import BatchOptions

        opts, batch = BatchOptions.of(target), self._client(target)
        name = target.options.get("compute_environment")
        if name is None:
            queues = batch.describe_job_queues(jobQueues=[opts.job_queue])["jobQueues"]
            if not queues or not queues[0].get("computeEnvironmentOrder"):
                raise ConfigError(f"targets[{target.name}]: job queue {opts.job_queue!r} not found")
            order = sorted(queues[0]["computeEnvironmentOrder"], key=lambda o: o["order"])
            name = order[0]["computeEnvironment"]
        envs = batch.describe_compute_environments(computeEnvironments=[name])
        if not envs["computeEnvironments"]:
            raise ConfigError(f"targets[{target.name}]: compute environment {name!r} not found")
        env = envs["computeEnvironments"][0]
        defs = batch.describe_job_definitions(**opts.definition_filter)["jobDefinitions"]
        vcpus = 1
        for d in sorted(defs, key=lambda d: d.get("revision", 0))[-1:]:
            props = d.get("containerProperties", {})
            for r in props.get("resourceRequirements", []):
                if r["type"] == "VCPU":
                    vcpus = max(1, math.ceil(float(r["value"])))
        return env["computeEnvironmentName"], env.get("computeResources", {}), vcpus

    async def current(self, target: Target) -> Current:
        name, res, vcpus = await _aws(target, lambda: self._environment(target))
        return Current(
            res.get("minvCpus", 0) // vcpus,
            res.get("maxvCpus", 0) // vcpus,
            f"{name}: minvCpus {res.get('minvCpus', 0)}, {vcpus} vCPU/job",
        )

    async def apply(self, target: Target, instances: int, current: Current) -> None:
        def update() -> None:
            name, res, vcpus = self._environment(target)
            resources = {"minvCpus": instances * vcpus}
            if instances * vcpus > res.get("desiredvCpus", 0):
                resources["desiredvCpus"] = instances * vcpus
            self._client(target).update_compute_environment(
                computeEnvironment=name, computeResources=resources
            )

        await _aws(target, update)


async def _aws(target: Target, call: Callable[[], Any]) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return await asyncio.to_thread(call)
    except (BotoCoreError, ClientError) as e:
        raise TargetUnavailable(f"{target.name}: AWS Batch: {e}") from e


_FACTORIES: Mapping[str, Callable[[Any], Reconciler]] = {
    "cloudrun": CloudRunReconciler,
    "aca": AcaReconciler,
    "aci": AciReconciler,
    "batch": lambda backend: BatchReconciler(getattr(backend, "_session", None)),
}


def reconcilers_for(backends: Mapping[str, Any]) -> dict[str, Reconciler]:
    """A reconciler per backend that has warm capacity to set (local and http have none)."""
    return {name: _FACTORIES[name](b) for name, b in backends.items() if name in _FACTORIES}


class RateLimit:
    """At most one change per target per ``min_interval_s`` (``last``: epoch seconds)."""

    def __init__(
        self,
        min_interval_s: float,
        clock: Callable[[], float],
        last: Mapping[str, float] | None = None,
        on_change: Callable[[str, float], None] | None = None,
    ) -> None:
        self.min_interval_s, self._clock = min_interval_s, clock
        self.last = dict(last or {})
        self._on_change = on_change

    def wait_s(self, target: str) -> float:
        last = self.last.get(target)
        return 0.0 if last is None else max(0.0, last + self.min_interval_s - self._clock())

    def note(self, target: str) -> None:
        now = self._clock()
        self.last[target] = now
        if self._on_change is not None:
            self._on_change(target, now)


async def read_states(
    targets: Sequence[Target], reconcilers: Mapping[str, Reconciler]
) -> dict[str, Current | GpufanError]:
    """Every target's current capacity, read concurrently; an error is kept as the value."""

    async def one(t: Target) -> Current | GpufanError:
        try:
            return await reconcilers[t.backend].current(t)
        except GpufanError as e:
            return e

    found = await asyncio.gather(*(one(t) for t in targets))
    return {t.name: s for t, s in zip(targets, found, strict=True)}


async def reconcile(
    desired: Mapping[str, int],
    targets: Sequence[Target],
    reconcilers: Mapping[str, Reconciler],
    states: Mapping[str, Current | GpufanError],
    *,
    limit: RateLimit,
    dry_run: bool = False,
) -> list[Change]:
    """Bring each target in ``desired`` to its instance count (module docstring)."""
    changes = []
    for t in targets:
        if t.name not in desired:
            continue
        want, state = desired[t.name], states.get(t.name)
        if not isinstance(state, Current):
            changes.append(Change(t.name, t.backend, None, want, "failed", f"read: {state}"))
            continue
        if state.max_instances is not None:
            want = min(want, state.max_instances)
        row = Change(t.name, t.backend, state.instances, want, "unchanged", state.detail)
        if want == state.instances:
            changes.append(row)
            continue
        wait = limit.wait_s(t.name)
        held = f"rate limit: next change allowed in {wait:.0f} s" if wait > 0 else ""
        if dry_run:
            changes.append(_with(row, "would_apply", "; ".join(["dry run", *filter(None, [held])])))
            continue
        if held:
            changes.append(_with(row, "rate_limited", held))
            continue
        try:
            await reconcilers[t.backend].apply(t, want, state)
        except GpufanError as e:
            changes.append(_with(row, "failed", f"{type(e).__name__}: {e}"))
            continue
        limit.note(t.name)
        changes.append(_with(row, "applied", state.detail))
    return changes


def _with(row: Change, action: Action, detail: str) -> Change:
    return Change(row.target, row.backend, row.before, row.after, action, detail)
