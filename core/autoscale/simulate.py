"""Replay a request trace through forecast -> plan -> placement, against three baselines.

Pure: the trace, the fleet (``capacity.Unit``: per-instance throughput from the cost model, prices
from the bundled snapshot) and a seed in; costs, SLO attainment and time series out. Every
strategy sees the same per-second arrivals (drawn once from the seed) and the same physics.

Strategies:

- ``autoscaler`` (ours): the forecaster that leads the rolling backtest (``forecast``), capacity
  sized so the predicted share of requests inside the SLO meets the target (``headroom``), planned
  by ``plan_capacity`` each interval and started a cold start ahead; serverless units also burst.
- ``static-peak``: the cheapest on-demand unit (price per item/s) of one cloud, sized once for the
  trace's highest interval at the same utilisation target as the planner - the clairvoyant peak,
  which favours the baseline - and warm all day. Not clipped to the unit's ``max_instances``.
- ``reactive``: the same fleet and planner fed the last interval's observed load, with no headroom
  but the utilisation target's: no pre-warming, so every rise waits a cold start.
- ``reactive-headroom``: the last interval's load as the forecast, with the same SLO-sized
  headroom from that forecast's own errors: what is left of ours without the forecast.
- ``mark``: MArk-style (Zhang et al., ATC'19): VMs for our forecast's mean, no headroom,
  serverless instances absorbing whatever the VMs miss.
- ``spot-only``: the cheapest spot unit alone, our forecast and headroom, no on-demand floor, no
  N+1 reserve.

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
5. Spot reclaims: a spot unit with a preemption record (``SimConfig.lifetimes``:
   ``core.autoscale.preemption``, observed spot lifetimes) gives each instance a lifetime drawn
   from it when it comes up, and reclaims it when that runs out; any other spot instance is
   reclaimed independently at its unit's ``interruptions_per_hour`` (the cost model's figure;
   1%/h by default). The group manager starts a replacement at once (another cold start).
   Requests in flight on it (its share of the arrivals over ``base_latency_s``) are re-run, at
   twice the base latency.
6. Serverless units (Cloud Run, Container Apps) scale out by themselves beyond their planned
   minimum when the queue grows, after their cold start, up to ``max_instances``: as many
   instances as the rate the warm capacity misses, plus its queue drained over one cold start,
   needs. Those burst instances are billed while up (instance-based billing), and each is
   released once it has not been needed for its unit's ``idle_hold_s``, else
   ``serverless_idle_s`` (900 s: Cloud Run, not we, decides when an idle instance goes, and may
   keep it up to 15 minutes; Container Apps' cooldown is ours to set). Capacity we start and
   stop ourselves (the VMs) is released at the next decision that no longer needs it.
7. Decisions happen every interval (60 s) and apply at once (stops) or after the cold start
   (starts): no reconciler rate limit beyond the interval.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from core.autoscale.capacity import PlanPolicy, Unit, plan_capacity
from core.autoscale.forecast import Forecast, Forecaster, forecaster_for, horizon_for
from core.autoscale.headroom import burst_capacity, plan_for
from core.autoscale.preemption import PreemptionRecord, draw_lifetimes
from core.autoscale.trace import Trace

__all__ = [
    "NAMES",
    "Decision",
    "SimConfig",
    "SimResult",
    "Strategy",
    "simulate",
    "simulate_all",
    "strategies",
]


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
    target_attainment: float = 0.99  # what the SLO-sized headroom aims at
    lifetimes: Mapping[str, PreemptionRecord] = field(default_factory=dict)  # by unit name


@dataclass(frozen=True, slots=True)
class Decision:
    """One interval's warm instances per unit, with what the plan expected and the forecast
    that chose it (when there was one)."""

    instances: Mapping[str, int]
    expected_attainment: float | None = None
    method: str | None = None


@dataclass(frozen=True)
class Strategy:
    """A way of deciding warm capacity: ``decide(minute, observed items/s) -> Decision``."""

    name: str
    units: tuple[Unit, ...]
    decide: Callable[[int, float], Decision]


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
    usd_by_unit: dict[str, float] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # items/s per interval
    capacity: dict[str, list[float]] = field(default_factory=dict)  # cloud -> items/s
    cumulative_usd: list[float] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)  # the plans' predicted attainment
    methods: dict[str, int] = field(default_factory=dict)  # forecast method -> intervals chosen

    @property
    def usd_per_million(self) -> float:
        return self.cost_usd / self.items * 1e6 if self.items else math.nan

    @property
    def slo_attainment(self) -> float:
        return self.requests_ok / self.requests if self.requests else 1.0


@dataclass
class _Pool:
    """One unit's instances: warm, starting (ready times) and serverless bursts (each burst
    instance's ready time and when it was last needed, in start order)."""

    unit: Unit
    warm: int = 0
    starting: deque[float] = field(default_factory=deque)
    burst_ready: list[float] = field(default_factory=list)
    burst_used: list[float] = field(default_factory=list)
    record: PreemptionRecord | None = None  # reclaims follow it (assumption 5)
    doom: list[float] = field(default_factory=list)  # with a record: each warm one's reclaim

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
                if self.record is not None:
                    self.doom.pop()
        return 0

    def promote(self, now: float, rng: np.random.Generator) -> None:
        while self.starting and self.starting[0] <= now:
            self.starting.popleft()
            self.warm += 1
            if self.record is not None:
                self.doom.append(now + float(draw_lifetimes(self.record, 1, rng)[0]))

    def doomed(self, now: float) -> int:
        """Reclaim the instances whose drawn lifetimes ran out by ``now``; how many."""
        gone = [i for i, at in enumerate(self.doom) if at <= now]
        for i in reversed(gone):
            del self.doom[i]
        self.warm -= len(gone)
        return len(gone)

    def bursting(self, now: float) -> int:
        """Burst instances up and serving at ``now``."""
        return bisect.bisect_right(self.burst_ready, now)

    def need_burst(self, n: int, now: float, idle_s: float) -> None:
        """``n`` burst instances are needed now: mark them used, start the missing ones (within
        ``max_instances``), release those idle for ``idle_s``."""
        room = self.unit.max_instances - self.warm - len(self.starting)
        n = max(0, min(n, room))
        for i in range(min(n, len(self.burst_used))):
            self.burst_used[i] = now
        for _ in range(n - len(self.burst_used)):
            self.burst_ready.append(now + self.unit.cold_start_s)
            self.burst_used.append(now)
        while self.burst_used and now - self.burst_used[-1] >= idle_s:
            self.burst_used.pop()
            self.burst_ready.pop()

    def billed(self) -> int:
        return self.warm + len(self.starting) + len(self.burst_ready)


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
    pools = [_Pool(u, record=config.lifetimes.get(u.name)) for u in strategy.units]
    bursty = [p for p in pools if p.unit.pricing == "serverless"]
    burst_start = max((p.unit.cold_start_s for p in bursty), default=0.0)
    result = SimResult(strategy.name)
    clouds = sorted({u.cloud for u in strategy.units})
    result.capacity = {c: [] for c in clouds}
    result.gpu_hours = dict.fromkeys(clouds, 0.0)
    result.usd_by_unit = {u.name: 0.0 for u in strategy.units}
    slack = config.policy.slo_s - config.base_latency_s
    util = config.max_utilisation
    backlog, observed = 0.0, 0.0
    for minute in range(len(trace.rate)):
        now = minute * per
        decision = strategy.decide(minute, observed)
        if decision.expected_attainment is not None:
            result.expected.append(decision.expected_attainment)
        if decision.method is not None:
            result.methods[decision.method] = result.methods.get(decision.method, 0) + 1
        for p in pools:
            started = p.resize(decision.instances.get(p.unit.name, 0), now)
            result.launches += started if minute else 0
            if minute == 0:  # the fleet starts at its first plan, warm (history came before)
                p.starting = deque(now for _ in p.starting)
                p.promote(now, rng)
        reclaim_at: list[tuple[float, _Pool]] = []
        for p in pools:
            rate = config.interruptions_per_hour.get(p.unit.name, 0.0) if p.unit.spot else 0.0
            rate = 0.0 if p.record is not None else rate
            if rate > 0 and p.warm > 0:
                k = rng.binomial(p.warm, -math.expm1(-rate * per / 3600))
                reclaim_at += [(now + s, p) for s in rng.uniform(0, per, k)]
        reclaim_at.sort(key=lambda e: e[0])
        items_in_minute, cap_sum = 0.0, dict.fromkeys(clouds, 0.0)
        for s in range(per):
            t = now + s
            for p in pools:
                p.promote(t, rng)
            lost: list[_Pool] = []
            while reclaim_at and reclaim_at[0][0] <= t + dt:
                _, p = reclaim_at.pop(0)
                if p.warm > 0:
                    p.warm -= 1
                    lost.append(p)
            lost += [p for p in pools if p.record is not None for _ in range(p.doomed(t + dt))]
            for p in lost:
                p.starting.append(t + p.unit.cold_start_s)
                result.reclaims += 1
                warm_total = sum(q.warm + q.bursting(t) for q in pools) + 1
                rerun = arrivals[minute * per + s] / warm_total * config.base_latency_s
                rerun_ok = 2 * config.base_latency_s <= config.policy.slo_s
                result.requests_ok -= 0 if rerun_ok else rerun
            up = [(p, p.warm + p.bursting(t)) for p in pools]
            capacity = sum(n * p.unit.items_per_s for p, n in up) * util
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
            missing = items - planned + backlog / max(burst_start, dt)
            _burst(bursty, missing, t, util, config.serverless_idle_s)
            backlog = end
            for p, n in up:
                billed = p.billed()
                usd = billed * p.unit.usd_per_hour * dt / 3600
                result.cost_usd += usd
                result.usd_by_unit[p.unit.name] += usd
                result.gpu_hours[p.unit.cloud] += billed * p.unit.gpus * dt / 3600
                cap_sum[p.unit.cloud] += n * p.unit.items_per_s * util
        observed = items_in_minute / per
        result.load.append(observed)
        for c in clouds:
            result.capacity[c].append(cap_sum[c] / per)
        result.cumulative_usd.append(result.cost_usd)
    return result


def _burst(
    pools: Sequence[_Pool], missing_items_per_s: float, now: float, util: float, idle_s: float
) -> None:
    """Serverless units hold (or start) the burst instances for what their warm capacity
    misses, in fleet order, and release those idle for their ``idle_hold_s`` (else
    ``idle_s``)."""
    for p in pools:
        per_instance = p.unit.items_per_s * util
        n = math.ceil(missing_items_per_s / per_instance - 1e-9) if missing_items_per_s > 0 else 0
        p.need_burst(n, now, idle_s if p.unit.idle_hold_s is None else p.unit.idle_hold_s)
        missing_items_per_s -= len(p.burst_ready) * per_instance


class _Forecasts:
    """One forecaster's forecast for each interval, made once and shared by every strategy that
    plans on it: they all observe the same arrivals, so the forecasts are the same."""

    def __init__(self, model: Forecaster, horizon: int, quantile: float) -> None:
        self.model, self.horizon, self.quantile = model, horizon, quantile
        self.made: list[Forecast] = []

    def at(self, minute: int, observed: float) -> Forecast:
        while len(self.made) <= minute:
            if self.made:
                self.model.update(observed)
            self.made.append(self.model.predict(self.horizon, self.quantile))
        return self.made[minute]


def _planner(
    forecasts: _Forecasts,
    config: SimConfig,
    units: tuple[Unit, ...],
    policy: PlanPolicy,
    sizing: str = "slo",
) -> Callable[[int, float], Decision]:
    """Plan on each interval's forecast: ``slo``-sized headroom from its errors (its upper
    quantile until it has scored enough), or its ``mean`` alone."""
    burst = burst_capacity(units, policy.utilisation)

    def decide(minute: int, observed: float) -> Decision:
        f = forecasts.at(minute, observed)
        if sizing == "mean":
            plan = plan_capacity(f.mean, units, policy, burst_items_per_s=burst[0])
        else:
            plan = plan_for(
                f, units, policy, target=config.target_attainment,
                slack_s=policy.slo_s - config.base_latency_s, hold_s=config.serverless_idle_s,
            )  # fmt: skip
        return Decision(plan.instances, plan.expected_attainment, f.method)

    return decide


NAMES = ("autoscaler", "static-peak", "reactive", "reactive-headroom", "mark", "spot-only")


def strategies(trace: Trace, config: SimConfig) -> list[Strategy]:
    """Ours and the baselines (module docstring), over ``config``'s fleet."""
    units, policy = config.units, config.policy
    items = config.items_per_request
    history = trace.history * items
    lead = horizon_for(max(u.cold_start_s for u in units), trace.interval_s)
    q = config.quantile
    ours = _Forecasts(forecaster_for(history, trace.interval_s, lead, quantile=q), lead, q)
    last_value = _Forecasts(
        forecaster_for(history, trace.interval_s, lead, refit_every=1, only=("naive",), quantile=q),
        lead,
        q,
    )

    on_demand = min((u for u in units if u.pricing == "on_demand"), key=lambda u: u.usd_per_item_s)
    peak = float(np.max(trace.rate)) * items
    static_n = math.ceil(peak / (on_demand.items_per_s * policy.utilisation))
    static_unit = replace(on_demand, max_instances=max(static_n, on_demand.max_instances))
    history_last = float(history[-1]) if history.size else 0.0

    def reactive(minute: int, observed: float) -> Decision:
        load = observed if minute else history_last
        return Decision(plan_capacity([load], units, policy).instances)

    spot = min((u for u in units if u.spot), key=lambda u: u.usd_per_item_s)
    spot_policy = replace(policy, on_demand_floor=0.0, spot_reserve=False)
    spot_lead = horizon_for(spot.cold_start_s, trace.interval_s)
    spot_forecasts = (
        ours
        if spot_lead == lead
        else _Forecasts(
            forecaster_for(history, trace.interval_s, spot_lead, quantile=q), spot_lead, q
        )
    )
    made = [
        Strategy("autoscaler", units, _planner(ours, config, units, policy)),
        Strategy(
            "static-peak", (static_unit,), lambda m, o: Decision({static_unit.name: static_n})
        ),
        Strategy("reactive", units, reactive),
        Strategy("reactive-headroom", units, _planner(last_value, config, units, policy)),
        Strategy("mark", units, _planner(ours, config, units, policy, sizing="mean")),
        Strategy("spot-only", (spot,), _planner(spot_forecasts, config, (spot,), spot_policy)),
    ]
    assert tuple(s.name for s in made) == NAMES
    return made


def simulate_all(trace: Trace, config: SimConfig, seed: int) -> list[SimResult]:
    """Every strategy over the same arrivals; the first result is ours, the second baseline 1."""
    rng = np.random.default_rng(seed)
    per = int(trace.interval_s)
    arrivals = rng.poisson(np.repeat(trace.rate, per)).astype(float)
    return [
        simulate(trace, arrivals, config, s, seed * 1000 + i)
        for i, s in enumerate(strategies(trace, config))
    ]
