"""Cost-aware placement: worked examples with hand-checked numbers, and properties.

Prices in the worked examples are the bundled snapshot's (``shared/reference/gpu_prices.csv``,
``egress_prices.csv``): AWS g4dn.xlarge on-demand $0.526/h in us-east-1, GCP g2-standard-4 spot
$0.3153/h in europe-west4, AWS internet egress $0.09/GB, inter-region $0.02/GB.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.config import Target
from core.errors import NoFeasibleTarget
from core.planning.costplacer import REUSE_S, CostPlacer, decide
from core.planning.estimate import ScoreTable, TargetFacts, Workload
from core.planning.limits import Constraints, Origin
from core.planning.loads import Loads
from core.planning.shards import Shard, shard_sizes


def egress(src_cloud: str, src_region: str, dst_cloud: str, dst_region: str) -> float:
    """$/GB by the snapshot's rules: free within a region, inter-region, else internet."""
    if src_cloud in ("local", "onprem"):
        return 0.0
    if (src_cloud, src_region) == (dst_cloud, dst_region):
        return 0.0
    return 0.02 if src_cloud == dst_cloud else 0.09


def facts(
    name: str,
    usd: float,
    ips: float,
    *,
    cloud: str = "aws",
    region: str = "us-east-1",
    interruptions: float = 0.0,
    increment: float = 1.0,
    minimum: float = 0.0,
    **target: object,
) -> TargetFacts:
    t = Target(
        name=name,
        backend="http",
        endpoint="http://x",
        cloud=cloud,
        region=region,
        usd_per_hour=usd,
        **target,
    )  # type: ignore[arg-type]
    return TargetFacts(t, usd, "test", None, False, ips, 0.0, increment, minimum, interruptions)


def shards(sizes: list[int]) -> list[Shard]:
    out, start = [], 0
    for i, n in enumerate(sizes):
        out.append(Shard(f"r/{i}", i, start, start + n, ()))
        start += n
    return out


CNN = Workload("cnn", input_bytes_per_item=3 * 64 * 64 * 4, output_bytes_per_item=40)
FROM_AWS = Origin("aws", "us-east-1")


def run(table_facts: list[TargetFacts], sizes: list[int], **constraints: object):
    table = ScoreTable(table_facts, egress)
    c = Constraints(**{"slo_ms": 1e9, "origin": FROM_AWS, **constraints})  # type: ignore[arg-type]
    return decide(table, CNN, shards(sizes), Loads.idle(len(table)), c)


# ------------------------------------------------------------------------------ worked examples


def test_cross_cloud_egress_makes_the_cheapest_gpu_the_wrong_choice() -> None:
    # GIVEN 1,000 CNN images (49,152 bytes each) arriving in aws:us-east-1
    # and a cheaper GPU hour in GCP europe-west4 (spot L4 $0.3153/h, 1,000 items/s)
    # than next to the caller (on-demand T4 $0.526/h, 500 items/s)
    gcp = facts("gcp-l4-spot", 0.3153, 1000.0, cloud="gcp", region="europe-west4")
    aws = facts("aws-t4", 0.526, 500.0)
    d = run([gcp, aws], [1000])
    # THEN the AWS T4 wins: 2 s x 0.526/3600 = $0.000292 against GCP's
    # 1 s x 0.3153/3600 = $0.0000876 compute + 49.152 MB x $0.09/GB = $0.00442 egress in
    # (+ 40 kB back at $0.09/GB = $0.0000036)
    assert [e.target for e in d.chosen] == ["aws-t4"]
    assert d.chosen[0].cost.compute_usd == pytest.approx(2 * 0.526 / 3600)
    assert d.chosen[0].cost.egress_in_usd == 0.0  # same region: free
    runner = d.runner_up
    assert runner is not None and runner.target == "gcp-l4-spot"
    assert runner.cost.compute_usd == pytest.approx(0.3153 / 3600)
    assert runner.cost.egress_in_usd == pytest.approx(49.152e6 * 0.09 / 1e9)
    assert runner.cost.egress_out_usd == pytest.approx(40e3 * 0.09 / 1e9)
    assert runner.cost.total_usd > 10 * d.total_usd
    # ... and without the egress (a caller in the same GCP region) the spot L4 wins
    d = run([gcp, aws], [1000], origin=Origin("gcp", "europe-west4"))
    assert [e.target for e in d.chosen] == ["gcp-l4-spot"]


def test_a_tight_slo_forces_on_demand_over_spot() -> None:
    # GIVEN a long job: 200,000 items at 1,000 items/s = 200 s on either target,
    # spot at $0.2/h reclaimed 0.5 times an hour, on-demand at $0.526/h
    spot = facts("spot", 0.2, 1000.0, interruptions=0.5, pricing="spot")
    ondemand = facts("on-demand", 0.526, 1000.0)
    # p(reclaim during 200 s) = 1 - exp(-0.5/3600 x 200) = 0.0274 >= 1%: on spot the SLO must
    # also hold for a re-run: 2 x (200 s + 7.9 s of transfer)
    p = -math.expm1(-0.5 / 3600 * 200)
    relaxed = run([spot, ondemand], [200_000], slo_ms=450_000)
    assert [e.target for e in relaxed.chosen] == ["spot"]
    assert relaxed.chosen[0].p_interrupt == pytest.approx(p)
    # expected re-run cost: p x 200 s x 0.2/3600
    assert relaxed.chosen[0].cost.retry_usd == pytest.approx(p * 200 * 0.2 / 3600)
    # the re-run's time: compute 200 s + RTT 1 ms + transfer of 9.84 GB at 10 Gbit/s (in-region)
    transfer_ms = 200_000 * (49_152 + 40) / 1.25e9 * 1000
    assert relaxed.chosen[0].latency.retry_ms == pytest.approx(200_000 + 1 + transfer_ms)
    tight = run([spot, ondemand], [200_000], slo_ms=300_000)
    assert [e.target for e in tight.chosen] == ["on-demand"] and tight.meets_slo


def test_a_heavy_batch_is_split_over_several_gpus_a_light_one_is_not() -> None:
    # GIVEN four identical L4 targets ($0.8048/h, per-second billing) in the caller's region
    def fleet(ips: float) -> list[TargetFacts]:
        return [facts(f"l4-{i}", 0.8048, ips) for i in range(4)]

    sizes = shard_sizes(256, 32, 8)  # 8 shards of 32 items
    # a heavy model at 100 items/s: within a 1 s SLO one L4 takes 96 items
    # (1 ms RTT + 96 x (10 ms compute + 49 kB at 10 Gbit/s) = 0.999 s), so three L4s are needed
    heavy = run(fleet(100.0), sizes, slo_ms=1000)
    assert sorted(e.items for e in heavy.chosen) == [64, 96, 96] and heavy.meets_slo
    assert heavy.total_usd == pytest.approx(3 * 0.8048 / 3600)  # three billed seconds
    # a light model at 10,000 items/s: 256 items take 26 ms; a second L4 would bill a second
    # whole second for nothing, so one L4 does it all
    light = run(fleet(10_000.0), sizes, slo_ms=1000)
    assert [e.items for e in light.chosen] == [256] and light.meets_slo
    assert light.total_usd == pytest.approx(0.8048 / 3600)


def test_free_fine_grained_targets_share_a_request() -> None:
    # owned workers (price 0): spreading costs nothing and finishes sooner
    workers = [facts(f"w{i}", 0.0, 1000.0, cloud="local", region="local") for i in range(3)]
    table = ScoreTable(workers, egress)
    c = Constraints(slo_ms=1000, origin=Origin("local", "local"))
    d = decide(table, CNN, shards([10] * 6), Loads.idle(3), c)
    assert sorted(e.items for e in d.chosen) == [20, 20, 20]


def test_cheapest_fills_to_its_slo_capacity_then_the_next() -> None:
    cheap = facts("cheap", 0.3, 100.0)
    dear = facts("dear", 3.0, 100.0)
    # 1 s SLO, 1 ms RTT, 100 items/s, 49 kB per item at 10 Gbit/s: cheap takes 96 items
    d = run([dear, cheap], shards_sizes := [16] * 8, slo_ms=1000)
    got = {e.target: e.items for e in d.chosen}
    assert got["cheap"] == 96 and got["dear"] == sum(shards_sizes) - 96
    assert d.meets_slo


def test_max_usd_is_enforced_and_clouds_regions_restrict() -> None:
    aws = facts("aws", 0.526, 500.0)
    gcp = facts("gcp", 0.3153, 1000.0, cloud="gcp", region="europe-west4")
    with pytest.raises(NoFeasibleTarget, match="max_usd"):
        run([aws, gcp], [1000], max_usd=1e-6)
    d = run([aws, gcp], [1000], clouds=frozenset({"gcp"}))
    assert [e.target for e in d.chosen] == ["gcp"]
    with pytest.raises(NoFeasibleTarget, match="constraints"):
        run([aws, gcp], [1000], regions=frozenset({"eu-north-1"}))


def test_unmeetable_slo_goes_where_it_finishes_soonest_and_says_so() -> None:
    slow_cheap = facts("slow", 0.1, 10.0)
    fast_dear = facts("fast", 5.0, 1000.0)
    d = run([slow_cheap, fast_dear], [10_000], slo_ms=100)
    assert not d.meets_slo
    assert [e.target for e in d.chosen] == ["fast"]
    assert d.report()["meets_slo"] is False


def test_billing_increment_and_minimum() -> None:
    # Batch-like target: per-second billing with a 60 s minimum
    batch = facts("batch", 0.526, 1000.0, increment=1.0, minimum=60.0)
    d = run([batch], [10])
    assert d.chosen[0].cost.compute_usd == pytest.approx(60 * 0.526 / 3600)
    # Cloud Run-like: 100 ms increments
    run_ = facts("run", 1.04652, 1000.0, increment=0.1)
    d = run([run_], [150])  # 0.15 s -> 0.2 s billed
    assert d.chosen[0].cost.compute_usd == pytest.approx(0.2 * 1.04652 / 3600)


def test_cold_start_counts_only_when_scaled_to_zero_and_cold() -> None:
    t = facts("run", 1.0, 1000.0, scale_to_zero=True, cold_start_s=5.0)
    table = ScoreTable([t], egress)
    c = Constraints(slo_ms=10_000, origin=FROM_AWS)
    cold = replace(Loads.idle(1), warm=np.zeros(1, bool))
    d = decide(table, CNN, shards([10]), cold, c)
    assert d.chosen[0].latency.cold_start_ms == 5000
    d = decide(table, CNN, shards([10]), Loads.idle(1), c)
    assert d.chosen[0].latency.cold_start_ms == 0


# ------------------------------------------------------------------------------------ properties

prices = st.floats(0.01, 10.0)
speeds = st.floats(10.0, 100_000.0)
places = st.sampled_from(
    [("aws", "us-east-1"), ("aws", "eu-west-1"), ("gcp", "europe-west4"), ("azure", "eastus")]
)


@st.composite
def fleets(draw: st.DrawFn) -> list[TargetFacts]:
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        cloud, region = draw(places)
        out.append(
            facts(
                f"t{i}",
                draw(prices),
                draw(speeds),
                cloud=cloud,
                region=region,
                interruptions=draw(st.sampled_from([0.0, 0.0, 0.3])),
            )
        )
    return out


@settings(max_examples=150, deadline=None)
@given(
    fleet=fleets(),
    items=st.integers(1, 5000),
    slo=st.floats(50, 60_000),
    clouds=st.sampled_from([None, frozenset({"aws"}), frozenset({"gcp", "azure"})]),
)
def test_a_placement_never_violates_a_constraint(
    fleet: list[TargetFacts], items: int, slo: float, clouds: frozenset[str] | None
) -> None:
    try:
        d = run(fleet, shard_sizes(items, 64, 4), slo_ms=slo, clouds=clouds)
    except NoFeasibleTarget:
        assert clouds is not None and not any(f.target.cloud in clouds for f in fleet)
        return
    assert sum(e.items for e in d.chosen) == items
    for e in d.chosen:
        target = next(f.target for f in fleet if f.target.name == e.target)
        assert clouds is None or target.cloud in clouds
        if d.meets_slo:
            assert e.latency.total_ms <= slo * (1 + 1e-9)


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(), items=st.integers(1, 5000), slo=st.floats(50, 60_000))
def test_no_feasible_single_target_is_both_cheaper_and_faster(
    fleet: list[TargetFacts], items: int, slo: float
) -> None:
    d = run(fleet, [items], slo_ms=slo)
    assume(d.meets_slo)
    (chosen,) = d.chosen
    table = ScoreTable(fleet, egress)
    c = Constraints(slo_ms=slo, origin=FROM_AWS)
    cols = table.columns(np.full(len(fleet), float(items)), CNN, Loads.idle(len(fleet)), c)
    for i in range(len(fleet)):
        e = table.estimate(i, cols, c, True)
        if e.feasible and e.target != chosen.target:
            dominated = (
                e.cost.total_usd < chosen.cost.total_usd * (1 - 1e-9)
                and e.latency.total_ms < chosen.latency.total_ms
            )
            assert not dominated, (e, chosen)


@settings(max_examples=150, deadline=None)
@given(
    fleet=fleets(),
    items=st.integers(1, 5000),
    slo=st.floats(50, 60_000),
    factor=st.floats(1.01, 100.0),
)
def test_raising_the_chosen_price_never_makes_it_more_preferred(
    fleet: list[TargetFacts], items: int, slo: float, factor: float
) -> None:
    sizes = shard_sizes(items, 64, 4)
    before = run(fleet, sizes, slo_ms=slo)
    # Price decides only where the SLO can be met: shards that fit nowhere go where they finish
    # soonest, whatever it costs (decide's docstring), so the property is the cost regime's.
    assume(before.meets_slo)
    name = max(before.chosen, key=lambda e: e.items).target
    dearer = [
        replace(f, usd_per_hour=f.usd_per_hour * factor) if f.target.name == name else f
        for f in fleet
    ]
    after = run(dearer, sizes, slo_ms=slo)
    got = {e.target: e.items for e in after.chosen}
    assert got.get(name, 0) <= {e.target: e.items for e in before.chosen}[name]


@given(n=st.integers(0, 10**6), m=st.integers(0, 10**6), place=places)
def test_egress_is_zero_within_a_region_and_grows_with_bytes(
    n: int, m: int, place: tuple[str, str]
) -> None:
    cloud, region = place
    t = facts("t", 1.0, 1000.0, cloud=cloud, region=region)
    table = ScoreTable([t], egress)
    loads = Loads.idle(1)

    def cost(items: int, origin: Origin) -> float:
        c = Constraints(slo_ms=1e9, origin=origin)
        cols = table.columns(np.array([float(items)]), CNN, loads, c)
        return float(cols.egress_in_usd[0] + cols.egress_out_usd[0])

    assert cost(n, Origin(cloud, region)) == 0.0
    elsewhere = Origin("azure", "westeurope") if cloud != "azure" else FROM_AWS
    lo, hi = sorted((n, m))
    assert cost(lo, elsewhere) <= cost(hi, elsewhere)


def test_a_target_whose_fixed_latency_exceeds_the_slo_takes_nothing() -> None:
    # compute time unknown (no profile: slope 0), but an 8 s cold start against a 5 s SLO
    cold = facts("cold", 0.0, float("inf"), scale_to_zero=True, cold_start_s=8.0)
    warm = facts("warm", 0.0, float("inf"))
    table = ScoreTable([cold, warm], egress)
    loads = replace(Loads.idle(2), warm=np.array([False, True]))
    d = decide(table, CNN, shards([10, 10]), loads, Constraints(slo_ms=5000, origin=FROM_AWS))
    assert [e.target for e in d.chosen] == ["warm"] and d.meets_slo


# ------------------------------------------------------------------- reusing small decisions


class _Fleet:
    """FleetLoads with loads set by the test."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.version = 0
        self._current = Loads.idle(len(names))

    @property
    def current(self) -> Loads:
        return self._current

    @current.setter
    def current(self, loads: Loads) -> None:  # what the health registry's version tracks
        self._current = loads
        self.version += 1

    def loads(self) -> Loads:
        return self._current

    def candidates(self) -> list[Any]:
        raise AssertionError("the cost placer reads load columns, not candidates")


def _placer(clock: list[float]) -> tuple[CostPlacer, _Fleet]:
    cheap, dear = facts("cheap", 0.3, 500.0), facts("dear", 0.9, 500.0)
    table = ScoreTable([cheap, dear], egress)
    c = Constraints(slo_ms=1e9, origin=FROM_AWS)
    placer = CostPlacer({"cnn": table}, {"cnn": CNN}, c, clock=lambda: clock[0])
    return placer, _Fleet(["cheap", "dear"])


def test_a_small_requests_decision_is_reused_while_the_fleet_looks_the_same() -> None:
    clock = [0.0]
    placer, fleet = _placer(clock)
    first = placer("cnn", shards([4]), fleet)
    assert list(first.groups) == ["cheap"]
    clock[0] = REUSE_S / 2
    again = placer("cnn", shards([4]), fleet)
    assert (list(again.groups), placer.reused) == (["cheap"], 1)
    assert again.explanation["reused_decision_age_ms"] == REUSE_S / 2 * 1e3
    assert again.groups["cheap"][0].items == 4  # this request's shard, not the remembered one


def test_a_breaker_a_saturated_target_or_time_makes_it_decide_afresh() -> None:
    clock = [0.0]
    placer, fleet = _placer(clock)
    placer("cnn", shards([4]), fleet)
    fleet.current = replace(fleet.current, allows=np.array([False, True]))  # cheap's breaker
    assert list(placer("cnn", shards([4]), fleet).groups) == ["dear"]
    fleet.current = replace(Loads.idle(2), busy=np.array([1.0, 0.0]))  # cheap saturated
    placer("cnn", shards([4]), fleet)
    fleet.current = Loads.idle(2)
    clock[0] = REUSE_S * 2
    placer("cnn", shards([4]), fleet)
    placer("cnn", shards([5]), fleet)  # another size
    placer("cnn", shards([4, 4]), fleet)  # several shards: never reused
    placer("cnn", shards([4]), fleet, exclude=frozenset({"cheap"}))  # a re-dispatch: never
    assert placer.reused == 0
