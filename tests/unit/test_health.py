"""Circuit breaker transitions and per-target health, driven by a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from core.backends.base import ShardFailed, ShardOk, WorkerTelemetry
from core.config import Policy, Target
from core.dispatch.health import CircuitBreaker, TargetHealth
from core.dispatch.hedging import MIN_SAMPLES
from core.errors import BadRequest, TargetUnavailable
from core.planning.loads import BreakerState
from core.planning.shards import Shard


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_breaker_opens_after_consecutive_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures=3, cooldown_s=5.0, clock=clock)
    breaker.on_failure()
    breaker.on_failure()
    breaker.on_success()  # resets the run
    breaker.on_failure()
    breaker.on_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allows()
    breaker.on_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allows()


def test_breaker_half_opens_after_cooldown_and_allows_one_probe(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures=1, cooldown_s=5.0, clock=clock)
    breaker.on_failure()
    clock.now += 4.99
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.01
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
    breaker.on_start()
    assert not breaker.allows()  # the one probe is out


def test_probe_success_closes_the_breaker(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures=1, cooldown_s=1.0, clock=clock)
    breaker.on_failure()
    clock.now += 1.0
    breaker.on_start()
    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allows()


def test_probe_failure_opens_again_for_a_new_cooldown(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures=3, cooldown_s=1.0, clock=clock)
    for _ in range(3):
        breaker.on_failure()
    clock.now += 1.0
    breaker.on_start()
    breaker.on_failure()  # a single failing probe is enough
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.5
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.5
    assert breaker.state is BreakerState.HALF_OPEN


def test_abandoned_probe_lets_the_next_shard_probe(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures=1, cooldown_s=1.0, clock=clock)
    breaker.on_failure()
    clock.now += 1.0
    breaker.on_start()
    breaker.on_abandon()
    assert breaker.allows()


def _shard(items: int = 2) -> Shard:
    return Shard("r/0", 0, 0, items, ())


def _health(clock: FakeClock, **policy: float) -> TargetHealth:
    targets = [
        Target(name="a", backend="http", max_concurrency=2),
        Target(name="b", backend="http"),
    ]
    return TargetHealth(targets, Policy(**policy), clock=clock)


def test_target_state_tracks_in_flight_ewma_and_telemetry(clock: FakeClock) -> None:
    health = _health(clock)
    state = health["a"]
    state.begin(2)
    assert health.view("a").in_flight == 2
    ok = ShardOk(_shard(), "a", (), 0.100, WorkerTelemetry(queue_depth=3, utilization=0.5))
    state.record(ok)
    state.record(ShardFailed(_shard(), "a", TargetUnavailable("503"), 0.01))
    view = health.view("a")
    assert view.in_flight == 0 and view.ok == 1 and view.failed == 1
    assert view.latency_ms == pytest.approx(100.0)
    assert view.error_rate == pytest.approx(0.2)
    assert (view.queue_depth, view.utilization, view.items_per_s) == (3, 0.5, None)
    state.begin(1)
    state.record(ShardOk(_shard(), "a", (), 0.200, WorkerTelemetry(items_per_s=50.0)))
    view = health.view("a")
    assert view.latency_ms == pytest.approx(120.0)  # 100 + 0.2 * (200 - 100)
    assert (view.queue_depth, view.items_per_s) == (3, 50.0)  # unreported values are kept


def test_client_errors_say_nothing_about_the_target(clock: FakeClock) -> None:
    health = _health(clock, breaker_failures=1)
    state = health["a"]
    state.begin(1)
    state.record(ShardFailed(_shard(), "a", BadRequest("wrong shape"), 0.01))
    view = health.view("a")
    assert view.in_flight == 0 and view.failed == 0 and view.breaker is BreakerState.CLOSED


def test_free_slots_and_probe_only(clock: FakeClock) -> None:
    health = _health(clock, breaker_failures=1, breaker_cooldown_s=1.0)
    health["a"].begin(1)
    assert health.view("a").free_slots == 1
    health["a"].record_failure()
    assert health.view("a").free_slots == 0 and not health.allows("a")
    clock.now += 1.0
    view = health.view("a")
    assert view.probe_only and view.free_slots == 1


def test_snapshot_and_exposition(clock: FakeClock) -> None:
    health = _health(clock)
    health["b"].begin(1)
    health["b"].record_ok(0.05, WorkerTelemetry(utilization=0.25))
    snap = health.snapshot()
    assert set(snap) == {"a", "b"}
    assert snap["b"]["breaker"] == "closed"
    assert snap["b"]["latency_ms"] == pytest.approx(50.0)
    assert snap["a"]["latency_ms"] is None
    text = health.exposition().decode()
    assert 'gpufan_target_utilization{target="b"} 0.25' in text
    assert 'gpufan_target_utilization{target="a"}' not in text  # unknown values are left out
    assert "# TYPE gpufan_target_in_flight gauge" in text
    assert np.isfinite(float(text.split('gpufan_target_latency_ms{target="b"} ')[1].split()[0]))


def test_stalls_open_the_breaker_and_the_window_keeps_the_wait(clock: FakeClock) -> None:
    health = _health(clock, breaker_failures=2)
    state = health["a"]
    state.begin(MIN_SAMPLES + 2)
    for _ in range(MIN_SAMPLES):  # 10 ms on the target after 490 ms queued for a slot
        state.record(ShardOk(_shard(), "a", (), 0.01), waited_s=0.5)
    assert state.p95_s() == 0.5 and health.view("a").latency_ms == pytest.approx(10.0)
    assert not state.record_stall(clock() - 1)  # it answered since: alive, only slow
    assert health.view("a").consecutive_failures == 0
    clock.now += 1
    assert state.record_stall(clock() - 0.5)
    assert state.record_stall(clock() - 0.5)  # a hung target never fails: stalls bench it
    view = health.view("a")
    assert view.breaker is BreakerState.OPEN and view.in_flight == 2  # still in flight
    state.hedges, state.hedges_won = 3, 1
    text = health.exposition().decode()
    assert "# TYPE gpufan_target_stalls_total counter" in text
    assert 'gpufan_target_stalls_total{target="a"} 2' in text
    assert 'gpufan_target_hedges_total{target="a"} 3' in text
    assert 'gpufan_target_hedges_won_total{target="a"} 1' in text
    assert 'gpufan_target_stalls_total{target="b"} 0' in text


def test_the_version_moves_only_when_state_changes_in_kind(clock: FakeClock) -> None:
    """What a reused placement depends on: a first answer, a quarter of the slots crossed, the
    breaker; not the telemetry that drifts with every answer."""
    health = TargetHealth(
        [Target(name="t", backend="http", max_concurrency=8)],
        Policy(breaker_failures=1),
        clock=clock,
    )
    state = health["t"]
    seen = [health.version]

    def moved() -> bool:
        seen.append(health.version)
        return seen[-1] != seen[-2]

    state.begin(1)
    assert not moved()  # 1 of 8 in flight: still the first quarter
    state.record_ok(0.01, WorkerTelemetry(queue_depth=1, utilization=0.2))
    assert moved()  # its first answer: it is warm now
    state.begin(1)
    state.record_ok(0.02, WorkerTelemetry(queue_depth=5, utilization=0.9))
    assert not moved()  # telemetry only
    state.begin(2)
    assert moved()  # 2 of 8: the second quarter
    state.record_failure()
    assert moved()  # the breaker opened (and one fewer in flight)
