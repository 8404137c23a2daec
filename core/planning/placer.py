"""Which target runs which shard: the seam the cost model replaces.

The dispatcher hands in the shards and the fleet's loads (``FleetLoads``), and gets back a
``Placement``: ``{target name: [shards]}`` and why. Any callable with the ``Placer`` signature can
stand in for ``place``; ``core.planning.costplacer.CostPlacer`` is the cost model. The rule here is
the simplest useful one, for when no cost model is configured:

- only targets that serve the model and whose breaker lets traffic through;
- the cheapest (``usd_per_hour``) first, ties to the least loaded, then the least utilised, where
  load = (shards in flight + shards assigned by this call) / max_concurrency;
- a target at load >= 1 takes more only when every candidate is saturated (then the least loaded);
- targets in ``exclude`` (where a shard already failed) only when no other target is healthy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from core.errors import NoFeasibleTarget
from core.planning.limits import Constraints
from core.planning.loads import Candidate, FleetLoads
from core.planning.shards import Shard

__all__ = ["Placement", "Placer", "Preparing", "feasible", "place", "place_candidates"]


@dataclass(frozen=True, slots=True)
class Placement:
    """Shards per target, and a JSON-able explanation of the choice (empty if there is none)."""

    groups: dict[str, list[Shard]]
    explanation: dict[str, Any] = field(default_factory=dict)


class Placer(Protocol):
    """Assign shards to targets; raise ``NoFeasibleTarget`` when no target may run them.

    ``constraints`` carries the request's origin, SLO and limits, for rules that estimate cost and
    latency (the cost model); every shard must appear in exactly one returned group.
    """

    def __call__(
        self,
        model: str,
        shards: Sequence[Shard],
        fleet: FleetLoads,
        *,
        exclude: AbstractSet[str] = frozenset(),
        constraints: Constraints | None = None,
    ) -> Placement: ...


@runtime_checkable
class Preparing(Protocol):
    """A placer with slow work it can hand out to run before placement, off the event loop."""

    def ahead(self, model: str, shards: Sequence[Shard]) -> Callable[[], None] | None: ...


def feasible(model: str, candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates that serve ``model`` and whose breaker lets a shard through now."""
    return [c for c in candidates if c.target.serves(model) and c.health.allows]


def place(
    model: str,
    shards: Sequence[Shard],
    fleet: FleetLoads,
    *,
    exclude: AbstractSet[str] = frozenset(),
    constraints: Constraints | None = None,  # the seam carries them; this price rule ignores them
) -> Placement:
    """The ``Placer`` for fleets without a cost model: ``place_candidates`` over live health."""
    return Placement(place_candidates(model, shards, fleet.candidates(), exclude=exclude))


def place_candidates(
    model: str,
    shards: Sequence[Shard],
    candidates: Sequence[Candidate],
    *,
    exclude: AbstractSet[str] = frozenset(),
) -> dict[str, list[Shard]]:
    """Cheapest unsaturated target first, one shard at a time (see the module docstring). Pure.

    Raises:
        NoFeasibleTarget: no target serves ``model`` with its breaker closed; the message names
            every target and why it was ruled out.
    """
    pool = feasible(model, candidates)
    if not pool:
        raise NoFeasibleTarget(_why_none(model, candidates))
    pool = [c for c in pool if c.target.name not in exclude] or pool
    assigned = {c.target.name: 0 for c in pool}

    def load(c: Candidate) -> float:
        capacity = 1 if c.health.probe_only else c.health.max_concurrency
        return (c.health.in_flight + assigned[c.target.name]) / capacity

    def busy(c: Candidate) -> float:
        return c.health.utilization or 0.0

    plan: dict[str, list[Shard]] = {}
    for shard in shards:
        roomy = [c for c in pool if load(c) < 1]
        if roomy:
            best = min(
                roomy, key=lambda c: (c.target.usd_per_hour, load(c), busy(c), c.target.name)
            )
        else:
            best = min(pool, key=lambda c: (load(c), c.target.usd_per_hour, busy(c), c.target.name))
        assigned[best.target.name] += 1
        plan.setdefault(best.target.name, []).append(shard)
    return plan


def _why_none(model: str, candidates: Sequence[Candidate]) -> str:
    if not candidates:
        return f"no target can run model {model!r}: no targets are configured"
    states = []
    for c in candidates:
        if not c.target.serves(model):
            states.append(f"{c.target.name}: does not serve it")
        elif c.health.probe_only:
            states.append(f"{c.target.name}: breaker half-open, probe in flight")
        else:
            states.append(
                f"{c.target.name}: breaker {c.health.breaker} after "
                f"{c.health.consecutive_failures} consecutive failures"
            )
    return f"no healthy target can run model {model!r} ({'; '.join(states)})"
