"""RetryPolicy: stop and wait rules, with a fake clock and a seeded rng (no real waiting)."""

from __future__ import annotations

import random

import pytest

from core.config import Policy
from core.dispatch.retry import BACKOFF_CAP_S, RetryPolicy


def test_should_retry_stops_at_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, deadline_s=10.0, base_s=0.01)
    assert policy.should_retry(1, now=0.0, started=0.0)
    assert policy.should_retry(2, now=0.0, started=0.0)
    assert not policy.should_retry(3, now=0.0, started=0.0)


def test_should_retry_stops_at_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=10, deadline_s=2.0, base_s=0.01)
    assert policy.should_retry(1, now=101.9, started=100.0)
    assert not policy.should_retry(1, now=102.0, started=100.0)


def test_backoff_is_full_jitter_under_a_doubling_ceiling() -> None:
    policy = RetryPolicy(max_attempts=10, deadline_s=10.0, base_s=0.1, cap_s=0.5)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        waits = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # spread over the whole range, not pinned low


def test_backoff_is_deterministic_for_a_seed() -> None:
    policy = RetryPolicy(max_attempts=5, deadline_s=1.0, base_s=0.02)
    first = [policy.backoff_s(a, random.Random(3)) for a in range(1, 5)]
    again = [policy.backoff_s(a, random.Random(3)) for a in range(1, 5)]
    assert first == again


def test_backoff_stays_finite_for_huge_attempt_numbers() -> None:
    policy = RetryPolicy(max_attempts=5, deadline_s=1.0, base_s=0.02, cap_s=0.3)
    assert 0.0 <= policy.backoff_s(10_000, random.Random(1)) <= 0.3


def test_from_policy_takes_request_overrides() -> None:
    policy = Policy(max_attempts=3, deadline_ms=5000, backoff_ms=20)
    default = RetryPolicy.from_policy(policy)
    assert (default.max_attempts, default.deadline_s, default.base_s) == (3, 5.0, 0.02)
    assert default.cap_s == BACKOFF_CAP_S
    tight = RetryPolicy.from_policy(policy, max_attempts=1, deadline_ms=250)
    assert (tight.max_attempts, tight.deadline_s) == (1, 0.25)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0, "deadline_s": 1.0, "base_s": 0.0},
        {"max_attempts": 1, "deadline_s": 0.0, "base_s": 0.0},
        {"max_attempts": 1, "deadline_s": 1.0, "base_s": 2.0, "cap_s": 1.0},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
