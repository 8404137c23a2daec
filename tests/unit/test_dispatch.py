"""The dispatcher over honest in-process fake backends: no sockets, (almost) no real waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import orjson
import pytest

from core.backends.base import Backend, ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.config import Policy, Target
from core.dispatch.dispatcher import Dispatcher
from core.dispatch.hedging import MIN_SAMPLES
from core.errors import (
    BadRequest,
    ConfigError,
    DispatchError,
    MalformedResponse,
    NoFeasibleTarget,
    TargetTimeout,
    TargetUnavailable,
)
from core.planning.limits import Origin, request_limits
from core.planning.loads import BreakerState, FleetLoads
from core.planning.placer import Placement, place
from core.planning.shards import Shard
from core.wire.tensors import InferRequest, RequestedOutput, Tensor


class Doubler:
    """Computes ``y = x * 2`` for real; subclasses change one thing about it."""

    name = "double"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (target, shard id) per shard run

    def answer(self, target: Target, shard: Shard) -> ShardOutcome:
        y = Tensor("y", shard.inputs[0].data * 2)
        return ShardOk(shard, target.name, (y,), 0.001)

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        for shard in reversed(shards):  # completion order need not be shard order
            async with job.slots:
                await asyncio.sleep(0)
                self.calls.append((target.name, shard.id))
                yield self.answer(target, shard)

    async def model_metadata(
        self, target: Target, model: str, version: str | None
    ) -> dict[str, Any]:
        return {"name": model}

    async def model_config(self, target: Target, model: str, version: str | None) -> dict[str, Any]:
        return {"name": model}

    async def ready(self, target: Target) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class Flaky(Doubler):
    """Fails its first ``k`` shards with TargetUnavailable, then doubles."""

    name = "flaky"

    def __init__(self, k: int = 10**9) -> None:
        super().__init__()
        self.k = k

    def answer(self, target: Target, shard: Shard) -> ShardOutcome:
        if len(self.calls) <= self.k:
            return ShardFailed(shard, target.name, TargetUnavailable("503: overloaded"), 0.002)
        return super().answer(target, shard)


class Rejecting(Doubler):
    name = "reject"

    def __init__(self) -> None:
        super().__init__()
        self.error = BadRequest("input 'x' must have 3 columns")

    def answer(self, target: Target, shard: Shard) -> ShardOutcome:
        return ShardFailed(shard, target.name, self.error, 0.001)


class WrongShape(Doubler):
    name = "wrong"

    def answer(self, target: Target, shard: Shard) -> ShardOutcome:
        return ShardOk(shard, target.name, (Tensor("y", np.zeros((shard.items + 1, 3))),), 0.001)


class Duplicating(Doubler):
    """Yields every shard's answer twice."""

    name = "dup"

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        async for outcome in super().run(target, job, shards):
            yield outcome
            yield outcome


class Hanging(Doubler):
    """Never answers; remembers that it was cancelled."""

    name = "hang"

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = 0

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        yield self.answer(target, shards[0])  # pragma: no cover - never reached


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def no_wait(_seconds: float) -> None:
    await asyncio.sleep(0)


def target(name: str, backend: str = "double", usd: float = 0.0, **kw: Any) -> Target:
    return Target(name=name, backend=backend, usd_per_hour=usd, **kw)


def make(
    targets: Sequence[Target],
    *backends: Backend,
    clock: FakeClock | None = None,
    **policy: Any,
) -> Dispatcher:
    registry = {b.name: b for b in backends} or {"double": Doubler()}
    return Dispatcher(
        targets,
        registry,
        # one-item shards allowed, so small batches exercise many shards and targets
        Policy(**{"backoff_ms": 1.0, "min_shard_items": 1, **policy}),
        clock=clock or time.monotonic,
        sleep=no_wait,
    )


def request(n: int, outputs: tuple[RequestedOutput, ...] | None = None) -> InferRequest:
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return InferRequest((Tensor("x", x),), outputs)


def expected(n: int) -> np.ndarray:
    return np.arange(n * 3, dtype=np.float32).reshape(n, 3) * 2


@pytest.mark.parametrize("n", [1, 2, 7, 13, 97, 64, 65, 1000])
@pytest.mark.parametrize("n_targets", [1, 2, 3, 5])
async def test_merged_result_is_exact(n: int, n_targets: int) -> None:
    targets = [target(f"t{i}", usd=float(i % 2), max_concurrency=i + 1) for i in range(n_targets)]
    dispatcher = make(targets, max_shard_items=16)
    result = await dispatcher.dispatch("m", None, request(n))
    np.testing.assert_array_equal(result.outputs[0].data, expected(n))
    assert [s.index for s in result.shards] == list(range(len(result.shards)))
    assert sum(s.items for s in result.shards) == n
    assert all(len(s.attempts) == 1 and s.attempts[0].ok for s in result.shards)
    assert result.redispatched == 0 and result.duplicates_dropped == 0
    assert all(dispatcher.health.view(t.name).in_flight == 0 for t in targets)


async def test_failed_shard_is_redispatched_and_the_report_shows_both_attempts() -> None:
    flaky = Flaky()
    dispatcher = make(
        [target("cheap", "flaky", 0.0), target("dear", "double", 1.0)], flaky, Doubler()
    )
    result = await dispatcher.dispatch("m", None, request(3), request_id="abc")
    np.testing.assert_array_equal(result.outputs[0].data, expected(3))
    assert result.redispatched == 3
    for shard in result.shards:
        assert shard.target == "dear"
        assert [(a.target, a.ok) for a in shard.attempts] == [("cheap", False), ("dear", True)]
        assert "TargetUnavailable: 503: overloaded" in (shard.attempts[0].error or "")
    report = orjson.loads(orjson.dumps(result.report()))
    assert report["request_id"].startswith("abc.")
    assert report["redispatched"] == 3
    assert report["shards"][0]["attempts"][0] == {
        "target": "cheap",
        "ok": False,
        "ms": 2.0,
        "error": "TargetUnavailable: 503: overloaded",
    }
    assert set(report["phases_ms"]) == {"plan", "dispatch", "merge"}


async def test_a_target_recovers_within_the_budget() -> None:
    flaky = Flaky(k=1)
    dispatcher = make([target("only", "flaky")], flaky, max_attempts=3)
    result = await dispatcher.dispatch("m", None, request(1))
    assert [a.ok for a in result.shards[0].attempts] == [False, True]
    np.testing.assert_array_equal(result.outputs[0].data, expected(1))


async def test_client_error_passes_through_unretried() -> None:
    rejecting = Rejecting()
    other = Doubler()
    dispatcher = make([target("a", "reject", 0.0), target("b", "double", 1.0)], rejecting, other)
    with pytest.raises(BadRequest) as e:
        await dispatcher.dispatch("m", None, request(1))
    assert e.value is rejecting.error
    assert len(rejecting.calls) == 1 and other.calls == []
    assert dispatcher.health.view("a").breaker is BreakerState.CLOSED


async def test_dispatch_error_after_the_budget_names_every_failed_shard() -> None:
    dispatcher = make(
        [target("a", "flaky", max_concurrency=3)], Flaky(), max_attempts=2, breaker_failures=100
    )
    with pytest.raises(DispatchError) as e:
        await dispatcher.dispatch("m", None, request(3), request_id="r")
    causes = e.value.causes
    assert len(causes) == 3 and all(sid.startswith("r.") for sid in causes)
    assert all(isinstance(c, TargetUnavailable) for c in causes.values())
    assert "attempts" in str(e.value) and e.value.status == 502


async def test_deadline_is_honoured_with_a_hanging_backend() -> None:
    hanging = Hanging()
    dispatcher = make([target("slow", "hang", max_concurrency=2)], hanging)
    started = time.monotonic()
    with pytest.raises(DispatchError) as e:
        limits = request_limits({"deadline_ms": 150}, Policy(), Origin("local", "local"))
        await dispatcher.dispatch("m", None, request(4), limits=limits)
    assert time.monotonic() - started < 1.0
    assert e.value.status == 504  # every cause is a timeout
    assert len(e.value.causes) == 2
    assert all(isinstance(c, TargetTimeout) for c in e.value.causes.values())
    assert hanging.cancelled == 1  # the task was cancelled, not leaked
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert dispatcher.health.view("slow").in_flight == 0


async def test_no_target_serves_the_model() -> None:
    dispatcher = make([target("a", models=("other",)), target("b", models=("other",))])
    with pytest.raises(NoFeasibleTarget, match=r"'m'.*a: does not serve it; b: does not serve"):
        await dispatcher.dispatch("m", None, request(2))


async def test_each_shard_is_taken_exactly_once() -> None:
    dispatcher = make([target("a", "dup", max_concurrency=4)], Duplicating())
    result = await dispatcher.dispatch("m", None, request(8))
    np.testing.assert_array_equal(result.outputs[0].data, expected(8))
    assert len(result.shards) == 4
    # The last shard's duplicate would come after the request has every answer: by then the
    # backend is cancelled, so only the first three duplicates are ever seen.
    assert result.duplicates_dropped == 3
    assert result.report()["duplicates_dropped"] == 3
    assert dispatcher.health.view("a").in_flight == 0
    assert dispatcher.health.view("a").ok == 4  # a duplicate is not a second success


async def test_wrong_shaped_outputs_are_malformed_and_retried() -> None:
    dispatcher = make(
        [target("bad", "wrong", 0.0), target("good", "double", 1.0)], WrongShape(), Doubler()
    )
    result = await dispatcher.dispatch("m", None, request(2))
    np.testing.assert_array_equal(result.outputs[0].data, expected(2))
    first = result.shards[0].attempts[0]
    assert first.target == "bad" and "MalformedResponse" in (first.error or "")
    assert dispatcher.health.view("bad").failed == 2


class Renamed(Doubler):
    """Answers late, naming its output ``z``: another version of the model."""

    name = "renamed"

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        await asyncio.sleep(0.01)
        for shard in shards:
            yield ShardOk(shard, target.name, (Tensor("z", shard.inputs[0].data * 2),), 0.001)


async def test_a_shard_naming_its_outputs_unlike_the_others_is_run_again() -> None:
    dispatcher = make(
        [target("good", "double", 0.0, max_concurrency=1), target("odd", "renamed", 1.0)],
        Doubler(), Renamed(),
    )  # fmt: skip
    result = await dispatcher.dispatch("m", None, request(2))
    assert [t.name for t in result.outputs] == ["y"]
    np.testing.assert_array_equal(result.outputs[0].data, expected(2))
    odd = [a for s in result.shards for a in s.attempts if a.target == "odd"]
    assert len(odd) == 1 and "other shards with ['y']" in (odd[0].error or "")
    assert all(s.target == "good" for s in result.shards) and result.redispatched == 1


async def test_missing_requested_output_is_malformed() -> None:
    dispatcher = make([target("a")], max_attempts=1)
    with pytest.raises(DispatchError) as e:
        await dispatcher.dispatch("m", None, request(1, (RequestedOutput("z"),)))
    (cause,) = e.value.causes.values()
    assert isinstance(cause, MalformedResponse) and "no output ['z']" in str(cause)


async def test_breaker_benches_a_failing_target_until_its_cooldown() -> None:
    clock = FakeClock()
    flaky, good = Flaky(), Doubler()
    dispatcher = make(
        [target("cheap", "flaky", 0.0), target("dear", "double", 1.0)],
        flaky,
        good,
        clock=clock,
        breaker_failures=2,
        breaker_cooldown_s=5.0,
    )
    await dispatcher.dispatch("m", None, request(2))
    assert dispatcher.health.view("cheap").breaker is BreakerState.OPEN
    tried = len(flaky.calls)
    result = await dispatcher.dispatch("m", None, request(4))
    assert len(flaky.calls) == tried  # benched: the next request avoids it
    assert {s.target for s in result.shards} == {"dear"} and result.redispatched == 0
    clock.now += 5.0  # cooldown over: one probe goes to the cheap target, fails, re-opens
    result = await dispatcher.dispatch("m", None, request(4))
    assert len(flaky.calls) == tried + 1
    assert dispatcher.health.view("cheap").breaker is BreakerState.OPEN
    np.testing.assert_array_equal(result.outputs[0].data, expected(4))


async def test_no_healthy_target_left_to_redispatch_to() -> None:
    dispatcher = make([target("a", "flaky")], Flaky(), breaker_failures=1, max_attempts=5)
    with pytest.raises(DispatchError, match=r"cannot be re-dispatched.*breaker open"):
        await dispatcher.dispatch("m", None, request(1))
    with pytest.raises(NoFeasibleTarget):
        await dispatcher.dispatch("m", None, request(1))


async def test_a_backend_that_raises_fails_its_shards_not_the_request() -> None:
    class Broken(Doubler):
        name = "broken"

        async def run(
            self, target: Target, job: ShardJob, shards: Sequence[Shard]
        ) -> AsyncIterator[ShardOutcome]:
            raise RuntimeError("bug")
            yield  # pragma: no cover

    dispatcher = make([target("a", "broken", 0.0), target("b", "double", 1.0)], Broken(), Doubler())
    result = await dispatcher.dispatch("m", None, request(2))
    assert "RuntimeError: bug" in (result.shards[0].attempts[0].error or "")
    np.testing.assert_array_equal(result.outputs[0].data, expected(2))


async def test_empty_batch_and_unknown_backend_are_refused() -> None:
    with pytest.raises(BadRequest, match="no items"):
        await make([target("a")]).dispatch("m", None, request(0))
    with pytest.raises(ConfigError, match="nope"):
        Dispatcher([target("a", "nope")], {"double": Doubler()}, Policy())


async def test_an_unbatched_model_runs_whole_even_when_its_first_axes_disagree() -> None:
    targets = [target(f"t{i}") for i in range(3)]
    dispatcher = Dispatcher(
        targets,
        {"double": Doubler()},
        Policy(backoff_ms=1.0, min_shard_items=1, max_shard_items=2),
        unbatched=["stateful"],
        sleep=no_wait,
    )
    x = np.arange(40, dtype=np.float32).reshape(10, 4)  # ten rows, but not ten items
    state = np.zeros((2, 1, 8), dtype=np.float32)
    result = await dispatcher.dispatch(
        "stateful", None, InferRequest((Tensor("x", x), Tensor("state", state)))
    )
    assert [(s.index, s.items) for s in result.shards] == [(0, 1)]
    np.testing.assert_array_equal(result.outputs[0].data, x * 2)  # unsplit, unchecked axis
    with pytest.raises(BadRequest, match="disagree on the batch size"):  # a batched model
        await dispatcher.dispatch("m", None, InferRequest((Tensor("x", x), Tensor("s", state))))


async def test_a_request_with_a_scalar_input_runs_whole() -> None:
    dispatcher = make([target("t0"), target("t1")], max_shard_items=2)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    sr = np.array(16000, dtype=np.int64)
    result = await dispatcher.dispatch("m", None, InferRequest((Tensor("x", x), Tensor("sr", sr))))
    assert len(result.shards) == 1
    np.testing.assert_array_equal(result.outputs[0].data, x * 2)


# ------------------------------------------------------------------------------------ hedging


class Slow(Doubler):
    """Doubles after ``delay_s`` of real time; cancelled like any HTTP request would be."""

    def __init__(self, name: str, delay_s: float) -> None:
        super().__init__()
        self.name = name
        self.delay_s = delay_s

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        await asyncio.sleep(self.delay_s)
        async for outcome in super().run(target, job, shards):
            yield outcome


class Freezable(Hanging):
    """Hangs like a SIGSTOPped worker while ``frozen``, then doubles."""

    name = "freeze"

    def __init__(self) -> None:
        super().__init__()
        self.frozen = True

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        stream = (
            super().run(target, job, shards)
            if self.frozen
            else Doubler.run(self, target, job, shards)
        )
        async for outcome in stream:
            yield outcome


class Later:
    """Real time plus an offset a test moves forward: breaker cool-downs pass at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def with_history(dispatcher: Dispatcher, *names: str, seconds: float = 0.002) -> None:
    """Give targets a p95 of ``seconds``, as if they had answered that fast before."""
    for name in names:
        for _ in range(MIN_SAMPLES):
            dispatcher.health[name].latencies.add(seconds)


def priced(model: str, shards: Sequence[Shard], fleet: FleetLoads, **kw: Any) -> Placement:
    """The price-order placer, explaining each placement as costing $0.25 a shard."""
    return Placement(place(model, shards, fleet, **kw).groups, {"usd": 0.25 * len(shards)})


async def test_a_straggler_is_hedged_and_the_first_answer_wins() -> None:
    hung, fast = Hanging(), Doubler()
    dispatcher = Dispatcher(
        [target("hung", "hang", 0.0), target("fast", "double", 1.0)],
        {"hang": hung, "double": fast},
        Policy(min_shard_items=1),
        placer=priced,
    )
    with_history(dispatcher, "hung", "fast")
    result = await dispatcher.dispatch("m", None, request(1))
    np.testing.assert_array_equal(result.outputs[0].data, expected(1))
    (shard,) = result.shards
    assert shard.target == "fast"
    lost, won = shard.attempts
    assert (lost.target, lost.ok, lost.cancelled, lost.hedge) == ("hung", False, True, False)
    assert (won.target, won.ok, won.cancelled, won.hedge) == ("fast", True, False, True)
    assert result.hedges == 1 and result.hedges_won == 1
    assert result.placement == {"usd": 0.25} and result.estimated_usd == 0.5  # the hedge's too
    assert result.busy_s >= lost.ms / 1000 > 0  # the cancelled attempt held its target too
    report = orjson.loads(orjson.dumps(result.report()))
    assert report["hedges"] == 1 and report["hedges_won"] == 1
    attempts = report["shards"][0]["attempts"]
    assert attempts[0]["cancelled"] and attempts[0]["error"] == "cancelled: fast answered first"
    assert attempts[1]["hedge"] and "cancelled" not in attempts[1]
    # the loser was cancelled, its slot given back, and its target counts a stall
    assert hung.cancelled == 1 and asyncio.all_tasks() == {asyncio.current_task()}
    assert dispatcher.health.view("hung").in_flight == 0
    hung_state, fast_state = dispatcher.health["hung"], dispatcher.health["fast"]
    assert (hung_state.stalls, fast_state.hedges, fast_state.hedges_won) == (1, 1, 1)


async def test_the_first_attempt_answering_first_cancels_the_hedge_without_a_stall() -> None:
    dispatcher = make(
        [target("cheap", "soon", 0.0), target("dear", "late", 1.0)],
        Slow("soon", 0.05),
        Slow("late", 5.0),
        stall_factor=100,  # 50 ms is slow against a 2 ms p95, but not a stall
    )
    with_history(dispatcher, "cheap", "dear")
    started = time.monotonic()
    result = await dispatcher.dispatch("m", None, request(1))
    assert time.monotonic() - started < 1.0
    (shard,) = result.shards
    assert shard.target == "cheap"
    assert [(a.target, a.ok, a.hedge, a.cancelled) for a in shard.attempts] == [
        ("dear", False, True, True),
        ("cheap", True, False, False),
    ]
    assert result.hedges == 1 and result.hedges_won == 0
    assert dispatcher.health["cheap"].stalls == dispatcher.health["dear"].stalls == 0
    assert dispatcher.health.view("dear").in_flight == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize(("budget", "hedged"), [(0.05, [1, 0]), (0.0, [0, 0])])
async def test_hedges_stay_within_the_budget(budget: float, hedged: list[int]) -> None:
    # a one-hedge burst; a slow target that is never stalled long enough to count as a stall
    dispatcher = make(
        [target("cheap", "slow", 0.0), target("dear", "double", 1.0)],
        Slow("slow", 0.03),
        Doubler(),
        hedge_budget=budget,
        hedge_burst=1,
        stall_factor=100,
    )
    with_history(dispatcher, "cheap", "dear")
    results = [await dispatcher.dispatch("m", None, request(1)) for _ in hedged]
    assert [r.hedges for r in results] == hedged
    # the second request found the bucket empty (two shards earn a tenth of a hedge) and waited
    assert [(a.target, a.ok) for a in results[1].shards[0].attempts] == [("cheap", True)]


async def test_a_silent_target_stalls_into_its_breaker_and_its_shards_are_re_sent() -> None:
    hung = Hanging()
    dispatcher = make(
        [target("hung", "hang", 0.0), target("good", "double", 1.0)],
        hung,
        Doubler(),
        hedge_burst=0,  # no budget yet: only stalling gets a shard off the hung target
        stall_factor=2,
        breaker_failures=2,
    )
    with_history(dispatcher, "hung", "good")
    for _ in range(2):
        result = await dispatcher.dispatch("m", None, request(1))
        np.testing.assert_array_equal(result.outputs[0].data, expected(1))
        assert [(a.target, a.ok, a.hedge) for a in result.shards[0].attempts] == [
            ("hung", False, False),
            ("good", True, True),
        ]
    assert dispatcher.health["hung"].stalls == 2  # once per silent shard, not once per watch
    assert dispatcher.health.view("hung").breaker is BreakerState.OPEN
    result = await dispatcher.dispatch("m", None, request(1))  # benched: straight to the good one
    assert [(a.target, a.hedge) for a in result.shards[0].attempts] == [("good", False)]
    assert hung.cancelled == 2 and dispatcher.health.view("hung").in_flight == 0


async def test_a_hung_target_is_benched_then_readmitted_once_it_answers_again() -> None:
    clock, frozen = Later(), Freezable()
    dispatcher = make(
        [target("cheap", "freeze", 0.0), target("dear", "double", 1.0)],
        frozen,
        Doubler(),
        clock=clock,
        breaker_failures=2,
        breaker_cooldown_s=5.0,
    )
    with_history(dispatcher, "cheap", "dear")
    for _ in range(2):  # each hedge that beats the frozen target is a stall of it
        assert (await dispatcher.dispatch("m", None, request(1))).hedges_won == 1
    assert dispatcher.health.view("cheap").breaker is BreakerState.OPEN
    frozen.frozen = False  # SIGCONT, or a worker restarted on the same address
    result = await dispatcher.dispatch("m", None, request(1))
    assert result.shards[0].target == "dear"  # still benched until the cool-down ends
    clock.offset += 5.0
    result = await dispatcher.dispatch("m", None, request(1))  # the probe goes to it, and answers
    assert result.shards[0].target == "cheap" and result.hedges == 0
    assert dispatcher.health.view("cheap").breaker is BreakerState.CLOSED


class Stepping(Doubler):
    """Answers all its shards at once, a second later by the test's clock: past their hedge
    time, so the second answer is still queued when its shard's hedge is sent."""

    name = "step"

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        await asyncio.sleep(0)
        self.clock.now += 1.0
        for shard in shards:
            yield self.answer(target, shard)


async def test_a_hedge_cancelled_before_it_ran_gives_its_slot_back() -> None:
    clock = FakeClock()
    dispatcher = make(
        [target("cheap", "step", 0.0, max_concurrency=4), target("dear", "double", 1.0)],
        Stepping(clock),
        Doubler(),
        clock=clock,
    )
    with_history(dispatcher, "cheap", "dear")
    result = await dispatcher.dispatch("m", None, request(2))
    np.testing.assert_array_equal(result.outputs[0].data, expected(2))
    assert result.hedges == 1 and result.hedges_won == 0
    assert dispatcher.health.view("dear").in_flight == 0
    assert dispatcher.health.view("cheap").in_flight == 0


def test_request_ids_are_unique_and_a_forked_front_door_draws_its_own() -> None:
    import os

    from core.dispatch.dispatcher import _request_id

    ids = [_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a `gpufan serve --processes` child
        os.write(write, _request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    os.close(write)
    assert child[:12] != ids[0][:12]  # its own prefix: ids never collide across processes
