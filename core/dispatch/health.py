"""Per-target runtime state, refreshed by traffic: circuit breaker, EWMAs, latency window,
telemetry, slots, hedge and stall counts.

Functions are stateless between invocations, so nothing here is persisted: every process learns
its targets' health from the shards it sends. Placement reads frozen ``HealthView`` values, or —
for fleets of hundreds of targets — the same facts as numpy columns (``TargetHealth.loads``), which
every state change keeps current so that reading them costs a few vector operations, not a
Python loop. Only the dispatcher writes, without awaiting between reading and writing, so the
event loop needs no locks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np

from core.backends.base import ShardOk, ShardOutcome, WorkerTelemetry
from core.config import Policy, Target
from core.dispatch.hedging import HEDGE_QUANTILE, LatencyWindow
from core.errors import RetryableError
from core.planning.loads import WARM_S, BreakerState, Candidate, HealthView, Loads

__all__ = [
    "EWMA_ALPHA",
    "CircuitBreaker",
    "TargetHealth",
    "TargetState",
]

Clock = Callable[[], float]
_T = TypeVar("_T")

# Weight of the newest sample: an effective window of 2/alpha - 1 = 9 outcomes, short enough to
# notice a target going bad within a request or two, long enough not to flap on one slow shard.
EWMA_ALPHA = 0.2


class CircuitBreaker:
    """Benches a target after consecutive failures, then lets one probe test it.

    closed --(``failures`` in a row)--> open --(``cooldown_s``)--> half-open (one probe)
    half-open --(probe ok)--> closed;  half-open --(probe fails)--> open again.
    """

    def __init__(self, failures: int, cooldown_s: float, clock: Clock) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def opened_at(self) -> float | None:
        return self._opened_at

    @property
    def probing(self) -> bool:
        return self._probing

    def allows(self) -> bool:
        """Whether a new shard may go to the target now."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probing
        )

    def on_start(self) -> None:
        """A shard leaves for the target; in half-open it is the one probe."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def on_success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def on_failure(self) -> None:
        self._consecutive += 1
        state = self.state
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and self._consecutive >= self._threshold
        ):
            self._opened_at = self._clock()
        self._probing = False

    def on_abandon(self) -> None:
        """A probe was cancelled before it answered: the next shard may probe instead."""
        self._probing = False


class _Columns:
    """Every target's load facts as arrays, one row per target, kept current by TargetState."""

    def __init__(self, targets: list[Target]) -> None:
        n = len(targets)
        self.in_flight = np.zeros(n)
        self.max_concurrency = np.array([t.max_concurrency for t in targets], float)
        self.utilization = np.zeros(n)
        self.last_ok_at = np.full(n, -np.inf)
        self.opened_at = np.full(n, np.nan)  # NaN: breaker closed
        self.probing = np.zeros(n, bool)
        # Bumped whenever a row's placement-relevant state changes in kind (``TargetState._sync``)
        self.version = 0


class TargetState:
    """One target's mutable state; its ``slots`` semaphore is shared by every request."""

    def __init__(
        self,
        target: Target,
        policy: Policy,
        clock: Clock,
        columns: _Columns | None = None,
        row: int = 0,
    ) -> None:
        self.target = target
        self._columns = columns
        self._row = row
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_cooldown_s, clock)
        self.slots = asyncio.Semaphore(target.max_concurrency)
        self.in_flight = 0
        self.latency_ms: float | None = None
        self.latencies = LatencyWindow()  # launch to answer, as the dispatcher waited for it
        self.error_rate = 0.0
        self.telemetry = WorkerTelemetry()
        self.ok = 0
        self.failed = 0
        self.last_ok_at: float | None = None
        self.hedges = 0  # hedges sent here
        self.hedges_won = 0  # hedges sent here that answered first
        self.stalls = 0
        self._clock = clock
        self._kind: tuple[object, ...] = (None, False, True, 0)  # what _sync last reported

    def begin(self, shards: int) -> None:
        """``shards`` shards leave for the target."""
        self.in_flight += shards
        self.breaker.on_start()
        self._sync()

    def record_ok(
        self, elapsed_s: float, telemetry: WorkerTelemetry, waited_s: float | None = None
    ) -> None:
        """One shard answered well after ``elapsed_s`` on the target, ``waited_s`` since it was
        sent (slot queueing included; None: the same); the worker's telemetry replaces what it
        reported before."""
        self.in_flight -= 1
        self.ok += 1
        self.last_ok_at = self._clock()
        self.latencies.add(elapsed_s if waited_s is None else waited_s)
        ms = elapsed_s * 1000
        self.latency_ms = ms if self.latency_ms is None else _ewma(self.latency_ms, ms)
        self.error_rate = _ewma(self.error_rate, 0.0)
        old = self.telemetry
        self.telemetry = WorkerTelemetry(
            queue_depth=_newer(telemetry.queue_depth, old.queue_depth),
            utilization=_newer(telemetry.utilization, old.utilization),
            items_per_s=_newer(telemetry.items_per_s, old.items_per_s),
        )
        self.breaker.on_success()
        self._sync()

    def record_failure(self) -> None:
        """One shard failed in a way that is the target's fault (timeout, 5xx, garbage)."""
        self.in_flight -= 1
        self.failed += 1
        self.error_rate = _ewma(self.error_rate, 1.0)
        self.breaker.on_failure()
        self._sync()

    def record_stall(self, since: float) -> bool:
        """A shard sent here at ``since`` went silent past its stall time, or a later attempt
        elsewhere answered first; whether that made it a stall.

        A hung target answers nothing, so only its stalls can bench it: the breaker counts each
        as a failure. A target that answered any shard since ``since`` is alive, only loaded
        (under overload, hedges win against healthy targets too): no stall, or overload alone
        would bench the whole fleet. The shard stays in flight until it answers or is cancelled.
        """
        if self.last_ok_at is not None and self.last_ok_at >= since:
            return False
        self.stalls += 1
        self.error_rate = _ewma(self.error_rate, 1.0)
        self.breaker.on_failure()
        self._sync()
        return True

    def p95_s(self) -> float | None:
        """The p95 of the recent launch-to-answer times; None while there are too few."""
        return self.latencies.quantile(HEDGE_QUANTILE)

    def release(self, shards: int) -> None:
        """``shards`` shards ended without saying anything about the target (4xx, cancelled)."""
        self.in_flight -= shards
        if shards:
            self.breaker.on_abandon()
        self._sync()

    def _sync(self) -> None:
        """Copy what placement reads into this target's row of the shared columns, and bump
        their ``version`` when it changed in kind: the breaker opened, closed or let a probe
        through, the target answered for the first time, or its shards in flight crossed a
        quarter of its slots (what a reused one-shard decision depends on; telemetry drifts)."""
        c, i = self._columns, self._row
        if c is None:
            return
        c.in_flight[i] = self.in_flight
        c.utilization[i] = self.telemetry.utilization or 0.0
        if self.last_ok_at is not None:
            c.last_ok_at[i] = self.last_ok_at
        opened = self.breaker.opened_at
        probing = self.breaker.probing
        c.opened_at[i] = np.nan if opened is None else opened
        c.probing[i] = probing
        quarter = min(self.in_flight * 4 // self.target.max_concurrency, 4)
        kind = (opened, probing, self.last_ok_at is None, quarter)
        if kind != self._kind:
            self._kind = kind
            c.version += 1

    def record(self, outcome: ShardOutcome, waited_s: float | None = None) -> None:
        """What one shard's outcome says about the target: good, bad, or nothing (a 4xx is the
        caller's mistake, not the target's)."""
        if isinstance(outcome, ShardOk):
            self.record_ok(outcome.elapsed_s, outcome.telemetry, waited_s)
        elif isinstance(outcome.error, RetryableError):
            self.record_failure()
        else:
            self.release(1)

    def view(self) -> HealthView:
        t = self.telemetry
        state = self.breaker.state
        return HealthView(
            breaker=state,
            allows=self.breaker.allows(),
            probe_only=state is BreakerState.HALF_OPEN,
            in_flight=self.in_flight,
            max_concurrency=self.target.max_concurrency,
            latency_ms=self.latency_ms,
            error_rate=self.error_rate,
            consecutive_failures=self.breaker.consecutive_failures,
            queue_depth=t.queue_depth,
            utilization=t.utilization,
            items_per_s=t.items_per_s,
            ok=self.ok,
            failed=self.failed,
        )


class TargetHealth:
    """The registry of every target's ``TargetState``, keyed by target name."""

    def __init__(
        self, targets: Iterable[Target], policy: Policy, *, clock: Clock = time.monotonic
    ) -> None:
        listed = list(targets)
        self.names = [t.name for t in listed]
        self._columns = _Columns(listed)
        self._states = {
            t.name: TargetState(t, policy, clock, self._columns, i) for i, t in enumerate(listed)
        }
        self._clock = clock
        self._cooldown_s = policy.breaker_cooldown_s
        self._serving: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> TargetState:
        return self._states[name]

    def candidates(self) -> list[Candidate]:
        """Every target with its ``HealthView`` now, in ``names`` order (``FleetLoads``)."""
        return [Candidate(s.target, s.view()) for s in self._states.values()]

    def states(self) -> list[TargetState]:
        """Every target's state, in configuration order (the order of ``names``)."""
        return list(self._states.values())

    @property
    def version(self) -> int:
        """Changes whenever some target's state changes in kind (``TargetState._sync``)."""
        return self._columns.version

    def loads(self) -> Loads:
        """Every target's load now as columns in ``names`` order (no per-target Python loop)."""
        c = self._columns
        now = self._clock()
        closed = np.isnan(c.opened_at)
        half_open = ~closed & (now - c.opened_at >= self._cooldown_s)
        limit = np.where(half_open, 1.0, c.max_concurrency)
        return Loads(
            utilization=c.utilization.copy(),
            busy=c.in_flight / limit,
            warm=now - c.last_ok_at < WARM_S,
            allows=closed | (half_open & ~c.probing),
        )

    def free_slots(self, model: str) -> int:
        """Shards that targets serving ``model`` can start now without queueing."""
        serving = self._serving.get(model)
        if serving is None:
            serving = np.array([s.target.serves(model) for s in self._states.values()], bool)
            self._serving[model] = serving
        c = self._columns
        limit = np.where(np.isnan(c.opened_at), c.max_concurrency, 1.0)  # half-open: one probe
        free = np.maximum(limit - c.in_flight, 0)
        return int(np.where(self.loads().allows & serving, free, 0).sum())

    def allows(self, name: str) -> bool:
        """Whether the target's breaker lets traffic through (the front door's readiness)."""
        return self._states[name].breaker.allows()

    def view(self, name: str) -> HealthView:
        return self._states[name].view()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every target's view as plain JSON-able values, for reports and metrics."""
        return {name: asdict(state.view()) for name, state in self._states.items()}

    def exposition(self) -> bytes:
        """Prometheus text exposition: the snapshot as gauges, hedges and stalls as counters,
        each labelled by target."""
        views = {name: state.view() for name, state in self._states.items()}
        lines: list[str] = []
        for metric, help_text, value in _GAUGES:
            lines.append(f"# HELP gpufan_target_{metric} {help_text}")
            lines.append(f"# TYPE gpufan_target_{metric} gauge")
            for name, v in views.items():
                number = value(v)
                if number is not None:
                    # Target names match config's [a-z0-9._-] pattern: no label escaping needed.
                    lines.append(f'gpufan_target_{metric}{{target="{name}"}} {float(number)}')
        for metric, help_text, count in _COUNTERS:
            lines.append(f"# HELP gpufan_target_{metric}_total {help_text}")
            lines.append(f"# TYPE gpufan_target_{metric}_total counter")
            for name, state in self._states.items():
                lines.append(f'gpufan_target_{metric}_total{{target="{name}"}} {count(state)}')
        return ("\n".join(lines) + "\n").encode()


_GAUGES: tuple[tuple[str, str, Callable[[HealthView], float | int | None]], ...] = (
    (
        "breaker_open",
        "1 while the circuit breaker is open or half-open",
        lambda v: v.breaker is not BreakerState.CLOSED,
    ),
    ("in_flight", "Shards in flight on the target", lambda v: v.in_flight),
    ("latency_ms", "EWMA of successful shard latency", lambda v: v.latency_ms),
    ("error_rate", "EWMA of the shard failure rate", lambda v: v.error_rate),
    ("queue_depth", "Worker-reported queue depth", lambda v: v.queue_depth),
    ("utilization", "Worker-reported utilisation, 0..1", lambda v: v.utilization),
    ("items_per_s", "Worker-reported throughput", lambda v: v.items_per_s),
)


_COUNTERS: tuple[tuple[str, str, Callable[[TargetState], int]], ...] = (
    ("hedges", "Hedges sent to the target (a straggler's copy)", lambda s: s.hedges),
    ("hedges_won", "Hedges sent to the target that answered first", lambda s: s.hedges_won),
    ("stalls", "Shards silent past their stall time or beaten by a later try", lambda s: s.stalls),
)


def _ewma(old: float, sample: float) -> float:
    return old + EWMA_ALPHA * (sample - old)


def _newer(new: _T | None, old: _T | None) -> _T | None:
    return old if new is None else new
