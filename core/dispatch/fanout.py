"""One request's fan-out: place shards, run them through backends, take each answer once.

``Fanout`` is the engine under ``core.dispatch.dispatcher.Dispatcher``. One task per (target, group
of shards) consumes that target's backend iterator and puts every outcome on one queue; the
request's own task takes them off in arrival order, so all bookkeeping happens in one place, between
awaits. A retryable failure sends the shard to another target after a jittered backoff (a timer task
that puts the shard back on the queue); a target's 4xx is the caller's mistake and ends the request.

Every outcome is tagged with the attempt it answers (a serial number), so an outcome that arrives
twice, or for an attempt already given up on, is dropped and counted, never merged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from core.backends.base import Backend, ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.config import Target
from core.dispatch.health import TargetHealth, TargetState
from core.dispatch.retry import RetryPolicy
from core.errors import (
    ClientError,
    DispatchError,
    GpufanError,
    MalformedResponse,
    NoFeasibleTarget,
    RetryableError,
    TargetTimeout,
    TargetUnavailable,
)
from core.planning.limits import Constraints
from core.planning.placer import Placer
from core.planning.shards import Shard
from core.wire.tensors import RequestedOutput, Tensor

__all__ = ["Attempt", "Fanout", "Fleet"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_ERROR_CHARS = 200  # the report rides in every response: keep each error line short


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one shard on one target."""

    target: str
    ok: bool
    error: str | None
    ms: float
    cold_start: bool = False

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "ok": self.ok, "ms": round(self.ms, 3)}
        if self.error is not None:
            out["error"] = self.error
        if self.cold_start:
            out["cold_start"] = True
        return out


@dataclass(frozen=True, slots=True)
class Fleet:
    """What every request of one dispatcher shares: targets, backends, health and the rules."""

    targets: Mapping[str, Target]
    backends: Mapping[str, Backend]
    health: TargetHealth
    placer: Placer
    clock: Clock
    sleep: Sleep
    rng: random.Random


@dataclass(frozen=True, slots=True)
class _Answer:
    """An outcome, tagged with the attempt it answers (-1: no attempt of this task's)."""

    tag: int
    outcome: ShardOutcome


@dataclass(frozen=True, slots=True)
class _Due:
    """A failed shard's backoff is over: place it again."""

    shard: Shard


@dataclass(frozen=True, slots=True)
class _Live:
    """The attempt a shard awaits an outcome from."""

    tag: int
    target: str


class Fanout:
    """One request in flight: its tasks, its queue, every shard's attempts and answer.

    ``launch`` places shards and starts their tasks; ``gather`` takes outcomes until every shard
    has an answer, re-dispatching failures; ``cancel`` ends whatever is still running.
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        model: str,
        version: str | None,
        outputs: tuple[RequestedOutput, ...] | None,
        retry: RetryPolicy,
        constraints: Constraints | None,
        started: float,
    ) -> None:
        self.fleet = fleet
        self.model = model
        self.version = version
        self.outputs = outputs
        self.retry = retry
        self.constraints = constraints
        self.placements: list[dict[str, Any]] = []  # each placement's explanation, in order
        self.started = started
        self.deadline = started + retry.deadline_s
        self.queue: asyncio.Queue[_Answer | _Due] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.serial = itertools.count()
        self.live: dict[str, _Live] = {}  # shard id -> the attempt awaiting its outcome
        self.attempts: dict[str, list[Attempt]] = {}
        self.failed_on: dict[str, set[str]] = {}
        self.errors: dict[str, GpufanError] = {}
        self.results: dict[str, tuple[Tensor, ...]] = {}
        self.names: list[str] | None = None  # sorted output names of the first good answer
        self.final: dict[str, str] = {}
        self.redispatched = 0
        self.duplicates = 0

    # ------------------------------------------------------------------------------ launching

    def launch(self, shards: Sequence[Shard], exclude: AbstractSet[str]) -> None:
        """Place ``shards`` and start one task per target group (no await: placement stays
        consistent with the in-flight counts it read)."""
        fleet = self.fleet
        placement = fleet.placer(
            self.model, shards, fleet.health, exclude=exclude, constraints=self.constraints
        )
        if placement.explanation:
            self.placements.append(placement.explanation)
        groups = placement.groups
        now = fleet.clock()
        for name, group in groups.items():
            target = fleet.targets[name]
            state = fleet.health[name]
            job = ShardJob(
                self.model,
                self.version,
                self.outputs,
                timeout_s=max(min(target.timeout_s, self.deadline - now), 1e-3),
                slots=state.slots,
            )
            tags = {}
            for shard in group:
                tags[shard.id] = tag = next(self.serial)
                self.live[shard.id] = _Live(tag, name)
            state.begin(len(group))
            self._spawn(
                self._drive(fleet.backends[target.backend], target, state, job, group, tags)
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drive(
        self,
        backend: Backend,
        target: Target,
        state: TargetState,
        job: ShardJob,
        shards: Sequence[Shard],
        tags: Mapping[str, int],
    ) -> None:
        """Consume one backend iterator; every shard it leaves unanswered fails on the target."""
        waiting = {s.id: s for s in shards}
        error: GpufanError
        try:
            async for outcome in backend.run(target, job, shards):
                if waiting.pop(outcome.shard.id, None) is None:  # answered already, or not ours
                    self.queue.put_nowait(_Answer(-1, outcome))
                    continue
                outcome = self._checked(outcome, job)
                state.record(outcome)
                self.queue.put_nowait(_Answer(tags[outcome.shard.id], outcome))
        except asyncio.CancelledError:
            state.release(len(waiting))
            raise
        except Exception as e:  # the backend broke its contract: fail its shards, not the request
            log.exception("backend %r raised for target %s", backend.name, target.name)
            error = (
                e
                if isinstance(e, GpufanError)
                else TargetUnavailable(f"backend {backend.name!r} raised {type(e).__name__}: {e}")
            )
        else:
            error = MalformedResponse(
                f"backend {backend.name!r} ended without an outcome for the shard"
            )
        for shard in waiting.values():
            failed = ShardFailed(shard, target.name, error, 0.0)
            state.record(failed)
            self.queue.put_nowait(_Answer(tags[shard.id], failed))

    async def _after(self, delay_s: float, shard: Shard) -> None:
        await self.fleet.sleep(delay_s)
        self.queue.put_nowait(_Due(shard))

    # ------------------------------------------------------------------------------ gathering

    async def gather(self, count: int) -> dict[str, tuple[Tensor, ...]]:
        """Take outcomes until all ``count`` shards have an answer; raise as soon as one cannot."""
        while len(self.results) < count:
            remaining = self.deadline - self.fleet.clock()
            if remaining <= 0:
                raise self._deadline_error()
            try:
                async with asyncio.timeout(remaining):
                    message = await self.queue.get()
            except TimeoutError:
                raise self._deadline_error() from None
            if isinstance(message, _Due):
                self._redispatch(message.shard)
            else:
                self._take(message)
        return self.results

    def _take(self, answer: _Answer) -> None:
        outcome = answer.outcome
        sid = outcome.shard.id
        live = self.live.get(sid)
        if live is None or live.tag != answer.tag:
            self.duplicates += 1
            return
        del self.live[sid]
        attempts = self.attempts.setdefault(sid, [])
        ms = outcome.elapsed_s * 1000
        if isinstance(outcome, ShardOk):
            attempts.append(Attempt(outcome.target, True, None, ms, outcome.cold_start))
            self.results[sid] = outcome.outputs
            self.final[sid] = outcome.target
            return
        error = outcome.error
        attempts.append(Attempt(outcome.target, False, _describe(error), ms))
        if isinstance(error, ClientError):
            raise error
        self.errors[sid] = error
        self.failed_on.setdefault(sid, set()).add(outcome.target)
        now = self.fleet.clock()
        if isinstance(error, RetryableError) and self.retry.should_retry(
            len(attempts), now, self.started
        ):
            self._spawn(
                self._after(self.retry.backoff_s(len(attempts), self.fleet.rng), outcome.shard)
            )
            return
        if not isinstance(error, RetryableError):
            why = "with an error that is not retryable"
        elif len(attempts) >= self.retry.max_attempts:
            why = f"on all {len(attempts)} attempts it was allowed"
        else:
            why = "with no time left before the deadline"
        raise DispatchError(f"shard {sid} failed {why}", self._failures())

    def _checked(self, outcome: ShardOutcome, job: ShardJob) -> ShardOutcome:
        """A ShardOk whose outputs cannot be this shard's answer becomes a MalformedResponse.

        The one place outputs are checked, as each answer arrives (so ``merge`` can trust them):
        every requested output is there, each has the shard's items on its first axis, and the
        names are those of the first good answer (a target serving another version of the model
        may name them otherwise).
        """
        if not isinstance(outcome, ShardOk):
            return outcome
        shard = outcome.shard
        names = sorted(t.name for t in outcome.outputs)
        missing = sorted({o.name for o in job.outputs or ()} - set(names))
        problem = None
        if missing:
            problem = f"no output {missing}"
        elif not outcome.outputs:
            problem = "no outputs at all"
        elif self.names is not None and names != self.names:
            problem = f"outputs {names}, other shards with {self.names}"
        elif not shard.whole:  # a whole shard has no batch axis: its outputs are the answer
            for t in outcome.outputs:
                if t.data.ndim == 0 or t.data.shape[0] != shard.items:
                    problem = (
                        f"output {t.name!r} of shape {list(t.data.shape)} for {shard.items} items"
                    )
                    break
        if problem is None:
            self.names = self.names or names
            return outcome
        error = MalformedResponse(f"{outcome.target} answered shard {shard.id} with {problem}")
        return ShardFailed(shard, outcome.target, error, outcome.elapsed_s)

    def _redispatch(self, shard: Shard) -> None:
        try:
            self.launch([shard], frozenset(self.failed_on[shard.id]))
        except NoFeasibleTarget as e:
            raise DispatchError(
                f"shard {shard.id} cannot be re-dispatched: {e}", self._failures()
            ) from None
        self.redispatched += 1

    # ------------------------------------------------------------------------------ ending

    def _failures(self) -> dict[str, GpufanError]:
        return {sid: e for sid, e in self.errors.items() if sid not in self.results}

    def _deadline_error(self) -> DispatchError:
        ms = self.retry.deadline_s * 1000
        causes = self._failures()
        for sid, live in self.live.items():
            causes[sid] = TargetTimeout(f"deadline of {ms:g} ms passed while on {live.target}")
        return DispatchError(f"the request's deadline of {ms:g} ms passed", causes)

    async def cancel(self) -> None:
        """Cancel every task still running and wait for them, so none outlives the request."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _describe(error: GpufanError) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"
