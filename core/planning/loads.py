"""What placement reads of the fleet's live state: snapshots, never the state itself.

``core.dispatch.health.TargetHealth`` keeps every target's breaker, slots and telemetry and
satisfies ``FleetLoads``; placers here read it only through that protocol — load columns for
scoring many targets at once, or one frozen ``HealthView`` per target for the price-order rule —
so deciding never reaches up into doing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

from core.config import Target

__all__ = ["WARM_S", "BreakerState", "Candidate", "FleetLoads", "HealthView", "Loads"]

# A target that answered within this long still has an instance up. Cloud Run keeps an idle
# instance for up to 15 minutes (its docs: "idle instances ... may be kept for up to 15 minutes");
# 5 minutes errs towards expecting a cold start.
WARM_S = 300.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class HealthView:
    """A target's state at one instant: what placement reads and what /metrics shows."""

    breaker: BreakerState
    allows: bool  # the breaker lets a new shard through
    probe_only: bool  # half-open: at most one shard until the probe answers
    in_flight: int
    max_concurrency: int
    latency_ms: float | None  # EWMA of successful shards' elapsed time
    error_rate: float  # EWMA of failures (1) and successes (0)
    consecutive_failures: int
    queue_depth: int | None
    utilization: float | None
    items_per_s: float | None
    ok: int
    failed: int

    @property
    def free_slots(self) -> int:
        """Shards the target can start now without queueing (1 while it is being probed)."""
        if not self.allows:
            return 0
        limit = 1 if self.probe_only else self.max_concurrency
        return max(limit - self.in_flight, 0)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A target and its health at the instant of placement."""

    target: Target
    health: HealthView


@dataclass(frozen=True, slots=True)
class Loads:
    """Live load of every target, as columns aligned with the ScoreTable's targets."""

    utilization: np.ndarray  # 0..1, as the workers report it
    busy: np.ndarray  # shards in flight / max_concurrency
    warm: np.ndarray  # bool: served recently, so no cold start
    allows: np.ndarray  # bool: breaker lets traffic through

    @classmethod
    def idle(cls, n: int, warm: np.ndarray | None = None) -> Loads:
        """No load anywhere; every target warm unless ``warm`` says otherwise."""
        warm = np.ones(n, bool) if warm is None else warm
        return cls(np.zeros(n), np.zeros(n), warm, np.ones(n, bool))


class FleetLoads(Protocol):
    """The fleet as a placer sees it; each call returns a snapshot taken at that instant."""

    @property
    def names(self) -> Sequence[str]:
        """Target names, in the order of ``loads()``'s columns."""
        ...

    def loads(self) -> Loads:
        """Every target's load now, as columns in ``names`` order."""
        ...

    @property
    def version(self) -> int:
        """A number that changes whenever a fact a reused placement depends on changes: a
        breaker opens, closes or probes, a target answers for the first time, or its shards in
        flight cross a quarter of its slots (``core.planning.costplacer``'s memo)."""
        ...

    def candidates(self) -> list[Candidate]:
        """Every target with its ``HealthView`` now, in ``names`` order."""
        ...
