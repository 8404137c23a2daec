"""Capacity plans (``core.autoscale.capacity``): properties over random fleets and forecasts."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from core.autoscale.capacity import PlanPolicy, Unit, plan_capacity, window_demand

EPS = 1e-6


@st.composite
def fleets(draw: st.DrawFn) -> list[Unit]:
    n = draw(st.integers(1, 5))
    units = []
    for i in range(n):
        units.append(
            Unit(
                name=f"u{i}",
                cloud=draw(st.sampled_from(["aws", "gcp", "azure"])),
                pricing=draw(st.sampled_from(["on_demand", "spot", "serverless"])),
                items_per_s=draw(st.floats(10, 5000)),
                usd_per_hour=draw(st.floats(0.05, 5)),
                cold_start_s=draw(st.sampled_from([0.0, 10.0, 60.0, 150.0, 300.0])),
                scale_to_zero=draw(st.booleans()),
                max_instances=draw(st.integers(0, 50)),
            )
        )
    return units


forecasts = st.lists(st.floats(0, 50_000), min_size=1, max_size=8)
policies = st.builds(
    PlanPolicy,
    utilisation=st.floats(0.5, 1.0),
    on_demand_floor=st.floats(0, 1),
    spot_reserve=st.booleans(),
)


def _required(units: list[Unit], upper: list[float], policy: PlanPolicy) -> float:
    """What a plan must cover, computed here rather than read from the plan under test."""
    lead = max((u.cold_start_s for u in units if u.max_instances > 0), default=0.0)
    return window_demand(upper, lead, policy.interval_s)


def _usable(u: Unit, n: int, p: PlanPolicy) -> float:
    return n * u.items_per_s * p.utilisation


@settings(max_examples=300, deadline=None)
@given(fleets(), forecasts, policies)
def test_plans_cover_the_upper_quantile_respect_limits_and_keep_the_floor(
    units: list[Unit], upper: list[float], policy: PlanPolicy
) -> None:
    plan = plan_capacity(upper, units, policy)
    by_name = {u.name: u for u in units}
    required = _required(units, upper, policy)
    # never above limits
    for a in plan.allocations:
        assert 0 <= a.instances <= by_name[a.name].max_instances
        assert a.lead_s == by_name[a.name].cold_start_s  # pre-warm lead = cold start
    if required <= policy.idle_items_per_s:
        return
    capacity = sum(_usable(by_name[a.name], a.instances, policy) for a in plan.allocations)
    non_spot = sum(
        _usable(by_name[a.name], a.instances, policy)
        for a in plan.allocations
        if not by_name[a.name].spot
    )
    all_max = sum(_usable(u, u.max_instances, policy) for u in units)
    non_spot_max = sum(_usable(u, u.max_instances, policy) for u in units if not u.spot)
    # never below the forecast upper quantile, unless the limits cannot reach it
    assert capacity >= min(required, all_max) - EPS
    assert math.isclose(plan.capacity_items_per_s, capacity, rel_tol=1e-9, abs_tol=EPS)
    if capacity < required - EPS:
        assert plan.shortfall_items_per_s > 0
    # the on-demand floor is always kept, up to what non-spot limits allow
    assert non_spot >= min(policy.on_demand_floor * required, non_spot_max) - EPS
    # N+1: with spot in the plan, one more spot instance's worth is covered when room allows
    spot_used = [by_name[a.name] for a in plan.allocations if a.instances and by_name[a.name].spot]
    if policy.spot_reserve and spot_used:
        reserve = max(_usable(u, 1, policy) for u in spot_used)
        assert capacity >= min(required + reserve, all_max) - EPS


@settings(max_examples=100, deadline=None)
@given(fleets(), policies)
def test_quotas_cap_each_clouds_gpus(units: list[Unit], policy: PlanPolicy) -> None:
    quota = PlanPolicy(
        utilisation=policy.utilisation,
        on_demand_floor=policy.on_demand_floor,
        quota_gpus={"aws": 3, "gcp": 5, "azure": 0},
    )
    plan = plan_capacity([40_000.0], units, quota)
    for cloud, cap in quota.quota_gpus.items():
        assert sum(a.instances for a in plan.allocations if a.cloud == cloud) <= cap


def test_pre_warm_lead_equals_the_cold_start() -> None:
    # GIVEN a flat forecast that rises three intervals (180 s) from now
    upper = [100.0, 100.0, 100.0, 1000.0, 1000.0]
    policy = PlanPolicy(interval_s=60, utilisation=1.0, on_demand_floor=0, spot_reserve=False)

    def plan(cold_start_s: float) -> int:
        unit = Unit("vm", "aws", "on_demand", 100.0, 1.0, cold_start_s=cold_start_s)
        return plan_capacity(upper, [unit], policy).instances["vm"]

    # THEN a unit that needs 180 s to start is sized for the rise now; one that needs 120 s not
    # yet (it will be, one interval later), and a 121 s one is (its window reaches interval 3)
    assert plan(180) == 10
    assert plan(121) == 10
    assert plan(120) == 1
    assert plan(0) == 1


def test_cheapest_mix_prefers_spot_above_the_floor() -> None:
    units = [
        Unit("od", "gcp", "on_demand", 1000, 0.70),
        Unit("spot", "gcp", "spot", 1000, 0.28),
        Unit("pricey-spot", "aws", "spot", 1000, 0.60),
    ]
    policy = PlanPolicy(utilisation=1.0, on_demand_floor=0.3)
    plan = plan_capacity([10_000.0], units, policy)
    assert plan.instances == {"od": 3, "spot": 8, "pricey-spot": 0}  # 7 + 1 spare
    assert plan.non_spot_items_per_s >= 3000
    assert plan.reserve_items_per_s == 1000


def test_scale_to_zero_when_idle_and_a_cold_start_fits_the_slo() -> None:
    run = Unit("run", "gcp", "serverless", 1000, 1.0, cold_start_s=0.5, scale_to_zero=True)
    vm = Unit("vm", "gcp", "on_demand", 1000, 0.7, cold_start_s=120)
    plan = plan_capacity([0.0, 0.0], [run, vm], PlanPolicy(slo_s=1.0))
    assert plan.instances == {"run": 0, "vm": 0}
    assert "scale to zero" in plan.reason
    # a cold start longer than the SLO: one non-spot instance stays warm
    plan = plan_capacity([0.0], [run, vm], PlanPolicy(slo_s=0.2))
    assert sum(plan.instances.values()) == 1


@settings(max_examples=200, deadline=None)
@given(fleets(), forecasts, policies)
def test_a_load_one_instance_covers_never_costs_more_than_that_instance(
    units: list[Unit], upper: list[float], policy: PlanPolicy
) -> None:
    plan = plan_capacity(upper, units, policy)
    required = _required(units, upper, policy)
    singles = [
        u.usd_per_hour
        for u in units
        if not u.spot and u.max_instances >= 1 and _usable(u, 1, policy) >= required > 0
    ]
    if required > policy.idle_items_per_s and singles:
        assert plan.usd_per_hour <= min(singles) + 1e-9
        assert plan.capacity_items_per_s >= required - EPS


def test_a_small_load_is_one_on_demand_instance_not_a_floor_plus_a_spare() -> None:
    units = [
        Unit("small-od", "aws", "on_demand", 300, 0.24),
        Unit("big-od", "aws", "on_demand", 1000, 0.95),
        Unit("spot", "gcp", "spot", 1000, 0.50),
    ]
    policy = PlanPolicy(utilisation=0.8, on_demand_floor=0.3)
    # The mix would be small-od for the floor, spot for the rest and a spare spot: $1.24/h.
    small = plan_capacity([500.0], units, policy)
    assert small.instances == {"small-od": 0, "big-od": 1, "spot": 0}
    assert small.usd_per_hour == pytest.approx(0.95) and "small load" in small.reason
    large = plan_capacity([3000.0], units, policy)  # past one instance: floor, spot and spare
    assert large.instances["spot"] >= 2 and "small load" not in large.reason


def test_burst_room_that_can_take_over_a_reclaimed_pool_replaces_the_floor() -> None:
    units = [
        Unit("od", "gcp", "on_demand", 1000, 0.70, cold_start_s=150),
        Unit("spot", "gcp", "spot", 1000, 0.28, cold_start_s=150),
        Unit("run", "gcp", "serverless", 1000, 1.05, cold_start_s=10, max_instances=50),
    ]
    policy = PlanPolicy(utilisation=0.8, on_demand_floor=0.3)
    fixed = plan_capacity([8000.0], units, policy)
    assert fixed.non_spot_items_per_s >= 0.3 * 8000
    # 50 serverless instances (40k items/s) would carry the whole load within their cold start
    covered = plan_capacity([8000.0], units, policy, burst_items_per_s=40000.0)
    assert covered.instances["od"] == 0 and covered.usd_per_hour < fixed.usd_per_hour
    assert covered.capacity_items_per_s >= 8000.0
    # burst room short of the floor leaves the rest of the floor on demand
    partial = plan_capacity([8000.0], units, policy, burst_items_per_s=1600.0)
    assert 0 < partial.non_spot_items_per_s < fixed.non_spot_items_per_s + 1e-9


def test_a_plan_reports_the_attainment_its_capacity_buys() -> None:
    units = [Unit("spot", "gcp", "spot", 1000, 0.28), Unit("od", "gcp", "on_demand", 1000, 0.7)]
    seen: list[float] = []

    def attainment(capacity: float) -> float:
        seen.append(capacity)
        return 0.995

    plan = plan_capacity([2500.0], units, PlanPolicy(), attainment)
    assert plan.expected_attainment == 0.995
    assert seen == [plan.capacity_items_per_s]
    assert plan_capacity([2500.0], units, PlanPolicy()).expected_attainment is None
