"""When a straggling shard is sent again (a hedge), and how many hedges the fleet can afford.

Pure rules; the fan-out applies them. A shard that has waited longer than its target's p95 — as
the dispatcher sees it, from launch to answer, so queueing for a slot is part of normal — is
likely stuck behind something, and a copy on another target usually answers first ("The Tail at
Scale", Dean and Barroso, 2013). With too little history for a p95, a share of the time left
before the request's deadline stands in: late, but before the shard would time out. Hedges are
extra work, so a token bucket counted in shards caps them.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

from core.config import Policy

__all__ = ["HEDGE_QUANTILE", "MIN_SAMPLES", "HedgeBudget", "HedgePolicy", "LatencyWindow"]

HEDGE_QUANTILE = 0.95
WINDOW = 64  # latencies kept per target: recent enough to follow a change, enough for a p95
MIN_SAMPLES = 8  # fewer than this and the window's p95 is a guess: use the SLO share instead
_MIN_DELAY_S = 0.001  # never hedge at once: an answer needs at least a round trip
_EPS = 1e-9  # twenty earnings of 0.05 make a whole token, float rounding notwithstanding


class LatencyWindow:
    """The last ``size`` latencies of one target, kept sorted so a quantile is one index."""

    def __init__(self, size: int = WINDOW) -> None:
        self._recent: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._recent)

    def add(self, seconds: float) -> None:
        if len(self._recent) == self._recent.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent[0])]
        self._recent.append(seconds)
        bisect.insort(self._sorted, seconds)

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile of the window; None below ``MIN_SAMPLES`` samples."""
        n = len(self._sorted)
        if n < MIN_SAMPLES:
            return None
        return self._sorted[min(n - 1, max(math.ceil(q * n) - 1, 0))]


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """The hedging settings of ``Policy`` (see its ``hedge_*`` and ``stall_factor`` fields)."""

    budget: float  # hedges per shard dispatched, in the long run; 0 turns hedging off
    burst: int  # hedges the bucket holds: how many stragglers can be hedged at once
    deadline_share: float  # with no p95 yet, hedge after this share of the time left
    stall_factor: float  # silent past this many hedge delays: the target has stalled

    @classmethod
    def from_policy(cls, policy: Policy) -> HedgePolicy:
        return cls(
            policy.hedge_budget,
            policy.hedge_burst,
            policy.hedge_deadline_share,
            policy.stall_factor,
        )

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def delay_s(self, p95_s: float | None, left_s: float) -> float:
        """How long an attempt may go unanswered before it is hedged."""
        wait = p95_s if p95_s is not None else self.deadline_share * max(left_s, 0.0)
        return max(wait, _MIN_DELAY_S)


class HedgeBudget:
    """A token bucket counted in shards rather than seconds: every shard dispatched earns
    ``ratio`` of a hedge, up to ``burst``; each hedge spends one. Over any stretch of traffic,
    hedges <= burst + ratio x shards, so a fleet-wide slowdown cannot double the work."""

    def __init__(self, ratio: float, burst: int) -> None:
        self._ratio = ratio
        self._burst = float(burst)
        self._tokens = float(burst)

    @property
    def tokens(self) -> float:
        return self._tokens

    def earn(self, shards: int) -> None:
        self._tokens = min(self._burst, self._tokens + self._ratio * shards)

    def affords(self) -> bool:
        return self._tokens >= 1.0 - _EPS

    def spend(self) -> None:
        self._tokens -= 1.0
