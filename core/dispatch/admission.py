"""Admission control at the front door: shed at the door rather than queue without bound.

A request is admitted only while the targets that serve its model can start its shards soon:
at most ``queue_per_slot`` shards may wait for every concurrency slot those targets have (the
per-target queues, summed over the model's healthy targets), at most ``1 + queue_per_slot``
requests per slot may be admitted for the model and not yet answered (a request is admitted
before its shards exist, so without this a burst admitted in one pass of the event loop would
all read the same empty queues), and at most ``max_requests`` requests may be in flight
overall. Past any of these, a request waits up to ``wait_s`` for a request before it to
finish, then is shed with 503 and ``Retry-After`` — before any of it ran, so the client may
simply send it again. Admitted requests therefore wait behind at most about one round of work
per slot however much is offered (what they pay beyond that is the front door's own CPU: see
bench.reliability); what is shed shows in ``/metrics`` by reason.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge

from core.dispatch.health import TargetHealth
from core.errors import Overloaded
from core.wire.room import Room

__all__ = ["Admission"]


class Admission:
    """The front door's gate: ``async with admission.admit(model): ...`` around a dispatch."""

    def __init__(
        self,
        health: TargetHealth,
        *,
        max_requests: int,
        queue_per_slot: float,
        wait_s: float,
        registry: CollectorRegistry,
    ) -> None:
        self._health = health
        self._max_requests = max_requests
        self._queue_per_slot = queue_per_slot
        self._wait_s = wait_s
        self._in_flight = 0
        self._per_model: collections.Counter[str] = collections.Counter()
        self._room = Room()  # where requests wait for one to finish
        self._gauge = Gauge(
            "gpufan_requests_in_flight", "Front-door requests admitted and not yet answered",
            registry=registry,
        )  # fmt: skip
        self._shed = Counter(
            "gpufan_shed_requests",
            "Requests shed at admission, by reason (requests: too many in flight; "
            "queue: the model's targets have a full queue)",
            ["reason"],
            registry=registry,
        )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @asynccontextmanager
    async def admit(self, model: str) -> AsyncIterator[None]:
        """Hold one admission for the block; raise ``Overloaded`` when none frees in time.

        With room now it takes its place at once; only a request that must wait takes a lock
        and a timer (``core.wire.room``)."""
        if not await self._room.wait(lambda: self._refusal(model) is None, self._wait_s):
            reason = self._refusal(model) or "queue"
            self._shed.labels(reason).inc()
            raise Overloaded(_MESSAGES[reason])
        self._in_flight += 1
        self._per_model[model] += 1
        self._gauge.set(self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= 1
            self._per_model[model] -= 1
            self._gauge.set(self._in_flight)
            await self._room.freed()

    def _refusal(self, model: str) -> str | None:
        """Why a request for ``model`` may not start now, or None when it may."""
        if self._in_flight >= self._max_requests:
            return "requests"
        slots = queued = 0
        for state in self._health.states():
            if state.target.serves(model) and state.breaker.allows():
                slots += state.target.max_concurrency
                queued += max(state.in_flight - state.target.max_concurrency, 0)
        if slots and (
            queued >= self._queue_per_slot * slots
            or self._per_model[model] >= (1 + self._queue_per_slot) * slots
        ):
            return "queue"
        return None  # no healthy target at all is the dispatcher's to say (NoFeasibleTarget)


_MESSAGES = {
    "requests": "the front door has as many requests in flight as it admits; retry shortly",
    "queue": "every target serving this model has a full queue; retry shortly",
}
