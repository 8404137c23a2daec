"""The autoscaler's settings, and the planner's view of a fleet built from the cost model.

``AutoscaleSettings`` (in ``core.config``) is the ``autoscale:`` section of ``gpufan.yaml``.
Everything here is read once at start, never from the environment except
the history location, which ``core.autoscale.history.open_history`` resolves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from core.autoscale.capacity import PlanPolicy, Unit
from core.config import AutoscaleSettings

if TYPE_CHECKING:
    from core.config import Settings
    from core.planning.costmodel import CostModel

__all__ = ["DEFAULT_MAX_INSTANCES", "AutoscaleSettings", "of", "plan_policy", "units_for"]

DEFAULT_MAX_INSTANCES = 64  # a target with no limit from its cloud or the config


def of(settings: Settings) -> AutoscaleSettings:
    """The settings' ``autoscale`` section."""
    return settings.autoscale


def plan_policy(auto: AutoscaleSettings, slo_ms: float) -> PlanPolicy:
    return PlanPolicy(
        interval_s=auto.interval_s,
        utilisation=auto.utilisation,
        on_demand_floor=auto.on_demand_floor,
        spot_reserve=auto.spot_reserve,
        slo_s=slo_ms / 1000,
        quota_gpus=dict(auto.quota_gpus),
    )


def units_for(
    cost_model: CostModel, model: str, limits: Mapping[str, int] | None = None
) -> list[Unit]:
    """The targets serving ``model`` as planner units: throughput and price per instance from
    the cost model, the limit from ``limits`` (else ``DEFAULT_MAX_INSTANCES``)."""
    limits = limits or {}
    return [
        Unit(
            name=f.target.name,
            cloud=f.target.cloud,
            pricing=f.target.pricing,
            items_per_s=f.items_per_s,
            usd_per_hour=f.usd_per_hour,
            cold_start_s=f.target.cold_start_s,
            scale_to_zero=f.target.scale_to_zero,
            max_instances=limits.get(f.target.name, DEFAULT_MAX_INSTANCES),
            gpus=f.target.gpus,
            idle_hold_s=f.target.idle_hold_s,
        )
        for f in cost_model.target_facts(model)
        if f.target.serves(model)
    ]
