"""The one-shard relay inside the dispatcher, over an in-process backend that relays for real.

``Relayer`` decodes the relayed bytes, doubles ``x`` and answers with a real encoded OIP
response, or misbehaves as scripted; every other path of the dispatcher sees the same backend
through ``run`` (the ``Doubler`` of ``test_dispatch``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import orjson
import pytest

from core.config import Policy, Target
from core.dispatch.dispatcher import Dispatcher
from core.errors import ClientError, DispatchError, TargetUnavailable
from core.wire.h1 import Abandoned, H1Reply, Patience
from core.wire.tensors import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    Tensor,
    WireBody,
    decode_request,
    encode_request,
    encode_response,
)
from tests.unit.test_dispatch import Doubler, expected, no_wait


class Relayer(Doubler):
    """Relays: answers ``x * 2`` from the wire bytes, or follows ``script`` call by call."""

    name = "relayer"

    def __init__(self, *script: str) -> None:
        super().__init__()
        self.script = list(script)
        self.relayed: list[tuple[str, bytes]] = []  # (target, body) per relay call
        self.refuse: set[str] = set()  # targets it cannot relay to

    def relays(self, target: Target) -> bool:
        return target.name not in self.refuse

    async def relay(
        self,
        target: Target,
        model: str,
        version: str | None,
        wire: WireBody,
        timeout_s: float,
        patience: Patience | None,
    ) -> H1Reply:
        body = b"".join(bytes(b) for b in wire.buffers)
        assert len(body) == wire.size
        self.relayed.append((target.name, body))
        step = self.script.pop(0) if self.script else "ok"
        if step == "down":
            raise TargetUnavailable("connection refused")
        if step == "slow":
            assert patience is not None
            await asyncio.sleep(patience.after_s)
            if patience.give_up():
                raise Abandoned("unanswered")
        if step in ("400", "404", "503"):
            body = orjson.dumps({"error": f"scripted {step}"})
            return H1Reply(int(step), {"content-type": "application/json"}, body)
        if step == "garbage":
            return H1Reply(200, {}, b"not json")
        request = decode_request(body, wire.header_length)
        y = request.inputs[0].data * 2
        if step == "short":
            y = y[:-1]
        answer = InferResponse(model, (Tensor("y", y),), parameters={"queue_depth": 3})
        chunks, headers = encode_response(answer, request.outputs, request.binary_output_default)
        return H1Reply(200, headers, b"".join(chunks))


def wired(n: int, *, binary: bool = True, **parameters: Any) -> InferRequest:
    """A request as the front door's REST edge hands it over: decoded, with its wire bytes."""
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    chunks, headers = encode_request(
        InferRequest((Tensor("x", x),), parameters={"binary_data_output": True, **parameters}),
        binary=binary,
    )
    return decode_request(b"".join(chunks), headers.get(HEADER_LENGTH))


def targets(*names: str, **kw: Any) -> list[Target]:
    return [
        Target(name=n, backend="relayer", usd_per_hour=float(i), **kw) for i, n in enumerate(names)
    ]


def make(backend: Relayer, names: tuple[str, ...] = ("a", "b"), **policy: Any) -> Dispatcher:
    return Dispatcher(
        targets(*names),
        {"relayer": backend},
        Policy(**{"backoff_ms": 1.0, "min_shard_items": 8, **policy}),
        sleep=no_wait,
    )


async def test_a_one_shard_request_is_relayed_as_it_arrived_and_reported_once() -> None:
    backend = Relayer()
    dispatcher = make(backend)
    request = wired(3)
    result = await dispatcher.dispatch("m", None, request, request_id="r1")
    np.testing.assert_array_equal(result.outputs[0].data, expected(3))
    assert backend.relayed == [("a", request.wire.body)]  # the cheapest target, bytes unchanged
    assert backend.calls == []  # nothing went through Fanout
    (shard,) = result.shards
    assert (shard.target, shard.items, len(shard.attempts), shard.attempts[0].ok) == (
        "a",
        3,
        1,
        True,
    )
    assert result.redispatched == 0
    state = dispatcher.health["a"]
    assert (state.in_flight, state.ok, state.telemetry.queue_depth) == (0, 1, 3)
    assert result.report()["request_id"].startswith("r1.")


async def test_requests_the_relay_does_not_take_go_through_fanout() -> None:
    backend = Relayer()
    dispatcher = make(backend)
    # gpufan's parameters in a JSON body (its data is in the header it would have to re-encode),
    # a parameter no one vouches for, and a decoded-from-nothing request (no wire)
    for request in (
        wired(3, binary=False, slo_ms=500),
        wired(3, trace="t1"),
        InferRequest(wired(3).inputs),
    ):
        result = await dispatcher.dispatch("m", None, request)
        np.testing.assert_array_equal(result.outputs[0].data, expected(3))
    # several shards, and a target whose endpoint the backend cannot relay to
    await dispatcher.dispatch("m", None, wired(40))
    backend.refuse.add("a")
    await dispatcher.dispatch("m", None, wired(3))
    assert backend.relayed == []
    assert len(backend.calls) == 1 + 1 + 1 + 5 + 1


async def test_gpufan_parameters_are_taken_out_of_what_is_relayed() -> None:
    backend = Relayer()
    dispatcher = make(backend)
    request = wired(3, slo_ms=500, clouds=["onprem"], max_attempts=2)
    wire = request.wire
    assert wire is not None and wire.header_length is not None
    result = await dispatcher.dispatch("m", None, request)
    np.testing.assert_array_equal(result.outputs[0].data, expected(3))
    ((target, body),) = backend.relayed
    relayed = wire.without_parameters(frozenset({"slo_ms", "clouds", "max_attempts"}))
    assert target == "a" and relayed is not None and relayed.header_length is not None
    assert body == b"".join(bytes(b) for b in relayed.buffers) and len(body) == relayed.size
    sent, arrived = (orjson.loads(b[: int(n)]) for b, n in
                     ((body, relayed.header_length), (wire.body, wire.header_length)))  # fmt: skip
    assert sent["parameters"] == {"binary_data_output": True}  # what the target needs stays
    assert sent["inputs"] == arrived["inputs"]
    assert body.endswith(wire.body[int(wire.header_length) :])  # tensors' bytes as they arrived


@pytest.mark.parametrize("failure", ["down", "503", "404", "garbage", "short"])
async def test_a_failed_relay_is_handed_over_counted_and_redispatched_elsewhere(
    failure: str,
) -> None:
    backend = Relayer(failure)
    dispatcher = make(backend)
    result = await dispatcher.dispatch("m", None, wired(3))
    np.testing.assert_array_equal(result.outputs[0].data, expected(3))
    (shard,) = result.shards
    first, second = shard.attempts
    assert (first.target, first.ok, second.target, second.ok) == ("a", False, "b", True)
    assert result.redispatched == 1
    assert backend.calls == [("b", backend.calls[0][1])]  # the re-dispatch avoided "a"
    a = dispatcher.health["a"]
    assert (a.in_flight, a.failed, dispatcher.health["b"].in_flight) == (0, 1, 0)


async def test_the_relay_attempt_counts_toward_max_attempts() -> None:
    backend = Relayer("down")
    dispatcher = make(backend, names=("a",), max_attempts=1)
    with pytest.raises(DispatchError, match="on all 1 attempts") as raised:
        await dispatcher.dispatch("m", None, wired(3))
    assert [type(e) for e in raised.value.causes.values()] == [TargetUnavailable]
    assert backend.calls == []


async def test_a_targets_400_is_the_callers_and_nothing_is_retried() -> None:
    backend = Relayer("400")
    dispatcher = make(backend)
    with pytest.raises(ClientError, match="scripted 400") as raised:
        await dispatcher.dispatch("m", None, wired(3))
    assert raised.value.status == 400
    assert backend.calls == [] and len(backend.relayed) == 1
    a = dispatcher.health["a"]
    assert (a.in_flight, a.failed) == (0, 0)


async def test_a_straggler_is_abandoned_at_its_hedge_delay_and_sent_elsewhere() -> None:
    backend = Relayer("slow")
    dispatcher = make(backend, deadline_ms=2000, hedge_deadline_share=0.01)
    began = time.monotonic()
    result = await dispatcher.dispatch("m", None, wired(3))
    assert time.monotonic() - began < 1.0  # hedged after ~20 ms, not at the deadline
    np.testing.assert_array_equal(result.outputs[0].data, expected(3))
    first, second = result.shards[0].attempts
    assert (first.target, first.cancelled, second.target, second.hedge) == ("a", True, "b", True)
    assert (result.hedges, result.hedges_won, result.redispatched) == (1, 1, 0)
    assert dispatcher.health["a"].in_flight == 0


async def test_with_nowhere_else_to_go_a_straggler_is_awaited() -> None:
    backend = Relayer("slow")
    dispatcher = make(backend, names=("a",), deadline_ms=2000, hedge_deadline_share=0.01)
    result = await dispatcher.dispatch("m", None, wired(3))
    (attempt,) = result.shards[0].attempts
    assert (attempt.target, attempt.ok, result.hedges) == ("a", True, 0)


async def test_the_relay_holds_a_slot_like_any_shard() -> None:
    backend = Relayer()
    dispatcher = make(backend, names=("a",))
    slots = dispatcher.health["a"].slots
    held = [await slots.acquire() for _ in range(dispatcher.health["a"].target.max_concurrency)]
    call = asyncio.create_task(dispatcher.dispatch("m", None, wired(3)))
    await asyncio.sleep(0.05)
    assert not call.done() and backend.relayed == []  # waiting for a free slot
    slots.release()
    await call
    assert held and backend.relayed


async def test_a_cancelled_caller_gives_its_slot_and_count_back() -> None:
    class Forever(Relayer):
        async def relay(self, *args: Any) -> H1Reply:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    dispatcher = make(Forever(), names=("a",))
    call = asyncio.create_task(dispatcher.dispatch("m", None, wired(3)))
    await asyncio.sleep(0.02)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    state = dispatcher.health["a"]
    assert state.in_flight == 0 and not state.slots.locked()
