"""Warm capacity per target: the cheapest mix that covers the forecast's upper quantile.

Pure: no I/O, no clock. A ``Unit`` is one target as the planner sees it: one instance (replica,
Batch child, container group) runs ``items_per_s`` of the model and costs ``usd_per_hour``, both
from the cost model (``CostModel.target_facts(model)[i].items_per_s`` and ``CostModel.price_of``).
``plan_capacity`` decides how many instances each unit keeps warm. The rules, in order:

1. **Lead = cold start.** A unit whose instances take ``cold_start_s`` to answer must be started
   that long before the load arrives, so the plan covers every interval up to the one that starts
   after ``now + cold_start_s`` of the slowest unit in the fleet: ``required`` is the largest upper
   quantile over intervals ``0 .. ceil(max cold start / interval)``. Each allocation reports its
   own ``lead_s``; a one-unit fleet sees a rise exactly ``cold_start_s`` ahead.
2. **Utilisation target.** An instance counts for ``utilisation`` (0.8) of its throughput: the rest
   is the queueing room that keeps batched sub-second work inside the SLO when arrivals bunch.
3. **On-demand floor.** At least ``on_demand_floor`` (30%) of ``required`` is covered by capacity
   that cannot be reclaimed (on_demand, serverless, owned), cheapest first. A reclaim of a whole
   spot pool then leaves 30% of the load served at once while replacements and serverless
   instances start, instead of none. Burst capacity (``burst_items_per_s``: serverless units
   that scale out by themselves) counts toward it: it takes over a reclaimed pool within its
   cold start, so only the floor it cannot carry is kept warm.
4. **Spot reserve (N+1).** When the plan uses spot, it covers ``required`` plus one spot instance
   of the largest kind chosen, so one reclaim - the common case - never drops capacity below the
   upper quantile while its replacement starts.
5. **Cheapest fill.** The rest goes to units in order of price per item/s (greedy: within one
   instance of the cheapest mix for each unit), within each unit's ``max_instances`` and each
   cloud's GPU quota. What limits leave uncovered is reported as ``shortfall``, never hidden.
6. **Small loads cost no more than static.** When one instance of a non-spot unit covers
   ``required`` on its own and costs less than the mix above (whose floor and spare are a whole
   instance each however small the load), the plan is that one instance: nothing to reclaim, so
   no spare is needed.
7. **Scale to zero.** When ``required`` is about zero (below ``idle_items_per_s``) and some
   scale-to-zero unit's cold start fits the SLO, every unit goes to zero: that unit absorbs the
   first request with a cold start. Otherwise one instance of the cheapest non-spot unit stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

__all__ = ["Allocation", "CapacityPlan", "PlanPolicy", "Unit", "plan_capacity", "window_demand"]

_NON_SPOT = ("on_demand", "serverless", "owned")


@dataclass(frozen=True, slots=True)
class Unit:
    """One target as the planner sees it; figures are per instance."""

    name: str
    cloud: str
    pricing: str  # on_demand | spot | serverless | owned
    items_per_s: float
    usd_per_hour: float
    cold_start_s: float = 0.0
    scale_to_zero: bool = False
    max_instances: int = 1000
    gpus: int = 1  # per instance, counted against the cloud's quota
    idle_hold_s: float | None = None  # serverless: billed this long after its last use

    @property
    def spot(self) -> bool:
        return self.pricing not in _NON_SPOT

    @property
    def usd_per_item_s(self) -> float:
        """Price of one item/s of sustained capacity per hour: what the fill sorts by."""
        return self.usd_per_hour / self.items_per_s if self.items_per_s > 0 else math.inf


@dataclass(frozen=True, slots=True)
class PlanPolicy:
    """The planner's knobs (module docstring, rules 1-7). ``utilisation`` is the share of an
    instance's throughput the plan counts on: the queueing limit, past which per-second arrival
    noise starts bursts; headroom for forecast error is sized apart (``headroom``)."""

    interval_s: float = 60.0
    utilisation: float = 0.8
    on_demand_floor: float = 0.3
    spot_reserve: bool = True
    slo_s: float = 1.0
    idle_items_per_s: float = 1e-3
    quota_gpus: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not 0 < self.utilisation <= 1:
            raise ValueError(f"utilisation must be in (0, 1], got {self.utilisation}")
        if not 0 <= self.on_demand_floor <= 1:
            raise ValueError(f"on_demand_floor must be in [0, 1], got {self.on_demand_floor}")
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one unit keeps warm, and why."""

    name: str
    cloud: str
    pricing: str
    instances: int
    lead_s: float  # start instances this long before the load they serve: the cold start
    capacity_items_per_s: float  # usable: instances x items_per_s x utilisation
    usd_per_hour: float


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    """A whole fleet's warm capacity for the next interval(s)."""

    allocations: tuple[Allocation, ...]
    required_items_per_s: float  # the upper quantile over the lead window
    reserve_items_per_s: float  # one spot instance, when spot is used (rule 4)
    capacity_items_per_s: float  # usable capacity planned
    non_spot_items_per_s: float
    shortfall_items_per_s: float  # what limits and quotas leave uncovered
    usd_per_hour: float
    reason: str
    expected_attainment: float | None = None  # predicted share inside the SLO, when modelled

    @property
    def instances(self) -> dict[str, int]:
        return {a.name: a.instances for a in self.allocations}


def window_demand(upper: Sequence[float] | np.ndarray, lead_s: float, interval_s: float) -> float:
    """The largest upper quantile over intervals ``0 .. ceil(lead_s / interval_s)``; a forecast
    shorter than that is extended with its last value."""
    arr = np.asarray(upper, float)
    if arr.size == 0:
        return 0.0
    k = math.ceil(lead_s / interval_s)
    return float(np.max(arr[: k + 1])) if k < arr.size else float(np.max(arr))


class _Fill:
    """Instances per unit under the limits; usable capacity counted as it grows."""

    def __init__(self, units: Sequence[Unit], policy: PlanPolicy) -> None:
        self.units, self.policy = units, policy
        self.n = {u.name: 0 for u in units}

    def usable(self, u: Unit) -> float:
        return u.items_per_s * self.policy.utilisation

    def room(self, u: Unit) -> int:
        room = u.max_instances - self.n[u.name]
        quota = self.policy.quota_gpus.get(u.cloud)
        if quota is not None:
            used = sum(self.n[v.name] * v.gpus for v in self.units if v.cloud == u.cloud)
            room = min(room, (quota - used) // max(u.gpus, 1))
        return max(room, 0)

    def capacity(self, non_spot_only: bool = False) -> float:
        return sum(
            self.n[u.name] * self.usable(u) for u in self.units if not (non_spot_only and u.spot)
        )

    def usd_per_hour(self) -> float:
        return sum(self.n[u.name] * u.usd_per_hour for u in self.units)

    def top_up(self, candidates: Sequence[Unit], goal: float, non_spot_only: bool = False) -> None:
        """Add instances, cheapest per item/s first, until ``capacity(...) >= goal``."""
        for u in sorted(candidates, key=lambda u: (u.usd_per_item_s, u.name)):
            missing = goal - self.capacity(non_spot_only)
            if missing <= 1e-9:
                return
            if self.usable(u) <= 0:
                continue
            self.n[u.name] += min(math.ceil(missing / self.usable(u) - 1e-9), self.room(u))


def _single_instance(live: Sequence[Unit], required: float, fill: _Fill) -> Unit | None:
    """The cheapest non-spot unit one instance of which covers ``required``, if any."""
    able = [u for u in live if not u.spot and fill.usable(u) >= required and u.max_instances >= 1]
    return min(able, key=lambda u: (u.usd_per_hour, u.name), default=None)


def plan_capacity(
    upper: Sequence[float] | np.ndarray,
    units: Sequence[Unit],
    policy: PlanPolicy,
    attainment: Callable[[float], float] | None = None,
    burst_items_per_s: float = 0.0,
) -> CapacityPlan:
    """Warm instances per unit for the forecast ``upper`` (items/s per interval, interval ``k``
    starting ``k`` intervals from now); the rules are in the module docstring. ``attainment``
    (``headroom.Headroom.attainment``) says what share of requests the planned usable capacity
    is predicted to serve inside the SLO; the plan reports it. ``burst_items_per_s`` is the burst
    capacity (``headroom.burst_capacity``) that would take over a reclaimed spot pool within its
    cold start: it counts toward the on-demand floor (rule 3).

    Raises:
        ValueError: two units share a name.
    """
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError(f"unit names must be unique: {names}")
    live = [u for u in units if u.max_instances > 0 and u.items_per_s > 0]
    lead = max((u.cold_start_s for u in live), default=0.0)
    required = window_demand(upper, lead, policy.interval_s)
    fill = _Fill(units, policy)
    reserve, reason = 0.0, "cheapest mix over the upper quantile"
    if required <= policy.idle_items_per_s:
        absorbers = [u for u in live if u.scale_to_zero and u.cold_start_s <= policy.slo_s]
        if absorbers:
            reason = f"idle: scale to zero; {absorbers[0].name} absorbs a first request cold"
        else:
            keep = sorted(live, key=lambda u: (u.spot, u.usd_per_hour, u.name))[:1]
            fill.top_up(keep, 1e-6)
            reason = "idle, but no scale-to-zero unit starts within the SLO: one instance stays"
    else:
        non_spot = [u for u in live if not u.spot]
        floor = max(policy.on_demand_floor * required - burst_items_per_s, 0.0)
        fill.top_up(non_spot, floor, non_spot_only=True)
        fill.top_up(live, required)
        spot_used = [u for u in live if u.spot and fill.n[u.name] > 0]
        if policy.spot_reserve and spot_used:
            reserve = max(fill.usable(u) for u in spot_used)
            fill.top_up(live, required + reserve)
        single = _single_instance(live, required, fill)
        if single is not None and single.usd_per_hour < fill.usd_per_hour():
            fill, reserve = _Fill(units, policy), 0.0
            fill.top_up([single], required, non_spot_only=True)
            reason = f"small load: one {single.name} instance covers it for less than the mix"
    capacity = fill.capacity()
    allocations = tuple(
        Allocation(
            u.name, u.cloud, u.pricing, fill.n[u.name], u.cold_start_s,
            fill.n[u.name] * fill.usable(u), fill.n[u.name] * u.usd_per_hour,
        )
        for u in units
    )  # fmt: skip
    return CapacityPlan(
        allocations=allocations,
        required_items_per_s=required,
        reserve_items_per_s=reserve,
        capacity_items_per_s=capacity,
        non_spot_items_per_s=fill.capacity(non_spot_only=True),
        shortfall_items_per_s=max(0.0, required + reserve - capacity),
        usd_per_hour=sum(a.usd_per_hour for a in allocations),
        reason=reason,
        expected_attainment=None if attainment is None else attainment(capacity),
    )
