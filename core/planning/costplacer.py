"""Cost-aware placement: the cheapest targets that meet the SLO, filled in order, explained.

Pure. For one request, every allowed target is scored at once (``core.planning.estimate``); each
target's
latency is affine in the items it is given, which bounds how many items it can take within the
SLO. Shards (largest first) go to the best target by the objective that still has room. Equally
good targets share by load (shards in flight per slot, then utilisation) — and where billing is
coarse (an increment or minimum longer than a shard's compute), a request packs onto the targets it
already uses, since a second target would bill a second increment: a light model gets few GPUs, a
heavy one many. A shard that fits nowhere within the SLO goes where it finishes soonest, and the
placement says it misses.

The explanation names, for every target used, its cost and latency breakdown for the items it got,
and what the best target *not* used would have cost for the whole request.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import NoFeasibleTarget
from core.planning.estimate import Columns, Estimate, ScoreTable, Workload
from core.planning.limits import Constraints
from core.planning.loads import FleetLoads, Loads
from core.planning.placer import Placement, place
from core.planning.shards import Shard

__all__ = ["CostPlacer", "Decision", "decide", "explain", "loads_of"]

_TIE = 1e-9  # relative: costs this close are a tie, decided by load


@dataclass(frozen=True, slots=True)
class Decision:
    """Items per target and the estimates behind them."""

    items: np.ndarray  # per target, aligned with the table
    groups: dict[str, list[Shard]]
    chosen: tuple[Estimate, ...]
    runner_up: Estimate | None
    meets_slo: bool
    objective: str
    constraints: Constraints = field(repr=False)

    @property
    def total_usd(self) -> float:
        return sum(e.cost.total_usd for e in self.chosen)

    @property
    def latency_ms(self) -> float:
        return max((e.latency.total_ms for e in self.chosen), default=0.0)

    def report(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "slo_ms": self.constraints.slo_ms,
            "origin": str(self.constraints.origin),
            "meets_slo": self.meets_slo,
            "usd": round(self.total_usd, 9),
            "ms": round(self.latency_ms, 3),
            "targets": [explain(e) for e in self.chosen],
            "runner_up": explain(self.runner_up) if self.runner_up else None,
        }


def explain(e: Estimate) -> dict[str, Any]:
    """An estimate with its cost and latency breakdown, as JSON-able values."""
    c, lat = e.cost, e.latency
    return {
        **e.report(),
        "cost": {
            "compute": round(c.compute_usd, 9),
            "egress_in": round(c.egress_in_usd, 9),
            "egress_out": round(c.egress_out_usd, 9),
            "retry_risk": round(c.retry_usd, 9),
        },
        "latency": {
            "rtt": round(lat.rtt_ms, 3),
            "transfer": round(lat.transfer_ms, 3),
            "queue": round(lat.queue_ms, 3),
            "compute": round(lat.compute_ms, 3),
            "cold_start": round(lat.cold_start_ms, 3),
            "retry": round(lat.retry_ms, 3),
        },
    }


def loads_of(table: ScoreTable, fleet: FleetLoads) -> Loads:
    """Live load columns aligned with ``table``; targets the fleet lacks are barred."""
    loads = fleet.loads()
    if fleet.names == table.names:
        return loads
    where = {name: i for i, name in enumerate(fleet.names)}
    rows = np.array([where.get(n, -1) for n in table.names])
    known = rows >= 0
    rows = np.where(known, rows, 0)
    return Loads(
        loads.utilization[rows], loads.busy[rows], loads.warm[rows], loads.allows[rows] & known
    )


@dataclass(frozen=True, slots=True)
class _TieGroups:
    """Allowed targets in order of the objective, grouped where neighbours are within a relative
    ``_TIE`` of each other (equally good: the group shares by load). Iterated lazily: placement
    usually stops at the first group or two, so the rest are never sliced."""

    order: np.ndarray
    bounds: list[int]

    @classmethod
    def of(cls, key: np.ndarray, allowed: np.ndarray) -> _TieGroups:
        idx = np.flatnonzero(allowed)
        order = idx[np.argsort(key[idx], kind="stable")]
        values = key[order]
        gaps = np.abs(np.diff(values)) > _TIE * np.maximum(np.abs(values[1:]), 1e-12)
        return cls(order, [0, *(np.flatnonzero(gaps) + 1).tolist(), len(order)])

    def __iter__(self) -> Iterator[np.ndarray]:
        for start, stop in itertools.pairwise(self.bounds):
            yield self.order[start:stop]


def decide(
    table: ScoreTable,
    workload: Workload,
    shards: Sequence[Shard],
    loads: Loads,
    constraints: Constraints,
    *,
    exclude: AbstractSet[str] = frozenset(),
) -> Decision:
    """Assign ``shards`` to targets (see the module docstring).

    Raises:
        NoFeasibleTarget: no allowed target, or the cheapest placement exceeds ``max_usd``.
    """
    n = len(table)
    allowed = table.allowed(workload.model, loads, constraints)
    if exclude:
        kept = allowed & ~np.isin(np.array(table.names, object), list(exclude))
        allowed = kept if kept.any() else allowed
    if not allowed.any():
        raise NoFeasibleTarget(
            f"no target may run model {workload.model!r} under these constraints "
            f"(clouds={sorted(constraints.clouds or []) or 'any'}, "
            f"regions={sorted(constraints.regions or []) or 'any'}, healthy and serving it)"
        )
    total = sum(s.items for s in shards)
    typical = max(total / max(len(shards), 1), 1.0)
    zero = table.columns(np.zeros(n), workload, loads, constraints)
    unit = table.columns(np.full(n, typical), workload, loads, constraints)
    base_s = _without_retry(zero)
    slope_s = (_without_retry(unit) - base_s) / typical
    room = np.where(allowed, _room(table, zero, unit, base_s, slope_s, typical, constraints), -1)
    # Cost per item as the target would be used: filled to its room (or the whole request), so a
    # coarse-billed target is priced packed, as it will be, not one small shard per increment.
    fill = np.clip(room, 1, total)
    per_item_usd = table.columns(fill, workload, loads, constraints).total_usd / fill
    # Where billing is fine-grained (or free), spreading a request over equally good targets costs
    # nothing and finishes sooner; where an increment or minimum exceeds a shard's compute time,
    # a second target bills a second increment, so shards pack onto targets already in use.
    shard_s = unit.compute_s
    spreads = (table.price_per_s == 0) | (
        (table.increment_s <= 0.1 * shard_s) & (table.minimum_s <= shard_s)
    )
    if constraints.objective == "latency":
        key = slope_s * typical + base_s
    elif constraints.objective == "weighted":
        key = per_item_usd + constraints.usd_per_latency_s * slope_s
    else:
        key = per_item_usd

    tiers = _TieGroups.of(key, allowed)
    items = np.zeros(n)
    count = np.zeros(n)
    slots = table.slots
    groups: dict[str, list[Shard]] = {}
    meets = True
    queue = sorted(shards, key=lambda s: -s.items)
    next_shard = 0
    while next_shard < len(queue):
        shard = queue[next_shard]
        best = _first_fit(tiers, room - items, shard.items, loads, count, slots, spreads)
        if best < 0:  # fits nowhere within the SLO: where it finishes soonest
            meets = False
            finish = np.where(allowed, base_s + slope_s * (items + shard.items), np.inf)
            best = int(np.argmin(finish))
        group = groups.setdefault(table.names[best], [])
        # a packing target stays the best choice while it has room: give it the run at once
        free = room[best] - items[best]
        taken = 0
        while next_shard < len(queue) and (taken == 0 or queue[next_shard].items <= free):
            shard = queue[next_shard]
            group.append(shard)
            free -= shard.items
            items[best] += shard.items
            count[best] += 1
            next_shard += 1
            taken += 1
            if spreads[best]:
                break
    for members in groups.values():
        members.sort(key=lambda s: s.index)

    final = table.columns(items, workload, loads, constraints)
    used = np.flatnonzero(items > 0)
    chosen = tuple(table.estimate(int(i), final, constraints, True) for i in used)
    meets = meets and all(e.latency.total_ms <= constraints.slo_ms for e in chosen)
    decision = Decision(
        items, groups, chosen, _runner_up(table, workload, loads, constraints, allowed, used, key,
                                           total), meets, constraints.objective, constraints,
    )  # fmt: skip
    if constraints.max_usd is not None and decision.total_usd > constraints.max_usd:
        raise NoFeasibleTarget(
            f"the cheapest placement within the SLO costs ${decision.total_usd:.6f}, "
            f"more than max_usd ${constraints.max_usd:g}"
        )
    return decision


def _without_retry(cols: Columns) -> np.ndarray:
    total: np.ndarray = cols.total_s - cols.retry_s
    return total


def _room(
    table: ScoreTable,
    zero: Columns,
    unit: Columns,
    base: np.ndarray,
    slope: np.ndarray,
    typical: float,
    constraints: Constraints,
) -> np.ndarray:
    """Items each target can take within the SLO, from its latency line ``base + slope x n``.

    Where a spot reclaim during the work is likely (``p >= max_interruption_risk``), the SLO must
    also hold for a re-run, which adds RTT + transfer + compute: a second, steeper line. A target
    keeps the larger of the items it can take below that risk and the items the steeper line allows.
    """
    slo_s = constraints.slo_ms / 1000
    rerun_base = zero.rtt_s + zero.compute_s
    rerun_slope = (unit.rtt_s + unit.transfer_s + unit.compute_s - rerun_base) / typical
    with np.errstate(divide="ignore", invalid="ignore"):
        plain = np.where(
            slope > 0, np.floor((slo_s - base) / slope), np.where(base <= slo_s, np.inf, 0.0)
        )
        rerun = np.floor((slo_s - base - rerun_base) / (slope + rerun_slope))
        # largest n with 1 - exp(-rate x (fixed + n / items_per_s)) < max_interruption_risk
        limit = -np.log1p(-constraints.max_interruption_risk) / table.interrupts_per_s
        safe = np.where(
            table.interrupts_per_s > 0,
            np.ceil((limit - table.fixed_s) * table.items_per_s) - 1,
            np.inf,
        )
    room = np.where(plain <= safe, plain, np.maximum(np.minimum(plain, safe), rerun))
    return np.maximum(room, 0)


def _first_fit(
    groups_order: Iterable[np.ndarray],
    free: np.ndarray,
    size: int,
    loads: Loads,
    count: np.ndarray,
    slots: np.ndarray,
    spreads: np.ndarray,
) -> int:
    """The target in the best group with room for ``size`` items, or -1.

    Within a group: a target already used by this request whose billing does not spread comes
    first; otherwise the least loaded, counting this request's shards where spreading is free.
    """
    for members in groups_order:
        fits = members[free[members] >= size]
        if fits.size == 0:
            continue
        if fits.size == 1:
            return int(fits[0])
        packing = fits[~spreads[fits] & (count[fits] > 0)]
        pool = packing if packing.size else fits
        load = loads.busy[pool] + np.where(spreads[pool], count[pool] / slots[pool], 0.0)
        order = np.lexsort((loads.utilization[pool], load))
        return int(pool[order[0]])
    return -1


def _runner_up(
    table: ScoreTable,
    workload: Workload,
    loads: Loads,
    constraints: Constraints,
    allowed: np.ndarray,
    used: np.ndarray,
    key: np.ndarray,
    total: int,
) -> Estimate | None:
    """The best allowed target not used, estimated for the whole request."""
    spare = allowed.copy()
    spare[used] = False
    if not spare.any():
        return None
    i = int(np.argmin(np.where(spare, key, np.inf)))
    cols = table.columns(np.full(len(table), float(total)), workload, loads, constraints)
    return table.estimate(i, cols, constraints, True)


# The profile at a request's shapes, as work to run ahead of placement (CostModel.profiling)
Ahead = Callable[[Mapping[str, Sequence[int]]], Callable[[], None] | None]
# A model's table, workload and profile report at a request's input shapes (CostModel.at_shapes)
Reshaper = Callable[
    [Mapping[str, Sequence[int]]], tuple[ScoreTable, Workload, Mapping[str, object]] | None
]


# A one-shard request's decision is reused this long for the same model, size, shapes and
# constraints while the fleet looks the same to placement (its ``version``: breakers, first
# answers, each target's shards in flight in quarters of its slots): deciding costs ~0.35 ms of
# numpy on a small fleet, and even reading the load columns ~0.05 ms, more than the rest of the
# front door's work on such a request. What changes with time alone (a breaker's cool-down
# ending, a target going cold) is seen within REUSE_S.
REUSE_S = 1.0
_MEMO_SIZE = 256


@dataclass(frozen=True, slots=True)
class _Memo:
    table: ScoreTable  # the table decided on: a rebuilt one (new prices, speeds) decides afresh
    target: str
    report: dict[str, Any]
    at: float
    version: int  # the fleet's, when decided


class CostPlacer:
    """The dispatcher's ``Placer`` backed by the cost model: one ScoreTable per model."""

    def __init__(
        self,
        tables: Mapping[str, ScoreTable],
        workloads: Mapping[str, Workload],
        defaults: Constraints,
        models: Mapping[str, Mapping[str, object]] | None = None,
        reshapers: Mapping[str, Reshaper] | None = None,
        *,
        ahead: Mapping[str, Ahead] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tables = dict(tables)
        self.workloads = dict(workloads)
        self.defaults = defaults
        self.models = dict(models or {})  # per model: its profile figures and their confidence
        self._reshapers = dict(reshapers or {})  # only models whose graph has dynamic dims
        self._ahead = dict(ahead or {})  # the same models: their profiles, made ahead
        self._clock = clock
        self._memo: dict[Hashable, _Memo] = {}
        self.reused = 0  # decisions answered from the memo (a test and a metric read it)

    def __call__(
        self,
        model: str,
        shards: Sequence[Shard],
        fleet: FleetLoads,
        *,
        exclude: AbstractSet[str] = frozenset(),
        constraints: Constraints | None = None,
    ) -> Placement:
        table = self.tables.get(model)
        if table is None:  # a model the config doesn't declare: price order and load alone
            return place(model, shards, fleet, exclude=exclude)
        key = None
        version = fleet.version
        if len(shards) == 1 and not exclude:  # a small request, not a re-dispatch
            key = _memo_key(shards[0], model, constraints)
            hit = self._memo.get(key)
            now = self._clock()
            if (
                hit is not None
                and hit.version == version
                and hit.table is table
                and now - hit.at < REUSE_S
            ):
                self.reused += 1
                reused = {**hit.report, "reused_decision_age_ms": round((now - hit.at) * 1e3, 3)}
                return Placement({hit.target: list(shards)}, reused)
        loads = loads_of(table, fleet)
        workload, profile = self.workloads[model], self.models.get(model)
        reshape = self._reshapers.get(model)
        at = reshape(_shapes(shards)) if reshape is not None and shards else None
        if at is not None:  # a graph with dynamic dims, priced at this request's shapes
            table, workload, profile = at
            loads = loads_of(table, fleet)
        decision = decide(
            table, workload, shards, loads, constraints or self.defaults, exclude=exclude
        )
        report = decision.report()
        if profile is not None:
            report["model"] = dict(profile)
        if key is not None and len(decision.groups) == 1:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            (target,) = decision.groups
            self._memo[key] = _Memo(table if at is None else self.tables[model], target, report,
                                    self._clock(), version)  # fmt: skip
        return Placement(decision.groups, report)

    def ahead(self, model: str, shards: Sequence[Shard]) -> Callable[[], None] | None:
        """Work placing ``shards`` would do inline that may run first, off the event loop: the
        graph profiled at a request's new shapes (``CostModel.profiling``); None when none."""
        ahead = self._ahead.get(model)
        return ahead(_shapes(shards)) if ahead is not None and shards else None


def _memo_key(shard: Shard, model: str, constraints: Constraints | None) -> Hashable:
    """What a one-shard decision depends on besides the fleet (whose ``version``, and the
    table, prices and measured speeds, are checked by identity on a hit): the model, size and
    shapes, and the request's constraints."""
    shapes = tuple((t.name, t.data.shape[1:], t.data.dtype.str) for t in shard.inputs)
    return (model, shard.items, shard.whole, shapes, constraints)


def _shapes(shards: Sequence[Shard]) -> dict[str, list[int]]:
    """A request's input shapes, one item on the batch axis (a whole shard: as they are)."""
    first = shards[0]
    return {
        t.name: list(t.data.shape) if first.whole else [1, *t.data.shape[1:]] for t in first.inputs
    }
