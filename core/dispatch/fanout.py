"""One request's fan-out: place shards, run them through backends, take each answer once.

``Fanout`` is the engine under ``core.dispatch.dispatcher.Dispatcher``. One task per (target, group
of shards) consumes that target's backend iterator and puts every outcome on one queue; the
request's own task takes them off in arrival order, so all bookkeeping happens in one place, between
awaits. A retryable failure sends the shard to another target after a jittered backoff (a timer task
that puts the shard back on the queue); a target's 4xx is the caller's mistake and ends the request.

A shard left unanswered past its target's p95 is hedged: sent to the next-best target as well,
within the fleet's hedge budget (``core.dispatch.hedging``). The first good answer wins, and the
other attempt is cancelled; if the earlier attempt lost, its target counts a stall. Silent past
``stall_factor`` p95s, an attempt is a stall too, and its shard is re-sent whatever the budget
says: it is presumed lost, as after a failure. Stalls feed the breaker, which is how a hung target,
which never fails, gets benched.

Every outcome is tagged with the attempt it answers (a serial number), so an outcome that arrives
twice, or for an attempt already given up on, is dropped and counted, never merged.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from core.backends.base import Backend, ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.config import Target
from core.dispatch.health import TargetHealth, TargetState
from core.dispatch.hedging import HedgeBudget, HedgePolicy
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
from core.planning.placer import Placement, Placer
from core.planning.shards import Shard
from core.wire.tensors import RequestedOutput, Tensor

__all__ = ["Attempt", "Fanout", "Fleet", "check_outputs", "describe"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_ERROR_CHARS = 200  # the report rides in every response: keep each error line short


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one shard on one target: ``hedge`` if it was sent for a straggler, ``cancelled``
    if another attempt answered first."""

    target: str
    ok: bool
    error: str | None
    ms: float
    cold_start: bool = False
    hedge: bool = False
    cancelled: bool = False

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "ok": self.ok, "ms": round(self.ms, 3)}
        if self.error is not None:
            out["error"] = self.error
        for flag in ("cold_start", "hedge", "cancelled"):
            if getattr(self, flag):
                out[flag] = True
        return out


@dataclass(frozen=True, slots=True)
class Fleet:
    """What every request of one dispatcher shares: targets, backends, health, the rules and
    the hedge budget."""

    targets: Mapping[str, Target]
    backends: Mapping[str, Backend]
    health: TargetHealth
    placer: Placer
    clock: Clock
    sleep: Sleep
    rng: random.Random
    hedging: HedgePolicy
    hedges: HedgeBudget


@dataclass(frozen=True, slots=True)
class _Answer:
    """An outcome, tagged with the attempt it answers (-1: no attempt of this task's)."""

    tag: int
    outcome: ShardOutcome


@dataclass(frozen=True, slots=True)
class _Due:
    """A failed shard's backoff is over: place it again."""

    shard: Shard


@dataclass(slots=True)
class _Live:
    """An attempt a shard awaits an outcome from, and what its silence would mean."""

    tag: int
    target: str
    task: asyncio.Task[None]  # the target group's task that runs it
    started: float
    delay_s: float  # unanswered this long: hedge it
    judged: bool  # delay_s is the target's p95, so silence past stall_factor of it is a stall
    hedge: bool
    stalled: bool = False


# When to look at an attempt again: (due, tag, stall check?, shard id), in a heap.
_Watch = tuple[float, int, bool, str]


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
        self.shards: dict[str, Shard] = {}
        self.live: dict[str, dict[int, _Live]] = {}  # shard id -> tag -> attempts awaited
        self.on_task: dict[asyncio.Task[None], int] = {}  # live attempts each group task runs
        self.watches: list[_Watch] = []
        self.tries: dict[str, int] = {}  # attempts launched per shard, hedges included
        self.attempts: dict[str, list[Attempt]] = {}
        self.failed_on: dict[str, set[str]] = {}
        self.errors: dict[str, GpufanError] = {}
        self.results: dict[str, tuple[Tensor, ...]] = {}
        self.names: list[str] | None = None  # sorted output names of the first good answer
        self.final: dict[str, str] = {}
        self.redispatched = 0
        self.duplicates = 0
        self.hedges = 0
        self.hedges_won = 0
        self.hedge_usd = 0.0  # the cost model's estimate for the hedges' placements

    # ------------------------------------------------------------------------------ launching

    def launch(self, shards: Sequence[Shard]) -> None:
        """Place a request's shards and start their tasks; each earns the hedge budget its share.

        No await: placement stays consistent with the in-flight counts it read.
        """
        self.fleet.hedges.earn(len(shards))
        self.shards.update((s.id, s) for s in shards)
        self._start(self._place(shards, frozenset()), hedge=False)

    def take_over(self, shard: Shard, attempt: Attempt, error: GpufanError | None) -> None:
        """Go on with a shard the relay (``core.dispatch.relay``) tried once, as if that attempt
        had been this request's: it is counted and reported, and ``error`` (None: the attempt
        was abandoned at its hedge delay) is retried, or ends the request, by the same rules.
        """
        sid = shard.id
        self.shards[sid] = shard
        self.attempts[sid] = [attempt]
        self.tries[sid] = 1
        if error is None:  # a hedge whose first attempt was cancelled rather than raced
            self._send_hedge(self._place([shard], frozenset({attempt.target})))
            return
        self.failed_on[sid] = {attempt.target}
        self._failed(shard, error, 1)

    def _place(self, shards: Sequence[Shard], exclude: AbstractSet[str]) -> Placement:
        fleet = self.fleet
        return fleet.placer(
            self.model, shards, fleet.health, exclude=exclude, constraints=self.constraints
        )

    def _start(self, placement: Placement, *, hedge: bool) -> None:
        """One task per target group; every attempt watched for its hedge (and stall) time."""
        fleet = self.fleet
        if placement.explanation:
            self.placements.append(placement.explanation)
        now = fleet.clock()
        for name, group in placement.groups.items():
            target = fleet.targets[name]
            state = fleet.health[name]
            job = ShardJob(
                self.model,
                self.version,
                self.outputs,
                timeout_s=max(min(target.timeout_s, self.deadline - now), 1e-3),
                slots=state.slots,
            )
            tags = {shard.id: next(self.serial) for shard in group}
            state.begin(len(group))
            if hedge:
                state.hedges += len(group)
            waiting = {shard.id: shard for shard in group}
            backend = fleet.backends[target.backend]
            task = self._spawn(self._drive(backend, target, state, job, group, waiting, tags, now))
            # A cancelled task gives its shards' slots back, even one cancelled before it ran.
            task.add_done_callback(functools.partial(_release_if_cancelled, state, waiting))
            self.on_task[task] = len(group)
            p95_s = state.p95_s()
            delay_s = fleet.hedging.delay_s(p95_s, self.deadline - now)
            for shard in group:
                tag = tags[shard.id]
                live = _Live(tag, name, task, now, delay_s, p95_s is not None, hedge)
                self.live.setdefault(shard.id, {})[tag] = live
                self.tries[shard.id] = self.tries.get(shard.id, 0) + 1
                heapq.heappush(self.watches, (now + delay_s, tag, False, shard.id))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _drive(
        self,
        backend: Backend,
        target: Target,
        state: TargetState,
        job: ShardJob,
        shards: Sequence[Shard],
        waiting: dict[str, Shard],
        tags: Mapping[str, int],
        sent: float,
    ) -> None:
        """Consume one backend iterator, taking each shard off ``waiting`` as it answers; every
        shard it leaves unanswered fails on the target."""
        error: GpufanError
        try:
            async for outcome in backend.run(target, job, shards):
                if waiting.pop(outcome.shard.id, None) is None:  # answered already, or not ours
                    self.queue.put_nowait(_Answer(-1, outcome))
                    continue
                outcome = self._checked(outcome, job)
                state.record(outcome, self.fleet.clock() - sent)
                self.queue.put_nowait(_Answer(tags[outcome.shard.id], outcome))
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
        """Take outcomes until all ``count`` shards have an answer; raise as soon as one cannot.

        Between outcomes, hedge or mark stalled every attempt whose time has come.
        """
        while len(self.results) < count:
            now = self.fleet.clock()
            remaining = self.deadline - now
            if remaining <= 0:
                raise self._deadline_error()
            wait = min(remaining, self._watch(now) - now)
            try:
                async with asyncio.timeout(wait):
                    message = await self.queue.get()
            except TimeoutError:
                continue  # a watch is due, or the deadline passed: the top of the loop says which
            if isinstance(message, _Due):
                self._redispatch(message.shard)
            else:
                self._take(message)
        return self.results

    def _watch(self, now: float) -> float:
        """Act on every watch due by ``now``; return when the next one is due (after ``now``)."""
        watches = self.watches
        while watches and watches[0][0] <= now:
            _, tag, stall, sid = heapq.heappop(watches)
            live = self.live.get(sid, {}).get(tag)
            if live is None:  # answered or cancelled meanwhile
                continue
            if stall:
                live.stalled = True
                # A stall presumes the attempt lost: re-sent whatever the budget. A target that
                # answered others since is only slow: an ordinary, budgeted hedge.
                lost = self.fleet.health[live.target].record_stall(live.started)
                self._hedge(sid, now, budgeted=not lost)
                continue
            if live.judged:
                due = live.started + self.fleet.hedging.stall_factor * live.delay_s
                heapq.heappush(watches, (due, tag, True, sid))
            self._hedge(sid, now, budgeted=True)
        return watches[0][0] if watches else math.inf

    def _hedge(self, sid: str, now: float, *, budgeted: bool) -> None:
        """Send shard ``sid`` to another target as well, if the rules and the budget allow.

        One hedge at a time per shard, within its ``max_attempts`` and the deadline; never to a
        target it already runs on (the placer falls back to excluded targets when nothing else
        is healthy: then there is nowhere to hedge to).
        """
        fleet = self.fleet
        running = self.live[sid]
        if (
            not fleet.hedging.enabled
            or len(running) > 1
            or self.tries[sid] >= self.retry.max_attempts
            or now >= self.deadline
            or (budgeted and not fleet.hedges.affords())
        ):
            return
        busy = {live.target for live in running.values()}
        try:
            placement = self._place([self.shards[sid]], busy | self.failed_on.get(sid, set()))
        except NoFeasibleTarget:
            return
        if busy & placement.groups.keys():
            return
        if budgeted:
            fleet.hedges.spend()
        self._send_hedge(placement)

    def _send_hedge(self, placement: Placement) -> None:
        """Start a hedge's placement, counted and priced into the request's hedges."""
        self.hedges += 1
        self.hedge_usd += float(placement.explanation.get("usd") or 0.0)
        self._start(placement, hedge=True)

    def _drop(self, sid: str, tag: int) -> _Live:
        """Stop awaiting an attempt; cancel its group's task once that awaits nothing more."""
        running = self.live[sid]
        live = running.pop(tag)
        if not running:
            del self.live[sid]
        left = self.on_task[live.task] - 1
        if left:
            self.on_task[live.task] = left
        else:
            del self.on_task[live.task]
            live.task.cancel()  # releases its in-flight count (``_drive``)
        return live

    def _take(self, answer: _Answer) -> None:
        outcome = answer.outcome
        sid = outcome.shard.id
        if answer.tag not in self.live.get(sid, {}):
            self.duplicates += 1
            return
        live = self._drop(sid, answer.tag)
        attempts = self.attempts.setdefault(sid, [])
        ms = outcome.elapsed_s * 1000
        if isinstance(outcome, ShardOk):
            for loser in list(self.live.get(sid, {}).values()):
                self._cancel_loser(sid, loser, live)
            attempts.append(
                Attempt(outcome.target, True, None, ms, outcome.cold_start, hedge=live.hedge)
            )
            if live.hedge:
                self.hedges_won += 1
                self.fleet.health[live.target].hedges_won += 1
            self.results[sid] = outcome.outputs
            self.final[sid] = outcome.target
            return
        error = outcome.error
        attempts.append(Attempt(outcome.target, False, describe(error), ms, hedge=live.hedge))
        if isinstance(error, ClientError):
            raise error
        self.failed_on.setdefault(sid, set()).add(outcome.target)
        if sid in self.live:  # its other attempt is still running: that one may yet answer
            self.errors[sid] = error
            return
        self._failed(outcome.shard, error, len(attempts))

    def _failed(self, shard: Shard, error: GpufanError, tries: int) -> None:
        """A shard's last attempt failed: back off and re-dispatch it, or end the request."""
        self.errors[shard.id] = error
        now = self.fleet.clock()
        if isinstance(error, RetryableError) and self.retry.should_retry(tries, now, self.started):
            self._spawn(self._after(self.retry.backoff_s(tries, self.fleet.rng), shard))
            return
        if not isinstance(error, RetryableError):
            why = "with an error that is not retryable"
        elif tries >= self.retry.max_attempts:
            why = f"on all {tries} attempts it was allowed"
        else:
            why = "with no time left before the deadline"
        raise DispatchError(f"shard {shard.id} failed {why}", self._failures())

    def _cancel_loser(self, sid: str, loser: _Live, winner: _Live) -> None:
        """The other attempt of an answered shard: cancelled, reported, and a stall of its
        target if it had the head start."""
        self._drop(sid, loser.tag)
        if loser.started < winner.started and not loser.stalled:
            self.fleet.health[loser.target].record_stall(loser.started)
        ms = (self.fleet.clock() - loser.started) * 1000
        error = f"cancelled: {winner.target} answered first"
        self.attempts[sid].append(
            Attempt(loser.target, False, error, ms, hedge=loser.hedge, cancelled=True)
        )

    def _checked(self, outcome: ShardOutcome, job: ShardJob) -> ShardOutcome:
        """A ShardOk whose outputs cannot be this shard's answer becomes a MalformedResponse
        (``check_outputs``), as each answer arrives, so ``merge`` can trust them."""
        checked = check_outputs(outcome, job.outputs, self.names)
        if isinstance(checked, ShardOk):
            self.names = self.names or sorted(t.name for t in checked.outputs)
        return checked

    def _redispatch(self, shard: Shard) -> None:
        try:
            self._start(self._place([shard], frozenset(self.failed_on[shard.id])), hedge=False)
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
        for sid, running in self.live.items():
            where = " and ".join(sorted({live.target for live in running.values()}))
            causes[sid] = TargetTimeout(f"deadline of {ms:g} ms passed while on {where}")
        return DispatchError(f"the request's deadline of {ms:g} ms passed", causes)

    async def cancel(self) -> None:
        """Cancel every task still running and wait for them, so none outlives the request."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _release_if_cancelled(
    state: TargetState, waiting: Mapping[str, Shard], task: asyncio.Task[None]
) -> None:
    if task.cancelled():
        state.release(len(waiting))


def describe(error: GpufanError) -> str:
    """An error as one short report line."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"


def check_outputs(
    outcome: ShardOutcome,
    requested: Sequence[RequestedOutput] | None,
    names: Sequence[str] | None,
) -> ShardOutcome:
    """A ShardOk whose outputs cannot be its shard's answer, as a MalformedResponse.

    Every requested output is there, each has the shard's items on its first axis, and the
    names are ``names`` (those of the request's first good answer, if any: a target serving
    another version of the model may name them otherwise).
    """
    if not isinstance(outcome, ShardOk):
        return outcome
    shard = outcome.shard
    got = sorted(t.name for t in outcome.outputs)
    missing = sorted({o.name for o in requested or ()} - set(got))
    problem = None
    if missing:
        problem = f"no output {missing}"
    elif not outcome.outputs:
        problem = "no outputs at all"
    elif names is not None and got != list(names):
        problem = f"outputs {got}, other shards with {list(names)}"
    elif not shard.whole:  # a whole shard has no batch axis: its outputs are the answer
        for t in outcome.outputs:
            if t.data.ndim == 0 or t.data.shape[0] != shard.items:
                problem = f"output {t.name!r} of shape {list(t.data.shape)} for {shard.items} items"
                break
    if problem is None:
        return outcome
    error = MalformedResponse(f"{outcome.target} answered shard {shard.id} with {problem}")
    return ShardFailed(shard, outcome.target, error, outcome.elapsed_s)
