"""The bundled spot-preemption record: its rows, its hazards and the lifetime sampler."""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from datetime import date
from importlib import resources

import numpy as np
import pytest

from core.autoscale.preemption import (
    FILENAME,
    PreemptionRecord,
    draw_lifetimes,
    load_preemptions,
    record_for,
    zone_records,
)


def _rows() -> list[dict[str, str]]:
    text = resources.files("core").joinpath("data", FILENAME).read_text("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _record(lifetimes: list[float], preempted: list[bool]) -> PreemptionRecord:
    return PreemptionRecord(
        kind="test:x",
        accelerator="none",
        zones=("z",) * len(lifetimes),
        lifetimes_s=np.array(lifetimes, dtype=np.float64),
        preempted=np.array(preempted),
        resolution_s=1.0,
        source="test",
        as_of=date(2026, 1, 1),
    )


def _redistribute_to_the_right(
    lifetimes: np.ndarray, preempted: np.ndarray
) -> tuple[dict[float, float], float]:
    """Efron's construction, independent of the module's product: each censored lifetime's mass
    goes in equal shares to every lifetime after it. Returns the mass at each preemption time and
    the mass left on censored lifetimes at the end (the unseen tail)."""
    order = sorted(range(len(lifetimes)), key=lambda i: (lifetimes[i], bool(not preempted[i])))
    mass = [1.0 / len(order)] * len(order)
    for k, i in enumerate(order):
        if not preempted[i] and k + 1 < len(order):
            share = mass[k] / (len(order) - k - 1)
            mass[k] = 0.0
            for j in range(k + 1, len(order)):
                mass[j] += share
    at: dict[float, float] = defaultdict(float)
    tail = 0.0
    for k, i in enumerate(order):
        if preempted[i]:
            at[float(lifetimes[i])] += mass[k]
        else:
            tail += mass[k]
    return dict(at), tail


def test_every_row_is_a_sourced_single_node_trace() -> None:
    rows = _rows()
    assert rows and {r["trace"].lower() for r in rows} == set(zone_records())
    for r in rows:
        assert r["trace"] == f"{r['cloud']}:{r['sku']}:{r['zone']}"
        assert r["cloud"] in {"aws", "gcp"} and r["accelerator"]
        assert r["source_repo"] == "skypilot-org/spot-traces"
        assert re.fullmatch(r"[0-9a-f]{40}", r["source_commit"])
        assert re.fullmatch(
            rf"preemption/1-node/{r['cloud']}-[0-9-]+/{r['zone']}_.+\.json", r["source_path"]
        )
        assert date.fromisoformat(r["start"]) < date.fromisoformat(r["as_of"])
        gap, span = int(r["gap_s"]), int(r["span_s"])
        items = r["lifetimes_s"].split()
        assert gap > 0 and span % gap == 0 and items
        # a single-node trace: only the last instance can still be running when the trace ends
        assert all(not s.endswith("+") for s in items[:-1])
        seconds = [int(s.removesuffix("+")) for s in items]
        assert all(s > 0 and s % gap == 0 for s in seconds) and sum(seconds) <= span


def test_each_kinds_hazard_is_its_events_over_its_instance_hours() -> None:
    events: dict[str, int] = defaultdict(int)
    hours: dict[str, float] = defaultdict(float)
    for r in _rows():
        kind = f"{r['cloud']}:{r['sku']}"
        for s in r["lifetimes_s"].split():
            events[kind] += not s.endswith("+")
            hours[kind] += int(s.removesuffix("+")) / 3600
    records = load_preemptions()
    assert set(records) == set(events)
    for kind, record in records.items():
        assert record.events == events[kind]
        assert math.isclose(record.exposure_h, hours[kind])
        assert math.isfinite(record.hazard_per_hour) and record.hazard_per_hour > 0
        assert math.isclose(record.hazard_per_hour, events[kind] / hours[kind])


def test_a_region_keeps_exactly_its_zones() -> None:
    record = load_preemptions()["aws:p3.2xlarge"]
    east = record_for("aws", "p3.2xlarge", region="us-east-1")
    assert east is not None
    assert set(east.zones) == {z for z in record.zones if re.fullmatch(r"us-east-1[a-z]", z)}
    assert len(east.lifetimes_s) == sum(
        re.fullmatch(r"us-east-1[a-z]", z) is not None for z in record.zones
    )
    assert east.source and all(
        re.search(r"/us-east-1[a-z]_", part) for part in east.source.split("; ")
    )
    gcp = load_preemptions()["gcp:c3-highcpu-88"]
    central = gcp.in_region("us-central1")
    assert central is not None and {z[:-2] for z in central.zones} == {"us-central1"}
    assert gcp.in_region("us-east-1") is None  # GCP's us-east1 is not AWS's us-east-1


def test_kinds_the_traces_do_not_hold_have_no_record() -> None:
    assert record_for("aws", "g4dn.xlarge") is None
    assert record_for("gcp", "g2-standard-4") is None
    assert record_for("azure", "Standard_NC4as_T4_v3") is None
    assert record_for("aws", "p3.2xlarge", region="eu-west-1") is None
    assert record_for(" AWS ", "p3.2xlarge") is load_preemptions()["aws:p3.2xlarge"]


def test_draws_of_uncensored_lifetimes_follow_their_empirical_distribution() -> None:
    record = load_preemptions()["aws:p3.2xlarge"]
    seen = record.lifetimes_s[record.preempted]
    draws = draw_lifetimes(
        _record(list(seen), [True] * len(seen)), 10_000, np.random.default_rng(7)
    )
    assert np.isin(draws, seen).all()
    lo, hi = np.quantile(seen, [0.45, 0.55])
    assert lo <= np.median(draws) <= hi
    grid = np.unique(seen)
    ecdf_seen = np.searchsorted(np.sort(seen), grid, side="right") / len(seen)
    ecdf_draws = np.searchsorted(np.sort(draws), grid, side="right") / len(draws)
    assert np.abs(ecdf_draws - ecdf_seen).max() < 0.02  # DKW: P(> 0.02) < 1e-3 at n = 10k


@pytest.mark.parametrize(
    ("lifetimes", "preempted", "expected"),
    [
        # 2 s still running at its trace's end: never drawn, its third goes to the 3 s one
        ([1, 2, 3], [True, False, True], {1.0: 1 / 3, 3.0: 2 / 3}),
        # at a tie the preemption comes first: the censored 2 s was at risk at 2 s
        ([2, 2, 4], [True, False, True], {2.0: 1 / 3, 4.0: 2 / 3}),
        ([1, 1, 3], [True, True, True], {1.0: 2 / 3, 3.0: 1 / 3}),
        # the longest still running: its share is the unseen tail, drawn as inf
        ([1, 5], [True, False], {1.0: 1 / 2, math.inf: 1 / 2}),
    ],
)
def test_a_censored_lifetime_hands_its_share_to_the_longer_ones(
    lifetimes: list[float], preempted: list[bool], expected: dict[float, float]
) -> None:
    draws = draw_lifetimes(_record(lifetimes, preempted), 30_000, np.random.default_rng(1))
    assert set(np.unique(draws)) == set(expected)
    for t, p in expected.items():
        assert abs(np.mean(draws == t) - p) < 0.01


@pytest.mark.parametrize("kind", sorted(load_preemptions()))
def test_draws_match_the_redistributed_record(kind: str) -> None:
    record = load_preemptions()[kind]
    at, tail = _redistribute_to_the_right(record.lifetimes_s, record.preempted)
    draws = draw_lifetimes(record, 20_000, np.random.default_rng(3))
    finite = draws[np.isfinite(draws)]
    assert set(np.unique(finite)) <= set(at)  # only preemption times, never a censored lifetime
    assert abs(np.mean(np.isinf(draws)) - tail) < 0.015
    for t, p in at.items():
        assert abs(np.mean(draws == t) - p) < 0.015


def test_draws_are_seeded_and_a_record_is_read_only() -> None:
    record = load_preemptions()["gcp:c3-highcpu-88"]
    one = draw_lifetimes(record, 50, np.random.default_rng(5))
    assert np.array_equal(one, draw_lifetimes(record, 50, np.random.default_rng(5)))
    assert draw_lifetimes(record, 0, np.random.default_rng(5)).shape == (0,)
    with pytest.raises(ValueError):
        record.lifetimes_s[0] = 1.0
    with pytest.raises(ValueError):
        _record([5.0, -1.0], [True, True])
