"""The placement rule: cheapest first, ties to the least loaded, saturated spill, exclude."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.config import Policy, Target
from core.dispatch.health import TargetHealth
from core.errors import NoFeasibleTarget
from core.planning.loads import BreakerState, Candidate, HealthView
from core.planning.placer import Placer, feasible, place, place_candidates
from core.planning.shards import Shard

IDLE = HealthView(
    breaker=BreakerState.CLOSED,
    allows=True,
    probe_only=False,
    in_flight=0,
    max_concurrency=2,
    latency_ms=None,
    error_rate=0.0,
    consecutive_failures=0,
    queue_depth=None,
    utilization=None,
    items_per_s=None,
    ok=0,
    failed=0,
)
OPEN = replace(IDLE, breaker=BreakerState.OPEN, allows=False, consecutive_failures=3)


def candidate(
    name: str,
    usd: float = 0.0,
    *,
    slots: int = 2,
    models: tuple[str, ...] | None = None,
    **health: object,
) -> Candidate:
    target = Target(
        name=name, backend="http", usd_per_hour=usd, max_concurrency=slots, models=models
    )
    return Candidate(target, replace(IDLE, max_concurrency=slots, **health))  # type: ignore[arg-type]


def shards(n: int) -> list[Shard]:
    return [Shard(f"r/{i}", i, i, i + 1, ()) for i in range(n)]


def counts(plan: dict[str, list[Shard]]) -> dict[str, int]:
    return {name: len(group) for name, group in plan.items()}


def test_the_default_rule_is_a_placer() -> None:
    rule: Placer = place
    health = TargetHealth([candidate("a").target], Policy())
    assert rule("m", shards(1), health).groups == {"a": shards(1)}


def test_cheapest_target_fills_first_then_the_next_cheapest() -> None:
    cands = [candidate("dear", 3.0), candidate("cheap", 1.0), candidate("mid", 2.0)]
    plan = place_candidates("m", shards(5), cands)
    assert counts(plan) == {"cheap": 2, "mid": 2, "dear": 1}
    assert [s.index for s in plan["cheap"]] == [0, 1]


def test_ties_go_to_the_least_loaded_then_least_utilised() -> None:
    cands = [
        candidate("a", slots=4, in_flight=2),
        candidate("b", slots=4, in_flight=0, utilization=0.9),
        candidate("c", slots=4, in_flight=0, utilization=0.1),
    ]
    plan = place_candidates("m", shards(3), cands)
    # c (idle, low utilisation) first, then b (idle), then c/b again before a at load 0.5
    assert counts(plan) == {"c": 2, "b": 1}


def test_saturated_targets_spill_to_the_least_loaded() -> None:
    cands = [candidate("cheap", 0.0, slots=1), candidate("dear", 5.0, slots=3, in_flight=1)]
    plan = place_candidates("m", shards(6), cands)
    # cheap takes 1 (full), dear fills to 3 in flight, then the rest go to the least loaded
    assert counts(plan) == {"cheap": 2, "dear": 4}


def test_busy_cheap_target_is_skipped_while_others_have_room() -> None:
    cands = [candidate("cheap", 0.0, in_flight=2), candidate("dear", 9.0)]
    assert counts(place_candidates("m", shards(2), cands)) == {"dear": 2}


def test_open_breakers_and_other_models_are_skipped() -> None:
    cands = [
        candidate("broken", 0.0, **{f: getattr(OPEN, f) for f in ("breaker", "allows")}),
        candidate("other", 0.0, models=("x",)),
        candidate("ok", 5.0),
    ]
    assert counts(place_candidates("m", shards(3), cands)) == {"ok": 3}
    assert [c.target.name for c in feasible("m", cands)] == ["ok"]


def test_exclude_avoids_failed_targets_but_falls_back_to_them() -> None:
    cands = [candidate("a", 0.0), candidate("b", 1.0)]
    assert counts(place_candidates("m", shards(1), cands, exclude={"a"})) == {"b": 1}
    assert counts(place_candidates("m", shards(1), cands, exclude={"a", "b"})) == {"a": 1}


def test_half_open_target_counts_as_one_slot() -> None:
    cands = [candidate("probe", 0.0, slots=8, probe_only=True), candidate("b", 1.0, slots=8)]
    assert counts(place_candidates("m", shards(3), cands)) == {"probe": 1, "b": 2}


def test_no_feasible_target_names_the_model_and_every_state() -> None:
    cands = [
        candidate("broken", **{"breaker": BreakerState.OPEN, "allows": False}),
        candidate("other", models=("x",)),
    ]
    with pytest.raises(NoFeasibleTarget) as e:
        place_candidates("m", shards(1), cands)
    message = str(e.value)
    assert "'m'" in message and "broken: breaker open" in message
    assert "other: does not serve it" in message
    assert e.value.status == 503
    with pytest.raises(NoFeasibleTarget, match="no targets are configured"):
        place_candidates("m", shards(1), [])


def test_free_slots_count_feasible_targets_and_one_probe() -> None:
    targets = [
        Target(name="a", backend="http", endpoint="http://a", max_concurrency=4),
        Target(name="b", backend="http", endpoint="http://b", max_concurrency=2),
        Target(name="other", backend="http", endpoint="http://o", max_concurrency=3, models=("x",)),
    ]
    now = [0.0]
    health = TargetHealth(
        targets, Policy(breaker_failures=1, breaker_cooldown_s=5), clock=lambda: now[0]
    )
    assert health.free_slots("m") == 6
    health["a"].begin(1)
    assert health.free_slots("m") == 5
    health["b"].begin(1)
    health["b"].record_failure()  # b's breaker opens: no slots
    assert health.free_slots("m") == 3
    now[0] = 10.0  # cooled down: half-open, one probe
    assert health.free_slots("m") == 4
    assert health.free_slots("x") == 7  # a and b serve every model; other serves only x
    health["a"].begin(5)  # over-committed: never negative
    assert health.free_slots("m") == 1


def test_the_default_placer_reads_live_health() -> None:
    targets = [
        Target(name="cheap", backend="http", endpoint="http://c", max_concurrency=1),
        Target(name="dear", backend="http", endpoint="http://d", usd_per_hour=1.0),
    ]
    health = TargetHealth(targets, Policy())
    health["cheap"].begin(1)  # its only slot is taken
    assert counts(place("m", shards(2), health).groups) == {"dear": 2}


def test_every_shard_is_placed_exactly_once() -> None:
    cands = [candidate(n, float(i % 2), slots=i + 1) for i, n in enumerate("abcde")]
    plan = place_candidates("m", shards(40), cands)
    placed = sorted(s.index for group in plan.values() for s in group)
    assert placed == list(range(40))
