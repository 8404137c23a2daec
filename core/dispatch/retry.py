"""When to re-dispatch a failed shard, and how long to wait first.

A retry policy is a small value: a stop rule (attempts per shard, a deadline for the whole
request) and a wait rule (exponential backoff with full jitter). Clock, sleep and randomness belong
to the caller, so the rules stay pure and tests run instantly (tenacity's ``stop``/``wait`` split).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.config import Policy

__all__ = ["BACKOFF_CAP_S", "RetryPolicy"]

# Longest single wait. A re-dispatch goes to a *different* target, so waiting long buys little;
# one second keeps a doubling backoff from eating a request's deadline.
BACKOFF_CAP_S = 1.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Stop and wait rules for one request's shards.

    Attributes:
        max_attempts: tries per shard, the first one included.
        deadline_s: budget of the whole request, re-dispatches and waits included.
        base_s: the first wait; each later wait doubles, up to ``cap_s``.
        cap_s: the longest wait.
    """

    max_attempts: int
    deadline_s: float
    base_s: float
    cap_s: float = BACKOFF_CAP_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if self.base_s < 0 or self.cap_s < self.base_s:
            raise ValueError(f"need 0 <= base_s <= cap_s, got {self.base_s}, {self.cap_s}")

    @classmethod
    def from_policy(
        cls,
        policy: Policy,
        *,
        max_attempts: int | None = None,
        deadline_ms: float | None = None,
    ) -> RetryPolicy:
        """The configured policy, with a request's own limits where it sets them."""
        return cls(
            max_attempts=policy.max_attempts if max_attempts is None else max_attempts,
            deadline_s=(policy.deadline_ms if deadline_ms is None else deadline_ms) / 1000,
            base_s=policy.backoff_ms / 1000,
            cap_s=max(BACKOFF_CAP_S, policy.backoff_ms / 1000),
        )

    def should_retry(self, attempt: int, now: float, started: float) -> bool:
        """Whether a shard that has made ``attempt`` tries may make another.

        ``now`` and ``started`` come from the same clock; past the deadline nothing is retried.
        """
        return attempt < self.max_attempts and now - started < self.deadline_s

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The wait before try ``attempt + 1``: uniform in ``[0, min(cap, base * 2**(attempt-1))]``.

        Full jitter spreads the re-dispatches of shards that failed together, so they do not all
        land on the next target at the same instant (AWS Architecture Blog, "Exponential Backoff
        And Jitter", 2015).
        """
        doublings = min(max(attempt - 1, 0), 32)  # bounded: 2**n must stay a finite float
        ceiling = min(self.cap_s, self.base_s * 2**doublings)
        return rng.uniform(0.0, ceiling)
