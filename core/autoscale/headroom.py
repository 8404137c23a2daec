"""Headroom sized for the SLO: the least capacity whose predicted share of requests inside the SLO
meets the target.

Pure: numbers in, numbers out. The load one lead ahead is modelled as the forecast mean plus one
of the forecaster's own recent errors at that lead (``Forecast.errors``), each equally likely:
the error distribution, spikes included, rather than a fixed utilisation. Against usable
capacity ``C`` (items/s, after ``PlanPolicy.utilisation``, the queueing limit) a load ``L`` is
served as a fluid FIFO queue:

- ``L <= C``: every request is inside the SLO.
- ``L > C``: the queue grows by ``x = L - C`` items a second while burst instances (serverless
  units, up to their maximum: ``B`` items/s) start, which takes ``burst_start_s``. A request is
  late once the queue holds more than ``slack_s`` seconds of work (``slack_s x C`` items), which
  it reaches after ``slack_s C / x`` seconds: the requests of the rest of the start are late.
  The burst then drains the queue at ``C + B - L`` items a second, and requests stay late until
  it holds less than ``slack_s`` seconds of work again. When ``L >= C + B`` the queue never
  drains: every request after the start is late.

The share inside the SLO is request-weighted (``sum L ok / sum L``): an error at high load counts
for more requests. ``required`` is the smallest ``C`` at which it reaches the target (a target no
capacity reaches gets the largest load seen) - or, given what warm and burst capacity cost
(``Costs``), the cheapest ``C`` at or above it: a burst instance is paid for as long as the
platform keeps it after its last use (Cloud Run up to 15 minutes), so when the load often
exceeds ``C`` a little more warm capacity costs less than the bursts it saves. Expected cost per
hour of capacity ``C``: ``C x warm`` plus, for the loads above it, the burst instances they start
(``ceil(excess / per instance)``) times the share of time they are held (``min(1, p x hold /
interval)`` for a share ``p`` of intervals over ``C``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.autoscale.capacity import CapacityPlan, PlanPolicy, Unit, plan_capacity
from core.autoscale.forecast import Forecast

__all__ = ["Costs", "Headroom", "burst_capacity", "costs_for", "plan_for"]

_CANDIDATES = 41  # capacities tried above the least that meets the target: load quantiles


def _bursting(units: Sequence[Unit]) -> list[Unit]:
    """The units that scale out by themselves: serverless ones allowed an instance."""
    return [u for u in units if u.pricing == "serverless" and u.max_instances > 0]


def burst_capacity(units: Sequence[Unit], utilisation: float) -> tuple[float, float]:
    """Usable items/s of the units that scale out by themselves (serverless, up to their
    maximum), and the slowest of their cold starts."""
    fast = _bursting(units)
    room = sum(u.max_instances * u.items_per_s * utilisation for u in fast)
    return room, max((u.cold_start_s for u in fast), default=0.0)


@dataclass(frozen=True, slots=True)
class Costs:
    """What capacity costs, for the cheapest headroom.

    Attributes:
        warm_tiers: the warm units that are not serverless, cheapest per item/s first, as
            (usable items/s they can reach, USD per hour of one usable item/s): capacity past
            the cheapest unit's limit costs the next one's price.
        burst_usd_per_hour, burst_items_per_s: one burst instance's price and usable throughput.
        hold_s: how long a burst instance stays billed after its last use.
    """

    warm_tiers: tuple[tuple[float, float], ...]
    burst_usd_per_hour: float
    burst_items_per_s: float
    hold_s: float

    def warm_usd_per_hour(self, capacity: np.ndarray) -> np.ndarray:
        """USD per hour of each usable warm capacity, filling the tiers in order (the last
        tier's price beyond every limit)."""
        cost, below = np.zeros_like(capacity), 0.0
        for i, (reach, price) in enumerate(self.warm_tiers):
            top = math.inf if i == len(self.warm_tiers) - 1 else below + reach
            cost += np.clip(capacity - below, 0.0, top - below) * price
            below = top
        return cost


def costs_for(units: Sequence[Unit], utilisation: float, hold_s: float) -> Costs | None:
    """``Costs`` from the warm units' price ladder and the cheapest burst unit (held for its own
    ``idle_hold_s``, else ``hold_s``); None without both."""
    burst = _bursting(units)
    warm = [u for u in units if u.pricing != "serverless" and u.max_instances > 0]
    if not warm or not burst:
        return None
    tiers = tuple(
        (u.max_instances * u.items_per_s * utilisation, u.usd_per_item_s / utilisation)
        for u in sorted(warm, key=lambda u: (u.usd_per_item_s, u.name))
    )
    b = min(burst, key=lambda u: u.usd_per_item_s)
    hold = hold_s if b.idle_hold_s is None else b.idle_hold_s
    return Costs(tiers, b.usd_per_hour, b.items_per_s * utilisation, hold)


@dataclass(frozen=True)
class Headroom:
    """The load distribution one lead ahead, and the attainment capacity buys against it.

    Attributes:
        loads: possible loads (items/s): forecast mean plus each recent error, at least zero.
        burst_items_per_s, burst_start_s: ``burst_capacity``.
        interval_s: the decision interval a late start is a share of.
        slack_s: how long a request may queue: the SLO less its own service time.
    """

    loads: np.ndarray
    burst_items_per_s: float
    burst_start_s: float
    interval_s: float
    slack_s: float

    @classmethod
    def of(
        cls,
        mean: float,
        errors: np.ndarray,
        burst: tuple[float, float],
        interval_s: float,
        slack_s: float,
    ) -> Headroom:
        loads = np.sort(np.maximum(mean + np.asarray(errors, float), 0.0))
        return cls(loads, burst[0], burst[1], interval_s, max(slack_s, 0.0))

    def attainment(self, capacity: float) -> float:
        """Predicted share of requests inside the SLO with ``capacity`` usable items/s."""
        total = float(self.loads.sum())
        if total <= 0:
            return 1.0
        loads, start = self.loads, min(self.burst_start_s, self.interval_s)
        excess = np.maximum(loads - capacity, 0.0)
        over = excess > 0
        x = np.where(over, excess, 1.0)
        late_start = np.maximum(start - self.slack_s * capacity / x, 0.0)
        full = capacity + self.burst_items_per_s
        spare = full - loads  # how fast the burst drains the queue the start left
        drain = np.maximum(excess * start - self.slack_s * full, 0.0) / np.where(
            spare > 0, spare, 1.0
        )
        late = np.where(
            spare > 0, late_start + np.minimum(drain, self.interval_s - start), self.interval_s
        )
        on_time = np.where(spare > 0, self.interval_s - late, start - late_start)
        ok = np.where(over, on_time / self.interval_s, 1.0)
        return float((loads * ok).sum() / total)

    def least(self, target: float) -> float:
        """The least capacity (one of the possible loads, or zero) whose attainment meets
        ``target``; the largest load when none below it does."""
        if not len(self.loads) or self.attainment(0.0) >= target:
            return 0.0
        lo, hi = 0, len(self.loads) - 1  # attainment grows with capacity: bisect the loads
        while lo < hi:
            mid = (lo + hi) // 2
            if self.attainment(float(self.loads[mid])) >= target:
                hi = mid
            else:
                lo = mid + 1
        return float(self.loads[lo])

    def usd_per_hour(self, capacity: np.ndarray, costs: Costs) -> np.ndarray:
        """Expected USD per hour of each capacity: warm, plus the bursts of the loads above it."""
        excess = np.maximum(self.loads[None, :] - capacity[:, None], 0.0)
        instances = np.ceil(excess / costs.burst_items_per_s - 1e-9).mean(axis=1)
        p = (excess > 0).mean(axis=1)
        held = np.minimum(1.0, p * costs.hold_s / self.interval_s)
        per_event = np.divide(instances, p, out=np.zeros_like(instances), where=p > 0)
        cost: np.ndarray = costs.warm_usd_per_hour(capacity) + (
            per_event * held * costs.burst_usd_per_hour
        )
        return cost

    def required(self, target: float, costs: Costs | None = None) -> float:
        """The capacity to keep warm: the least that meets ``target``, or with ``costs`` the
        cheapest at or above it (module docstring)."""
        least = self.least(target)
        if costs is None or not len(self.loads):
            return least
        above = self.loads[self.loads >= least]
        options = np.unique(
            np.concatenate([[least], np.quantile(above, np.linspace(0, 1, _CANDIDATES))])
        )
        return float(options[int(np.argmin(self.usd_per_hour(options, costs)))])


def plan_for(
    forecast: Forecast,
    units: Sequence[Unit],
    policy: PlanPolicy,
    *,
    target: float,
    slack_s: float,
    hold_s: float,
    fixed_items_per_s: float = 0.0,
) -> CapacityPlan:
    """The plan a forecast buys: SLO-sized headroom from its errors (module docstring), or its
    upper quantile while it has too few; ``fixed_items_per_s`` of capacity the plan cannot
    change (always-on targets) is subtracted first.

    The burst capacity counts toward the on-demand floor: serverless instances take over a
    reclaimed spot pool within their cold start.
    """
    burst = burst_capacity(units, policy.utilisation)
    if not len(forecast.errors):
        upper = np.maximum(forecast.upper - fixed_items_per_s, 0.0)
        return plan_capacity(upper, units, policy, burst_items_per_s=burst[0])
    mean, errors = _tightest(forecast)
    room = Headroom.of(mean - fixed_items_per_s, errors, burst, policy.interval_s, slack_s)
    required = room.required(target, costs_for(units, policy.utilisation, hold_s))
    return plan_capacity([required], units, policy, room.attainment, burst[0])


def _tightest(forecast: Forecast) -> tuple[float, np.ndarray]:
    """The interval of the lead window that needs the most capacity - its mean plus the upper
    quantile of the errors at its own horizon (nearer intervals are known better) - as its mean
    and those errors; the window's largest mean with the lead's errors when the forecast has no
    errors per horizon."""
    by = forecast.errors_by_horizon
    if len(by) != len(forecast.mean):
        return float(np.max(forecast.mean)), forecast.errors
    need = [
        float(m) + float(np.quantile(e, forecast.quantile))
        for m, e in zip(forecast.mean, by, strict=True)
    ]
    j = int(np.argmax(need))
    return float(forecast.mean[j]), by[j]
