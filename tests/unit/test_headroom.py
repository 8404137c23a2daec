"""Headroom sized for the SLO (``core.autoscale.headroom``), checked against the fluid queue it
models and against the plans it buys."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.autoscale.capacity import PlanPolicy, Unit
from core.autoscale.forecast import Forecast
from core.autoscale.headroom import Costs, Headroom, burst_capacity, costs_for, plan_for

FLEET = (
    Unit("od", "gcp", "on_demand", 1000.0, 0.70, cold_start_s=150, max_instances=40),
    Unit("spot", "gcp", "spot", 1000.0, 0.28, cold_start_s=150, max_instances=40),
    Unit("run", "gcp", "serverless", 1000.0, 1.05, cold_start_s=10, max_instances=10),
)  # fmt: skip


def queue_attainment(load: float, capacity: float, burst: float, start: float) -> float:
    """One minute of a fluid FIFO queue, second by second: the share of requests that wait at
    most 0.9 s, burst capacity arriving after ``start`` seconds."""
    backlog, ok = 0.0, 0.0
    for s in range(60):
        cap = capacity + (burst if s >= start else 0.0)
        end = max(0.0, backlog + load - cap)
        # arrivals spread over the second: each waits what is queued ahead of it
        waits = (backlog + np.linspace(0, 1, 101) * (end - backlog)) / cap
        ok += float(np.mean(waits <= 0.9))
        backlog = end
    return ok / 60


@pytest.mark.parametrize("load", [900.0, 1050.0, 1500.0, 3000.0, 5900.0, 6100.0, 20000.0])
def test_the_attainment_model_agrees_with_a_fluid_queue(load: float) -> None:
    room = Headroom(np.array([load]), 5000.0, 10.0, 60.0, 0.9)
    assert room.attainment(1000.0) == pytest.approx(
        queue_attainment(load, 1000.0, 5000.0, 10), abs=0.002
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-500, 3000), min_size=10, max_size=200),
    st.floats(0.5, 0.999),
    st.floats(0, 5000),
)
def test_required_is_the_least_capacity_that_meets_the_target(errors, target, burst) -> None:
    room = Headroom.of(1000.0, np.array(errors), (burst, 10.0), 60.0, 0.9)
    need = room.required(target)
    assert room.attainment(need) >= target or need == room.loads.max()
    # one load less would not do (the search runs over the possible loads)
    below = room.loads[room.loads < need]
    if len(below):
        assert room.attainment(float(below.max())) < target
    # and attainment never falls as capacity grows
    grid = np.linspace(0, float(room.loads.max()) + 1, 30)
    values = [room.attainment(c) for c in grid]
    assert np.all(np.diff(values) >= -1e-12)


def test_more_burst_capacity_needs_less_warm_headroom() -> None:
    errors = np.random.default_rng(1).normal(0, 200, 500)
    without = Headroom.of(1000.0, errors, (0.0, 10.0), 60.0, 0.9).required(0.99)
    with_burst = Headroom.of(1000.0, errors, (5000.0, 10.0), 60.0, 0.9).required(0.99)
    assert with_burst < without
    assert without >= float(np.quantile(1000 + errors, 0.95))


def test_costs_buy_more_warm_capacity_when_bursts_are_held_long() -> None:
    # frequent small misses: a burst instance held 15 minutes costs more than a warm one
    errors = np.random.default_rng(2).normal(0, 300, 1000)
    room = Headroom.of(1000.0, errors, (10000.0, 10.0), 60.0, 0.9)
    least = room.required(0.9)
    held = room.required(0.9, Costs(((1e9, 0.0003),), 1.05, 900.0, 900.0))
    brief = room.required(0.9, Costs(((1e9, 0.0003),), 1.05, 900.0, 1.0))
    assert held > least
    assert brief == pytest.approx(least)
    options = np.array([least, held])
    cost = room.usd_per_hour(options, Costs(((1e9, 0.0003),), 1.05, 900.0, 900.0))
    assert cost[1] <= cost[0]


def test_burst_capacity_and_costs_come_from_the_serverless_units() -> None:
    assert burst_capacity(FLEET, 0.8) == (8000.0, 10.0)
    costs = costs_for(FLEET, 0.8, 900.0)
    assert costs is not None
    # spot first, then on-demand once the 40 spot instances are used
    assert costs.warm_tiers == (
        (32000.0, pytest.approx(0.28 / 800)),
        (32000.0, pytest.approx(0.7 / 800)),
    )
    cost = costs.warm_usd_per_hour(np.array([800.0, 32000.0, 40000.0, 80000.0]))
    assert cost == pytest.approx([0.28, 40 * 0.28, 40 * 0.28 + 10 * 0.7, 40 * 0.28 + 60 * 0.7])
    assert costs.burst_usd_per_hour == 1.05 and costs.burst_items_per_s == 800.0
    assert costs_for(FLEET[:2], 0.8, 900.0) is None


def forecast(errors: np.ndarray, mean: float = 5000.0) -> Forecast:
    m = np.full(4, mean)
    return Forecast(m, m + np.quantile(errors, 0.95), errors, "test", 0.95)


def test_a_plan_says_what_attainment_it_expects_and_meets_the_target() -> None:
    errors = np.random.default_rng(3).normal(0, 500, 600)
    policy = PlanPolicy(slo_s=1.0)
    plan = plan_for(forecast(errors), FLEET, policy, target=0.99, slack_s=0.9, hold_s=900.0)
    assert plan.expected_attainment is not None and plan.expected_attainment >= 0.99
    assert plan.capacity_items_per_s >= plan.required_items_per_s
    # the burst room takes over a reclaimed spot pool: no on-demand floor is kept for it
    assert plan.instances["od"] == 0 and plan.instances["spot"] > 0


def test_without_scored_errors_the_plan_covers_the_upper_quantile() -> None:
    f = Forecast(np.full(4, 5000.0), np.full(4, 7500.0), np.zeros(0), "ewma", 0.95)
    plan = plan_for(f, FLEET, PlanPolicy(), target=0.99, slack_s=0.9, hold_s=900.0)
    assert plan.required_items_per_s == 7500.0
    assert plan.expected_attainment is None


def test_always_on_capacity_is_subtracted_first() -> None:
    errors = np.zeros(50)
    plan = plan_for(
        forecast(errors, 5000.0), FLEET, PlanPolicy(), target=0.99, slack_s=0.9,
        hold_s=900.0, fixed_items_per_s=4000.0,
    )  # fmt: skip
    assert plan.required_items_per_s == pytest.approx(1000.0)


def test_each_interval_of_the_lead_is_sized_with_the_errors_of_its_own_horizon() -> None:
    # a timer forecast one interval ahead, known to within 50 items/s there, while four
    # intervals ahead the errors spread over 2,000: the plan covers the timer with the near
    # errors, and the far interval with the far ones
    rng = np.random.default_rng(4)
    near, far = rng.normal(0, 50, 400), rng.normal(0, 2000, 400)
    mean = np.array([9000.0, 3000.0, 3000.0, 3000.0])
    f = Forecast(mean, mean, far, "test", 0.95, errors_by_horizon=(near, far, far, far))
    policy = PlanPolicy(slo_s=1.0)
    plan = plan_for(f, FLEET, policy, target=0.99, slack_s=0.9, hold_s=900.0)
    assert 9000 <= plan.required_items_per_s <= 9300  # the timer and its near errors
    lead_only = Forecast(mean, mean, far, "test", 0.95)
    blunt = plan_for(lead_only, FLEET, policy, target=0.99, slack_s=0.9, hold_s=900.0)
    assert blunt.required_items_per_s > plan.required_items_per_s + 1000


def test_forecasts_carry_their_errors_per_horizon() -> None:
    from core.autoscale.forecast import forecaster_for

    y = 1000 + 100 * np.random.default_rng(5).standard_normal(600)
    f = forecaster_for(y, 60.0, 3).predict(3)
    assert len(f.errors_by_horizon) == 3
    assert f.errors_by_horizon[-1] is f.errors or np.array_equal(f.errors_by_horizon[-1], f.errors)
    assert all(len(e) >= 10 for e in f.errors_by_horizon)
