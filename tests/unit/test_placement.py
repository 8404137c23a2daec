"""The placement rule: cheapest first, ties to the least loaded, saturated spill, exclude."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from core.config import Target
from core.errors import NoFeasibleTarget
from core.health import BreakerState, HealthView
from core.placement import Candidate, Placer, feasible, parallelism, place
from core.plan import Shard

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
    assert rule("m", shards(1), [candidate("a")]).groups == {"a": shards(1)}


def test_cheapest_target_fills_first_then_the_next_cheapest() -> None:
    cands = [candidate("dear", 3.0), candidate("cheap", 1.0), candidate("mid", 2.0)]
    plan = place("m", shards(5), cands).groups
    assert counts(plan) == {"cheap": 2, "mid": 2, "dear": 1}
    assert [s.index for s in plan["cheap"]] == [0, 1]


def test_ties_go_to_the_least_loaded_then_least_utilised() -> None:
    cands = [
        candidate("a", slots=4, in_flight=2),
        candidate("b", slots=4, in_flight=0, utilization=0.9),
        candidate("c", slots=4, in_flight=0, utilization=0.1),
    ]
    plan = place("m", shards(3), cands).groups
    # c (idle, low utilisation) first, then b (idle), then c/b again before a at load 0.5
    assert counts(plan) == {"c": 2, "b": 1}


def test_saturated_targets_spill_to_the_least_loaded() -> None:
    cands = [candidate("cheap", 0.0, slots=1), candidate("dear", 5.0, slots=3, in_flight=1)]
    plan = place("m", shards(6), cands).groups
    # cheap takes 1 (full), dear fills to 3 in flight, then the rest go to the least loaded
    assert counts(plan) == {"cheap": 2, "dear": 4}


def test_busy_cheap_target_is_skipped_while_others_have_room() -> None:
    cands = [candidate("cheap", 0.0, in_flight=2), candidate("dear", 9.0)]
    assert counts(place("m", shards(2), cands).groups) == {"dear": 2}


def test_open_breakers_and_other_models_are_skipped() -> None:
    cands = [
        candidate("broken", 0.0, **{f: getattr(OPEN, f) for f in ("breaker", "allows")}),
        candidate("other", 0.0, models=("x",)),
        candidate("ok", 5.0),
    ]
    assert counts(place("m", shards(3), cands).groups) == {"ok": 3}
    assert [c.target.name for c in feasible("m", cands)] == ["ok"]


def test_exclude_avoids_failed_targets_but_falls_back_to_them() -> None:
    cands = [candidate("a", 0.0), candidate("b", 1.0)]
    assert counts(place("m", shards(1), cands, exclude={"a"}).groups) == {"b": 1}
    assert counts(place("m", shards(1), cands, exclude={"a", "b"}).groups) == {"a": 1}


def test_half_open_target_counts_as_one_slot() -> None:
    cands = [candidate("probe", 0.0, slots=8, probe_only=True), candidate("b", 1.0, slots=8)]
    assert counts(place("m", shards(3), cands).groups) == {"probe": 1, "b": 2}
    assert parallelism("m", cands) == 9


def test_no_feasible_target_names_the_model_and_every_state() -> None:
    cands = [
        candidate("broken", **{"breaker": BreakerState.OPEN, "allows": False}),
        candidate("other", models=("x",)),
    ]
    with pytest.raises(NoFeasibleTarget) as e:
        place("m", shards(1), cands)
    message = str(e.value)
    assert "'m'" in message and "broken: breaker open" in message
    assert "other: does not serve it" in message
    assert e.value.status == 503
    with pytest.raises(NoFeasibleTarget, match="no targets are configured"):
        place("m", shards(1), [])


@pytest.mark.parametrize(
    ("cands", "expected"),
    [
        ([], 0),
        ([candidate("a", slots=4, in_flight=1), candidate("b", slots=2)], 5),
        ([candidate("a", slots=2, in_flight=5)], 0),
        ([candidate("a", models=("x",)), candidate("b", slots=3)], 3),
    ],
)
def test_parallelism_is_the_free_slots_of_feasible_targets(
    cands: Sequence[Candidate], expected: int
) -> None:
    assert parallelism("m", cands) == expected


def test_every_shard_is_placed_exactly_once() -> None:
    cands = [candidate(n, float(i % 2), slots=i + 1) for i, n in enumerate("abcde")]
    plan = place("m", shards(40), cands).groups
    placed = sorted(s.index for group in plan.values() for s in group)
    assert placed == list(range(40))
