"""Replay a request trace through forecast -> plan -> placement, against three baselines.

Pure: the trace, the fleet (``capacity.Unit``: per-instance throughput from the cost model, prices
from the bundled snapshot) and a seed in; costs, SLO attainment and time series out. Every
strategy sees the same per-second arrivals (drawn once from the seed) and the same physics.

Strategies:

- ``autoscaler`` (ours): Holt-Winters forecast (``forecast``), ``plan_capacity`` over its upper
  quantile each interval, instances started a cold start ahead; serverless units also burst.
- ``static-peak``: the cheapest on-demand unit (price per item/s) of one cloud, sized once for the
  trace's highest interval at the same utilisation target as the planner - the clairvoyant peak,
  which favours the baseline - and warm all day. Not clipped to the unit's ``max_instances``.
- ``reactive``: the same fleet and planner, fed the last interval's observed load instead of a
  forecast: no pre-warming, so every rise waits a cold start.
- ``spot-only``: the cheapest spot unit alone, our forecast, no on-demand floor, no N+1 reserve.

Modelling assumptions:

1. Arrivals: Poisson per second around the trace's interval rate; each request carries
   ``items_per_request`` items. Cost per million counts items (inferences).
2. Serving is a fluid FIFO queue per second. Capacity is ``max_utilisation`` (0.9) of the warm
   instances' throughput: above that, batched GPU serving queues grow faster than a fluid model
   shows. The planner targets 0.8 (``PlanPolicy.utilisation``). Work is spread over all warm
   capacity (the front door's least-utilised tie-break); where it runs does not change the bill,
   since warm instances are paid for whether busy or not.
3. Latency = ``base_latency_s`` (0.1 s: round trip, batching delay and compute of one request)
   plus the FIFO wait; a request is inside the SLO when that is at most ``slo_s``. Within a
   second, the wait is taken to grow linearly from its start to its end value.
4. Instances are billed from launch (booting included) until stopped, per second, with no
   minimum (EC2's 60 s minimum is below the one-minute decision interval). A launched instance
   serves after its unit's ``cold_start_s``.
5. Spot reclaims: each warm spot instance is reclaimed independently at its unit's
   ``interruptions_per_hour`` (the cost model's figure; 1%/h by default); the group manager
   starts a replacement at once (another cold start). Requests in flight on it (its share of the
   arrivals over ``base_latency_s``) are re-run, at twice the base latency.
6. Serverless units (Cloud Run, Container Apps) scale out by themselves beyond their planned
   minimum when the queue grows, after their cold start, up to ``max_instances``; those burst
   instances are billed while up (instance-based billing) and released after
   ``serverless_idle_s`` (900 s: Cloud Run may keep an idle instance up to 15 minutes).
7. Decisions happen every interval (60 s) and apply at once (stops) or after the cold start
   (starts): no reconciler rate limit beyond the interval.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from core.autoscale.capacity import PlanPolicy, Unit, plan_capacity
from core.autoscale.forecast import Forecaster, forecaster_for, horizon_for
from core.autoscale.trace import Trace

__all__ = ["SimConfig", "SimResult", "Strategy", "simulate", "simulate_all", "strategies"]


@dataclass(frozen=True)
class SimConfig:
    """The fleet and the rules every strategy shares (module docstring)."""

    units: tuple[Unit, ...]
    interruptions_per_hour: Mapping[str, float]
    policy: PlanPolicy = field(default_factory=PlanPolicy)
    items_per_request: int = 8
    base_latency_s: float = 0.1
    max_utilisation: float = 0.9
    serverless_idle_s: float = 900.0
    quantile: float = 0.95
    season: int = 1440  # intervals in a day


@dataclass(frozen=True)
class Strategy:
    """A way of deciding warm capacity: ``decide(minute, observed items/s) -> instances``."""

    name: str
    units: tuple[Unit, ...]
    decide: Callable[[int, float], Mapping[str, int]]


@dataclass
class SimResult:
    """One strategy's replay: totals and per-interval series (for the plot and the table)."""

    name: str
    cost_usd: float = 0.0
    items: float = 0.0
    requests: float = 0.0
    requests_ok: float = 0.0
    reclaims: int = 0
    launches: int = 0
    gpu_hours: dict[str, float] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # items/s per interval
    capacity: dict[str, list[float]] = field(default_factory=dict)  # cloud -> items/s
    cumulative_usd: list[float] = field(default_factory=list)

    @property
    def usd_per_million(self) -> float:
        return self.cost_usd / self.items * 1e6 if self.items else math.nan

    @property
    def slo_attainment(self) -> float:
        return self.requests_ok / self.requests if self.requests else 1.0


@dataclass
class _Pool:
    """One unit's instances: warm, starting (ready times) and serverless bursts."""

    unit: Unit
    warm: int = 0
    starting: deque[float] = field(default_factory=deque)
    burst: int = 0
    burst_starting: deque[float] = field(default_factory=deque)

    def resize(self, target: int, now: float) -> int:
        """Start or stop instances to reach ``target``; returns how many were started."""
        have = self.warm + len(self.starting)
        if target > have:
            self.starting.extend([now + self.unit.cold_start_s] * (target - have))
            return target - have
        for _ in range(have - target):
            if self.starting:
                self.starting.pop()
            else:
                self.warm -= 1
        return 0

    def promote(self, now: float) -> None:
        while self.starting and self.starting[0] <= now:
            self.starting.popleft()
            self.warm += 1
        while self.burst_starting and self.burst_starting[0] <= now:
            self.burst_starting.popleft()
            self.burst += 1

    def billed(self) -> int:
        return self.warm + len(self.starting) + self.burst + len(self.burst_starting)


def _fraction_ok(w0: float, w1: float, slack: float) -> float:
    """Share of a second's arrivals whose wait (growing linearly w0 -> w1) is <= slack."""
    if w1 <= slack and w0 <= slack:
        return 1.0
    if w1 > slack and w0 > slack:
        return 0.0
    return (slack - min(w0, w1)) / abs(w1 - w0)


def simulate(
    trace: Trace, arrivals: np.ndarray, config: SimConfig, strategy: Strategy, seed: int
) -> SimResult:
    """Replay ``arrivals`` (requests per second) under ``strategy``; reclaims drawn from
    ``seed``."""
    rng = np.random.default_rng(seed)
    dt, per = 1.0, int(trace.interval_s)
    pools = [_Pool(u) for u in strategy.units]
    result = SimResult(strategy.name)
    clouds = sorted({u.cloud for u in strategy.units})
    result.capacity = {c: [] for c in clouds}
    result.gpu_hours = dict.fromkeys(clouds, 0.0)
    slack = config.policy.slo_s - config.base_latency_s
    backlog, last_needed, observed = 0.0, -math.inf, 0.0
    for minute in range(len(trace.rate)):
        now = minute * per
        plan = strategy.decide(minute, observed)
        for p in pools:
            started = p.resize(plan.get(p.unit.name, 0), now)
            result.launches += started if minute else 0
            if minute == 0:  # the fleet starts at its first plan, warm (history came before)
                p.warm += len(p.starting)
                p.starting.clear()
        reclaim_at: list[tuple[float, _Pool]] = []
        for p in pools:
            rate = config.interruptions_per_hour.get(p.unit.name, 0.0) if p.unit.spot else 0.0
            if rate > 0 and p.warm > 0:
                k = rng.binomial(p.warm, -math.expm1(-rate * per / 3600))
                reclaim_at += [(now + s, p) for s in rng.uniform(0, per, k)]
        reclaim_at.sort(key=lambda e: e[0])
        items_in_minute, cap_sum = 0.0, dict.fromkeys(clouds, 0.0)
        for s in range(per):
            t = now + s
            for p in pools:
                p.promote(t)
            while reclaim_at and reclaim_at[0][0] <= t + dt:
                _, p = reclaim_at.pop(0)
                if p.warm > 0:
                    p.warm -= 1
                    p.starting.append(t + p.unit.cold_start_s)
                    result.reclaims += 1
                    warm_total = sum(q.warm + q.burst for q in pools) + 1
                    rerun = arrivals[minute * per + s] / warm_total * config.base_latency_s
                    rerun_ok = 2 * config.base_latency_s <= config.policy.slo_s
                    result.requests_ok -= 0 if rerun_ok else rerun
            util = config.max_utilisation
            capacity = sum((p.warm + p.burst) * p.unit.items_per_s for p in pools) * util
            planned = sum(p.warm * p.unit.items_per_s for p in pools) * util
            requests = float(arrivals[minute * per + s])
            items = requests * config.items_per_request
            end = max(0.0, backlog + items - capacity)
            w0 = backlog / capacity if capacity > 0 else math.inf
            w1 = end / capacity if capacity > 0 else math.inf
            ok = _fraction_ok(w0, w1, slack) if requests else 1.0
            result.requests += requests
            result.requests_ok += requests * ok
            result.items += items
            items_in_minute += items
            backlog = end
            if backlog > 0 or items > planned:
                last_needed = t
                _burst(pools, backlog + items - capacity, t, util)
            elif t - last_needed >= config.serverless_idle_s:
                for p in pools:
                    p.burst, p.burst_starting = 0, deque()
            for p in pools:
                n = p.billed()
                result.cost_usd += n * p.unit.usd_per_hour * dt / 3600
                result.gpu_hours[p.unit.cloud] += n * p.unit.gpus * dt / 3600
                cap_sum[p.unit.cloud] += (p.warm + p.burst) * p.unit.items_per_s * util
        observed = items_in_minute / per
        result.load.append(observed)
        for c in clouds:
            result.capacity[c].append(cap_sum[c] / per)
        result.cumulative_usd.append(result.cost_usd)
    return result


def _burst(pools: Sequence[_Pool], missing_items_per_s: float, now: float, util: float) -> None:
    """Serverless units start instances for the load their warm capacity misses."""
    for p in pools:
        if p.unit.pricing != "serverless" or missing_items_per_s <= 0:
            continue
        per_instance = p.unit.items_per_s * util
        want = math.ceil(missing_items_per_s / per_instance) - len(p.burst_starting)
        room = p.unit.max_instances - p.warm - len(p.starting) - p.burst - len(p.burst_starting)
        start = max(0, min(want, room))
        p.burst_starting.extend([now + p.unit.cold_start_s] * start)
        missing_items_per_s -= (start + len(p.burst_starting)) * per_instance


def _forecasting(
    trace: Trace, config: SimConfig, units: tuple[Unit, ...], policy: PlanPolicy
) -> Callable[[int, float], Mapping[str, int]]:
    """Ours: fit on the history, fold in each interval's observation, plan on the upper
    quantile over the lead window."""
    items = config.items_per_request
    model: Forecaster = forecaster_for(trace.history * items, config.season)
    lead = max(u.cold_start_s for u in units)
    horizon = horizon_for(lead, trace.interval_s)

    def decide(minute: int, observed: float) -> Mapping[str, int]:
        if minute > 0:
            model.update(observed)
        upper = model.predict(horizon, config.quantile).upper
        return plan_capacity(upper, units, policy).instances

    return decide


def strategies(trace: Trace, config: SimConfig) -> list[Strategy]:
    """Ours and the three baselines (module docstring), over ``config``'s fleet."""
    units, policy = config.units, config.policy
    items = config.items_per_request
    on_demand = min((u for u in units if u.pricing == "on_demand"), key=lambda u: u.usd_per_item_s)
    peak = float(np.max(trace.rate)) * items
    static_n = math.ceil(peak / (on_demand.items_per_s * policy.utilisation))
    static_unit = replace(on_demand, max_instances=max(static_n, on_demand.max_instances))
    history_last = float(trace.history[-1]) * items if trace.history.size else 0.0

    def reactive(minute: int, observed: float) -> Mapping[str, int]:
        load = observed if minute else history_last
        return plan_capacity([load], units, policy).instances

    spot = min((u for u in units if u.spot), key=lambda u: u.usd_per_item_s)
    spot_policy = replace(policy, on_demand_floor=0.0, spot_reserve=False)
    return [
        Strategy("autoscaler", units, _forecasting(trace, config, units, policy)),
        Strategy("static-peak", (static_unit,), lambda m, o: {static_unit.name: static_n}),
        Strategy("reactive", units, reactive),
        Strategy("spot-only", (spot,), _forecasting(trace, config, (spot,), spot_policy)),
    ]


def simulate_all(trace: Trace, config: SimConfig, seed: int) -> list[SimResult]:
    """Every strategy over the same arrivals; the first result is ours, the second baseline 1."""
    rng = np.random.default_rng(seed)
    per = int(trace.interval_s)
    arrivals = rng.poisson(np.repeat(trace.rate, per)).astype(float)
    return [
        simulate(trace, arrivals, config, s, seed * 1000 + i)
        for i, s in enumerate(strategies(trace, config))
    ]
