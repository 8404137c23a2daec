"""One autoscaler pass: read history -> forecast -> plan -> reconcile (or a dry-run diff).

``Autoscaler.run_once`` is what ``gpufan autoscale --once`` and the scheduled function entry points
(through ``core.frontdoor.control.run_control_loop``) call. Per model it reads the history of the
last ``lookback_s`` (the interval in progress left out: it is still filling), forecasts the items/s
of the next intervals, and plans each target's warm instances; plans of several models add up per
target (a conservative sum: a shared instance may serve both). Targets the autoscaler cannot set
(local, http) are counted as fixed capacity. A model without a single record in the lookback is left
alone: no history is no evidence that the load is zero.

Limits per target: the smaller of the cloud's own maximum (read with the current state) and
``AutoscaleSettings.max_instances``. Throughput comes from the cost model; a model whose graph
gives none is planned from what the history measured (items per busy GPU-second).

The forecast is the candidate that leads a rolling backtest over the last ``backtest_intervals``
of the history (``forecast``), and the headroom is sized for ``target_attainment`` from its errors
(``headroom.plan_for``); burst instances a platform holds are not read, so they count as none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from core.autoscale.capacity import CapacityPlan
from core.autoscale.forecast import forecaster_for, horizon_for
from core.autoscale.headroom import plan_for
from core.autoscale.history import HistoryStore
from core.autoscale.reconcile import (
    Change,
    Current,
    RateLimit,
    Reconciler,
    read_states,
    reconcile,
    reconcilers_for,
)
from core.autoscale.settings import DEFAULT_MAX_INSTANCES, AutoscaleSettings, plan_policy, units_for
from core.config import Policy, Target
from core.planning.costmodel import CostModel

__all__ = ["AutoscaleReport", "Autoscaler", "ModelPlan"]


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """What one model's forecast asked for."""

    model: str
    method: str  # the forecaster that led the backtest (forecast.Forecast.method), or skipped
    intervals: int  # history intervals read
    required_items_per_s: float
    shortfall_items_per_s: float
    usd_per_hour: float
    reason: str
    expected_attainment: float | None = None  # predicted share of requests inside the SLO
    backtest_loss: dict[str, float] = field(default_factory=dict)  # what chose the method
    untried: tuple[str, ...] = ()


@dataclass(frozen=True)
class AutoscaleReport:
    """A pass's result: per-model plans and per-target changes."""

    at: float
    dry_run: bool
    models: tuple[ModelPlan, ...]
    changes: tuple[Change, ...]
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        """JSON-able, for the scheduled functions' logs and answers."""
        return {
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
            "dry_run": self.dry_run,
            "models": [asdict(m) for m in self.models],
            "changes": [asdict(c) for c in self.changes],
            "applied": sum(c.action == "applied" for c in self.changes),
            "notes": list(self.notes),
        }


class Autoscaler:
    """Forecast, plan and reconcile warm capacity for ``targets``.

    Args:
        models: names of the models served (history is kept per model).
        targets, backends: the front door's; backends without warm capacity are ignored.
        cost_model: throughput and prices per target.
        history: the store the front door records into.
        reconcilers: per backend name; default ``reconcilers_for(backends)``.
        clock: epoch seconds (history buckets and rate-limit marks are wall-clock).
    """

    def __init__(
        self,
        models: Sequence[str],
        targets: Sequence[Target],
        backends: Mapping[str, Any],
        cost_model: CostModel,
        history: HistoryStore,
        *,
        settings: AutoscaleSettings | None = None,
        policy: Policy | None = None,
        reconcilers: Mapping[str, Reconciler] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.models = tuple(models)
        self.targets = tuple(targets)
        self.cost_model = cost_model
        self.history = history
        self.settings = settings or AutoscaleSettings()
        self.policy = policy or cost_model.policy
        self.reconcilers = dict(reconcilers or reconcilers_for(backends))
        self._clock = clock

    def _limits(self, states: Mapping[str, Any]) -> dict[str, int]:
        limits = {}
        for t in self.targets:
            state = states.get(t.name)
            cloud = state.max_instances if isinstance(state, Current) else None
            own = self.settings.max_instances.get(t.name)
            found = [v for v in (cloud, own) if v is not None]
            limits[t.name] = min(found) if found else DEFAULT_MAX_INSTANCES
        return limits

    def _plan(
        self, model: str, now: float, limits: Mapping[str, int]
    ) -> tuple[ModelPlan, dict[str, int]]:
        auto = self.settings
        end = math.floor(now / auto.interval_s) * auto.interval_s
        series = self.history.series(model, end - auto.lookback_s, end, auto.interval_s)
        first = next((i for i, r in enumerate(series.requests) if r > 0), None)
        if first is None:
            return ModelPlan(model, "skipped", 0, 0, 0, 0, "no history: left as it is"), {}
        y = series.items_per_s[first:]
        scalable = {t.name for t in self.targets if t.backend in self.reconcilers}
        units = units_for(self.cost_model, model, limits)
        measured = series.items_per_busy_s
        units = [
            u if math.isfinite(u.items_per_s) or measured is None
            else replace(u, items_per_s=measured * u.gpus)
            for u in units
        ]  # fmt: skip
        policy = plan_policy(auto, self.policy.slo_ms)
        fixed = sum(  # always-on capacity the autoscaler cannot change (local, http)
            u.items_per_s * policy.utilisation
            for u in units
            if u.name not in scalable and math.isfinite(u.items_per_s)
        )
        units = [u for u in units if u.name in scalable and math.isfinite(u.items_per_s)]
        lead = horizon_for(max((u.cold_start_s for u in units), default=0.0), auto.interval_s)
        forecaster = forecaster_for(
            y, auto.interval_s, lead, backtest=auto.backtest_intervals, quantile=auto.quantile
        )
        forecast = forecaster.predict(lead, auto.quantile)
        plan: CapacityPlan = plan_for(
            forecast, units, policy, target=auto.target_attainment,
            slack_s=policy.slo_s - auto.service_s, hold_s=auto.burst_hold_s,
            fixed_items_per_s=fixed,
        )  # fmt: skip
        return (
            ModelPlan(
                model, forecast.method, len(y), plan.required_items_per_s,
                plan.shortfall_items_per_s, plan.usd_per_hour, plan.reason,
                plan.expected_attainment, forecast.backtest_loss, forecast.untried,
            ),
            plan.instances,
        )  # fmt: skip

    async def run_once(self, dry_run: bool = False) -> AutoscaleReport:
        """One pass; with ``dry_run`` the diff is reported and nothing is sent."""
        now = self._clock()
        scalable = [t for t in self.targets if t.backend in self.reconcilers]
        if not scalable:
            note = "no target with warm capacity to set (cloudrun, aca, aci, batch)"
            return AutoscaleReport(now, dry_run, (), (), (note,))
        states = await read_states(scalable, self.reconcilers)
        limits = self._limits(states)
        desired: dict[str, int] = {}
        plans = []
        for model in self.models:
            plan, instances = self._plan(model, now, limits)
            plans.append(plan)
            for name, n in instances.items():
                desired[name] = min(desired.get(name, 0) + n, limits[name])
        limit = RateLimit(
            self.settings.min_change_interval_s, self._clock, self.history.marks(),
            None if dry_run else self.history.mark,
        )  # fmt: skip
        changes = await reconcile(
            desired, scalable, self.reconcilers, states, limit=limit, dry_run=dry_run
        )
        return AutoscaleReport(now, dry_run, tuple(plans), tuple(changes))
