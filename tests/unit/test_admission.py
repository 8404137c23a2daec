"""Front-door admission: shed at the door when a model's targets have a full queue, or when too
many requests are in flight; wait briefly for room first; what is shed is counted."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from core.config import Policy, Target
from core.dispatch.admission import Admission
from core.dispatch.health import TargetHealth
from core.errors import Overloaded

pytestmark = pytest.mark.timeout(10)


def _gate(**kw: float) -> tuple[Admission, TargetHealth, CollectorRegistry]:
    targets = [
        Target(name="a", backend="http", max_concurrency=2, models=["m"]),
        Target(name="b", backend="http", max_concurrency=2, models=["m"]),
        Target(name="c", backend="http", max_concurrency=8, models=["other"]),
    ]
    health = TargetHealth(targets, Policy())
    registry = CollectorRegistry()
    args = {"max_requests": 100, "queue_per_slot": 1.0, "wait_s": 0.1, **kw}
    return Admission(health, registry=registry, **args), health, registry  # type: ignore[arg-type]


async def test_a_full_queue_on_every_target_of_the_model_sheds_after_the_wait() -> None:
    gate, health, registry = _gate()
    health["a"].begin(2 + 2)  # both slots busy and two shards waiting: a's queue is full
    health["b"].begin(2 + 1)  # one waiting: 3 of 4 queue places taken
    async with gate.admit("m"):  # still room: 3 < 1.0 x 4 slots
        health["b"].begin(1)  # this request's shard queues: 4 of 4
        started = time.perf_counter()
        with pytest.raises(Overloaded, match="full queue") as shed:
            async with gate.admit("m"):
                pass
        assert 0.09 < time.perf_counter() - started < 0.5
        assert shed.value.headers == {"retry-after": "1"}
        async with gate.admit("other"):  # another model's targets are idle: admitted
            pass
    assert b'gpufan_shed_requests_total{reason="queue"} 1.0' in generate_latest(registry)


async def test_a_waiting_request_is_admitted_when_one_before_it_finishes() -> None:
    gate, _, _ = _gate(max_requests=1, wait_s=2.0)
    order: list[str] = []

    async def first() -> None:
        async with gate.admit("m"):
            await asyncio.sleep(0.2)
            order.append("first")

    task = asyncio.create_task(first())
    await asyncio.sleep(0.05)
    assert gate.in_flight == 1
    started = time.perf_counter()
    async with gate.admit("m"):
        order.append("second")
        assert 0.1 < time.perf_counter() - started < 1.0
    await task
    assert order == ["first", "second"] and gate.in_flight == 0


async def test_too_many_requests_in_flight_is_its_own_reason() -> None:
    gate, _, registry = _gate(max_requests=1, wait_s=0.0)
    async with gate.admit("m"):
        with pytest.raises(Overloaded, match="requests in flight"):
            async with gate.admit("m"):
                pass
    assert b'gpufan_shed_requests_total{reason="requests"} 1.0' in generate_latest(registry)


async def test_a_model_without_healthy_targets_is_left_to_the_dispatcher() -> None:
    gate, _, _ = _gate()
    async with gate.admit("unserved"):  # no slots at all: NoFeasibleTarget is the dispatcher's
        assert gate.in_flight == 1


async def test_a_burst_admitted_before_its_shards_exist_is_capped_per_slot() -> None:
    """Requests admitted in one pass of the loop all read empty queues: the per-model count of
    admitted requests caps the burst at (1 + queue_per_slot) x slots."""
    gate, _, _ = _gate(wait_s=0.0)  # model m: 4 slots, no shard in flight yet
    async with contextlib.AsyncExitStack() as held:
        for _ in range(8):  # (1 + 1.0) x 4
            await held.enter_async_context(gate.admit("m"))
        with pytest.raises(Overloaded, match="full queue"):
            async with gate.admit("m"):
                pass
        async with gate.admit("other"):  # its own slots
            pass
    async with gate.admit("m"):  # the burst answered: room again
        pass
