"""Estimate the cost and latency of running items on every target at once.

Pure: no I/O, no clock. ``ScoreTable`` holds each target's static facts as numpy columns (price,
predicted throughput, billing rules, spot risk), so scoring a thousand targets is a handful of
vector operations; ``Estimate`` rows carry the whole breakdown, so a report can say *why*.

Per target, for ``n`` items from ``origin``::

    compute_s  = fixed_s + n / items_per_s
    cost       = price/s x billed(compute_s)         billed: the target's increment and minimum
               + n x in_bytes  x egress(origin -> target)       ingress is free; the sender pays
               + n x out_bytes x egress(target -> origin)
               + p_interrupt x (compute + egress in)            spot: expected cost of a re-run
    latency    = rtt + (in + out bytes) / bandwidth + queue + compute_s + cold start
               + (rtt + transfer + compute_s  if p_interrupt >= max_interruption_risk)
    p_interrupt = 1 - exp(-interruptions_per_s x compute_s)
    queue      = rho / (1 - rho) x compute_s                    M/M/1 mean wait at utilisation rho
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.config import Target
from core.planning.geo import link
from core.planning.limits import Constraints, Origin
from core.planning.loads import Loads

__all__ = [
    "CostBreakdown",
    "Estimate",
    "LatencyBreakdown",
    "ScoreTable",
    "TargetFacts",
    "Workload",
]

EgressFn = Callable[[str, str, str, str], float]  # (src cloud, region, dst cloud, region) -> $/GB

# Queueing: beyond this utilisation the M/M/1 wait explodes; a worker reporting more is saturated
# and we charge it as nearly so rather than dividing by ~0.
_MAX_RHO = 0.95


@dataclass(frozen=True, slots=True)
class Workload:
    """A model's bytes per item; with the request's items and origin, what is to be run."""

    model: str
    input_bytes_per_item: float
    output_bytes_per_item: float


@dataclass(frozen=True, slots=True)
class TargetFacts:
    """What the scorer knows about a target apart from its live load."""

    target: Target
    usd_per_hour: float
    price_source: str  # "config" or the price row's source
    price_as_of: str | None
    price_stale: bool
    items_per_s: float  # whole-target predicted throughput for the model (all its GPUs)
    fixed_s: float  # per-call overhead (session call, kernel launches)
    billing_increment_s: float
    billing_minimum_s: float
    interruptions_per_hour: float
    speed_source: str = "estimated from the spec sheet"  # or "measured <date> on <host> ..."


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    compute_usd: float
    egress_in_usd: float
    egress_out_usd: float
    retry_usd: float

    @property
    def total_usd(self) -> float:
        return self.compute_usd + self.egress_in_usd + self.egress_out_usd + self.retry_usd


@dataclass(frozen=True, slots=True)
class LatencyBreakdown:
    rtt_ms: float
    transfer_ms: float
    queue_ms: float
    compute_ms: float
    cold_start_ms: float
    retry_ms: float

    @property
    def total_ms(self) -> float:
        return (
            self.rtt_ms + self.transfer_ms + self.queue_ms + self.compute_ms + self.cold_start_ms
            + self.retry_ms
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Estimate:
    """One target's estimate for ``items`` items, with its breakdown and verdict."""

    target: str
    items: int
    cost: CostBreakdown
    latency: LatencyBreakdown
    p_interrupt: float
    feasible: bool
    reasons: tuple[str, ...] = field(default=())
    usd_per_hour: float = 0.0
    price_source: str = "config"
    price_as_of: str | None = None
    price_stale: bool = False  # a snapshot figure standing in for a live one that failed
    speed_source: str = "estimated from the spec sheet"
    variant: str = "fp32"  # the precision variant the target serves

    def report(self) -> dict[str, object]:
        return {
            "target": self.target,
            "items": self.items,
            "usd": round(self.cost.total_usd, 9),
            "ms": round(self.latency.total_ms, 3),
            "feasible": self.feasible,
            "price": {
                "usd_per_hour": self.usd_per_hour,
                "source": self.price_source,
                "as_of": self.price_as_of,
                "stale": self.price_stale,
            },
            "speed": self.speed_source,
            "variant": self.variant,
            **({"why_not": list(self.reasons)} if self.reasons else {}),
        }


@dataclass(frozen=True, slots=True)
class Columns:
    """Vectorised estimates for every target (arrays aligned with ``ScoreTable.facts``)."""

    items: np.ndarray
    compute_usd: np.ndarray
    egress_in_usd: np.ndarray
    egress_out_usd: np.ndarray
    retry_usd: np.ndarray
    rtt_s: np.ndarray
    transfer_s: np.ndarray
    queue_s: np.ndarray
    compute_s: np.ndarray
    cold_s: np.ndarray
    retry_s: np.ndarray
    p_interrupt: np.ndarray

    @property
    def total_usd(self) -> np.ndarray:
        # numpy's stubs type arithmetic on untyped arrays as Any: the annotation says what it is
        total: np.ndarray = (
            self.compute_usd + self.egress_in_usd + self.egress_out_usd + self.retry_usd
        )
        return total

    @property
    def total_s(self) -> np.ndarray:
        total: np.ndarray = (
            self.rtt_s + self.transfer_s + self.queue_s + self.compute_s + self.cold_s
            + self.retry_s
        )  # fmt: skip
        return total


@dataclass(frozen=True, slots=True)
class _Route:
    """Per-origin columns: network and egress between the origin and each target."""

    rtt_s: np.ndarray
    bytes_per_s: np.ndarray
    egress_in_per_byte: np.ndarray
    egress_out_per_byte: np.ndarray


class ScoreTable:
    """Static per-target columns, built once per price/throughput refresh, scored per request."""

    def __init__(self, facts: Sequence[TargetFacts], egress: EgressFn) -> None:
        self.facts = tuple(facts)
        self.names = [f.target.name for f in self.facts]
        self.index = {n: i for i, n in enumerate(self.names)}
        self._egress = egress
        col = np.array
        self.price_per_s = col([f.usd_per_hour / 3600 for f in self.facts], float)
        self.items_per_s = col([f.items_per_s for f in self.facts], float)
        self.fixed_s = col([f.fixed_s for f in self.facts], float)
        self.increment_s = col([f.billing_increment_s for f in self.facts], float)
        self.minimum_s = col([f.billing_minimum_s for f in self.facts], float)
        self.interrupts_per_s = col([f.interruptions_per_hour / 3600 for f in self.facts], float)
        self.cold_start_s = col(
            [f.target.cold_start_s if f.target.scale_to_zero else 0.0 for f in self.facts], float
        )
        self.slots = col([f.target.max_concurrency for f in self.facts], float)
        self.clouds = col([f.target.cloud for f in self.facts], object)
        self.regions = col([f.target.region for f in self.facts], object)
        self._routes: dict[Origin, _Route] = {}
        self._serving: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.facts)

    def route(self, origin: Origin) -> _Route:
        """Network and egress columns from ``origin`` (cached: a front door sees few origins)."""
        cached = self._routes.get(origin)
        if cached is not None:
            return cached
        rtt, bw, e_in, e_out = [], [], [], []
        for f in self.facts:
            t = f.target
            net = link(origin.cloud, origin.region, t.cloud, t.region)
            rtt.append(net.rtt_s if t.rtt_ms is None else t.rtt_ms / 1000)
            bw.append(net.bytes_per_s)
            e_in.append(self._egress(origin.cloud, origin.region, t.cloud, t.region) / 1e9)
            e_out.append(self._egress(t.cloud, t.region, origin.cloud, origin.region) / 1e9)
        route = _Route(np.array(rtt), np.array(bw), np.array(e_in), np.array(e_out))
        self._routes[origin] = route
        return route

    def columns(
        self, items: np.ndarray, workload: Workload, loads: Loads, constraints: Constraints
    ) -> Columns:
        """Estimate every target for its ``items[i]`` items (vectorised, see module docstring)."""
        route = self.route(constraints.origin)
        n = np.asarray(items, float)
        compute_s = self.fixed_s + n / self.items_per_s
        billed_s = np.maximum(
            np.ceil(compute_s / self.increment_s) * self.increment_s, self.minimum_s
        )
        compute_usd = self.price_per_s * billed_s
        bytes_in = n * workload.input_bytes_per_item
        bytes_out = n * workload.output_bytes_per_item
        egress_in = bytes_in * route.egress_in_per_byte
        egress_out = bytes_out * route.egress_out_per_byte
        p = -np.expm1(-self.interrupts_per_s * compute_s)
        transfer_s = (bytes_in + bytes_out) / route.bytes_per_s
        rho = np.minimum(loads.utilization, _MAX_RHO)
        queue_s = rho / (1 - rho) * compute_s + np.where(loads.busy >= 1, compute_s, 0.0)
        cold_s = np.where(loads.warm, 0.0, self.cold_start_s)
        at_risk = p >= constraints.max_interruption_risk
        retry_s = np.where(at_risk, route.rtt_s + transfer_s + compute_s, 0.0)
        return Columns(
            items=n,
            compute_usd=compute_usd,
            egress_in_usd=egress_in,
            egress_out_usd=egress_out,
            retry_usd=p * (compute_usd + egress_in),
            rtt_s=route.rtt_s,
            transfer_s=transfer_s,
            queue_s=queue_s,
            compute_s=compute_s,
            cold_s=cold_s,
            retry_s=retry_s,
            p_interrupt=p,
        )

    def allowed(self, model: str, loads: Loads, constraints: Constraints) -> np.ndarray:
        """Targets that serve the model, pass the breaker and the cloud/region limits."""
        serving = self._serving.get(model)
        if serving is None:
            serving = np.array([f.target.serves(model) for f in self.facts], bool)
            self._serving[model] = serving
        ok = loads.allows & serving
        if constraints.clouds is not None:
            ok &= np.isin(self.clouds, list(constraints.clouds))
        if constraints.regions is not None:
            ok &= np.isin(self.regions, list(constraints.regions))
        allowed: np.ndarray = ok
        return allowed

    def estimate(self, i: int, cols: Columns, constraints: Constraints, allowed: bool) -> Estimate:
        """Row ``i`` of ``cols`` as an Estimate, with the reasons it is infeasible if it is."""
        f = self.facts[i]
        ms = 1000.0
        latency = LatencyBreakdown(
            float(cols.rtt_s[i] * ms),
            float(cols.transfer_s[i] * ms),
            float(cols.queue_s[i] * ms),
            float(cols.compute_s[i] * ms),
            float(cols.cold_s[i] * ms),
            float(cols.retry_s[i] * ms),
        )
        cost = CostBreakdown(
            float(cols.compute_usd[i]),
            float(cols.egress_in_usd[i]),
            float(cols.egress_out_usd[i]),
            float(cols.retry_usd[i]),
        )
        reasons = []
        if not allowed:
            reasons.append("not allowed (model, breaker, cloud or region)")
        if latency.total_ms > constraints.slo_ms:
            reasons.append(f"{latency.total_ms:.0f} ms > SLO {constraints.slo_ms:g} ms")
        if constraints.max_usd is not None and cost.total_usd > constraints.max_usd:
            reasons.append(f"${cost.total_usd:.6f} > max ${constraints.max_usd:g}")
        return Estimate(
            f.target.name,
            int(cols.items[i]),
            cost,
            latency,
            float(cols.p_interrupt[i]),
            not reasons,
            tuple(reasons),
            f.usd_per_hour,
            f.price_source,
            f.price_as_of,
            f.price_stale,
            f.speed_source,
            f.target.variant,
        )
