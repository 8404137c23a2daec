"""The simulator's core (``core.autoscale.simulate``) and its traces (``core.autoscale.trace``)."""

from __future__ import annotations

import numpy as np
import pytest

from core.autoscale.capacity import PlanPolicy, Unit
from core.autoscale.simulate import SimConfig, simulate_all
from core.autoscale.trace import Trace, parse_trace_csv, synthetic_trace

FLEET = (
    Unit("od", "gcp", "on_demand", 2000.0, 0.70, cold_start_s=150, max_instances=40),
    Unit("spot", "gcp", "spot", 2000.0, 0.28, cold_start_s=150, max_instances=40),
    Unit("run", "gcp", "serverless", 2000.0, 1.05, cold_start_s=10, scale_to_zero=True,
         max_instances=20),
)  # fmt: skip


def config(**over: float) -> SimConfig:
    return SimConfig(FLEET, {"spot": 0.01}, PlanPolicy(slo_s=1.0), **over)


@pytest.fixture(scope="module")
def results():
    trace = synthetic_trace(hours=6, seed=3, mean_rps=2000)
    return trace, simulate_all(trace, config(), seed=3)


def test_every_strategy_replays_the_same_requests(results) -> None:
    trace, rs = results
    assert [r.name for r in rs] == ["autoscaler", "static-peak", "reactive", "spot-only"]
    assert len({round(r.requests) for r in rs}) == 1
    assert rs[0].items == pytest.approx(rs[0].requests * 8)
    assert len(rs[0].load) == len(trace.rate) == 360


def test_static_peak_meets_the_slo_and_costs_its_fleet_all_day(results) -> None:
    trace, rs = results
    static = rs[1]
    assert static.slo_attainment > 0.999
    n = int(np.ceil(trace.rate.max() * 8 / (2000 * 0.8)))
    assert static.cost_usd == pytest.approx(n * 0.70 * 6, rel=1e-6)
    assert static.gpu_hours["gcp"] == pytest.approx(n * 6)


def test_autoscaler_is_cheaper_than_static_peak_and_keeps_the_slo(results) -> None:
    _, (ours, static, *_) = results
    assert ours.usd_per_million < 0.6 * static.usd_per_million
    assert ours.slo_attainment >= 0.99
    assert ours.cumulative_usd == sorted(ours.cumulative_usd)


def test_a_fleet_without_warm_capacity_misses_the_slo_through_cold_starts() -> None:
    # load from nothing with only a scale-to-zero unit whose cold start exceeds the SLO
    trace = Trace(np.full(5, 100.0), np.zeros(0), 60.0, "flat")
    fleet = (
        Unit("run", "gcp", "serverless", 2000.0, 1.0, cold_start_s=30, scale_to_zero=True),
        Unit("od", "gcp", "on_demand", 2000.0, 0.7, cold_start_s=120, max_instances=0),
        Unit("spot", "gcp", "spot", 2000.0, 0.3, cold_start_s=120, max_instances=0),
    )
    cfg = SimConfig(fleet, {}, PlanPolicy(slo_s=1.0))
    reactive = simulate_all(trace, cfg, seed=0)[2]
    assert reactive.slo_attainment < 1.0


def test_simulations_are_deterministic_for_a_seed() -> None:
    trace = synthetic_trace(hours=1, seed=5, mean_rps=500)
    a = simulate_all(trace, config(), seed=5)
    b = simulate_all(trace, config(), seed=5)
    assert [r.cost_usd for r in a] == [r.cost_usd for r in b]


def test_synthetic_trace_is_diurnal_with_two_days_of_history() -> None:
    trace = synthetic_trace(hours=24, seed=1)
    assert trace.rate.size == 1440 and trace.history.size == 2 * 1440
    assert trace.rate.max() > 1.5 * trace.rate.min()


def test_csv_traces_in_both_layouts() -> None:
    by_time = parse_trace_csv(
        "timestamp,requests\n2026-01-01T00:00:00Z,60\n2026-01-01T00:00:30Z,60\n"
        "2026-01-01T00:02:00Z,120\n"
    )
    assert list(by_time.rate) == [2.0, 0.0, 2.0]
    by_minute = parse_trace_csv("minute,items\n0,480\n1,960\n", items_per_request=8)
    assert list(by_minute.rate) == [1.0, 2.0]
    with pytest.raises(ValueError, match="header"):
        parse_trace_csv("when,how_many\n1,2\n")
    with pytest.raises(ValueError, match="line 3"):
        parse_trace_csv("minute,items\n0,1\n1,many\n")
