"""The hedging rules alone: the latency window's quantile, the hedge delay and the budget."""

from __future__ import annotations

import pytest

from core.config import Policy, settings_from_dict
from core.dispatch.hedging import MIN_SAMPLES, HedgeBudget, HedgePolicy, LatencyWindow
from core.errors import ConfigError


def test_the_window_has_no_quantile_until_it_has_enough_samples() -> None:
    window = LatencyWindow(size=16)
    for _ in range(MIN_SAMPLES - 1):
        window.add(0.01)
    assert window.quantile(0.95) is None
    window.add(0.01)
    assert window.quantile(0.95) == 0.01


def test_the_window_forgets_its_oldest_samples() -> None:
    window = LatencyWindow(size=20)
    for ms in range(1, 21):  # 1..20 ms
        window.add(ms / 1000)
    assert window.quantile(0.95) == 0.019 and window.quantile(0.5) == 0.010
    for _ in range(20):  # the target got fast: the slow past leaves the window entirely
        window.add(0.002)
    assert len(window) == 20 and window.quantile(0.95) == 0.002


def test_the_delay_is_the_p95_or_a_share_of_the_time_left() -> None:
    hedging = HedgePolicy.from_policy(Policy(hedge_deadline_share=0.25))
    assert hedging.delay_s(0.040, left_s=8.0) == 0.040
    assert hedging.delay_s(None, left_s=8.0) == 2.0
    assert hedging.delay_s(None, left_s=-1.0) == 0.001  # never at once
    assert hedging.enabled and not HedgePolicy.from_policy(Policy(hedge_budget=0)).enabled


def test_the_budget_allows_a_burst_then_its_ratio_of_the_shards() -> None:
    budget = HedgeBudget(ratio=0.05, burst=2)
    spent = 0
    for _ in range(1000):  # a fleet-wide slowdown: every shard would like a hedge
        budget.earn(1)
        if budget.affords():
            budget.spend()
            spent += 1
    assert 50 <= spent <= 2 + 0.05 * 1000  # the burst, then one hedge per twenty shards
    budget.earn(10_000)
    assert budget.tokens == 2  # idle credit is capped at the burst


@pytest.mark.parametrize(
    ("key", "value"), [("hedge_budget", 1.5), ("hedge_burst", -1), ("stall_factor", 1.0)]
)
def test_hedge_settings_are_checked(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"policy.{key}"):
        settings_from_dict({"policy": {key: value}})
