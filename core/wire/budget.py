"""A per-process budget for the bytes that requests in flight hold, with admission control.

A server's memory is what its requests hold while they are read, decoded, run and answered, so
the edge reserves each request's cost *before* reading its body: a request that would take the
process past the budget waits briefly for others to finish, then is shed (503 with
``Retry-After``) without a byte of its body read; one that could never fit is refused (413).
Responses are added to the reservation once built, so many large answers hold back new work too.

What a body costs once decoded is its size times a factor per encoding (``request_cost``),
measured on the densest inputs each codec accepts.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from core.errors import Overloaded, PayloadTooLarge
from core.wire.room import Room

__all__ = ["BINARY_FACTOR", "JSON_FACTOR", "PARSED_JSON_FACTOR", "MemoryBudget", "request_cost"]

# Bytes held per body byte, peak, while a request is decoded and answered (tracemalloc, numpy 2,
# orjson 3). JSON: large flat numeric arrays go straight to numpy (core.wire.jsonlift): the body,
# plus at most 8 bytes of INT64/FP64 per 2 bytes of ``1,``, plus one slice's objects: 6x
# reserved up front. What is parsed into Python objects instead (the skeleton: nested arrays,
# strings, booleans) holds up to 20.0x (``[0.0,0.0,...]``; 24 leaves room for list growth) and
# is charged the difference by the codec before it parses. Binary tensors are zero-copy views of
# the body (1x) plus the front door's re-encoded shards or a worker's batch copy (1x).
JSON_FACTOR = 6
PARSED_JSON_FACTOR = 24
BINARY_FACTOR = 2


def request_cost(content_length: int, headers: Mapping[str, str]) -> int:
    """The bytes a request of ``content_length`` will hold, from its binary-extension header."""
    json_part = content_length
    declared = headers.get("inference-header-content-length", "")
    if declared.isdigit():
        json_part = min(int(declared), content_length)
    return json_part * JSON_FACTOR + (content_length - json_part) * BINARY_FACTOR


class MemoryBudget:
    """Bytes reserved by requests in flight, never above ``capacity`` for what is admitted."""

    def __init__(self, capacity: int, *, wait_s: float, registry: CollectorRegistry) -> None:
        if capacity < 1:
            raise ValueError(f"a memory budget needs capacity >= 1 byte, got {capacity}")
        self.capacity = capacity
        self._wait_s = wait_s
        self._in_use = 0
        self._room = Room()
        Gauge(
            "gpufan_memory_budget_bytes", "Bytes requests in flight may hold", registry=registry
        ).set(capacity)
        self._gauge = Gauge(
            "gpufan_memory_in_use_bytes", "Bytes requests in flight hold now", registry=registry
        )
        self._shed = Counter(
            "gpufan_memory_shed",
            "Requests shed because the memory budget was full",
            registry=registry,
        )

    @property
    def in_use(self) -> int:
        return self._in_use

    async def acquire(self, nbytes: int) -> None:
        """Reserve ``nbytes``, waiting up to the budget's wait for room.

        Raises:
            PayloadTooLarge: ``nbytes`` exceeds the whole budget (it could never be admitted).
            Overloaded: no room freed within the wait.
        """
        if nbytes > self.capacity:
            raise PayloadTooLarge(_too_large(nbytes, self.capacity))
        if not await self._room.wait(lambda: self._in_use + nbytes <= self.capacity, self._wait_s):
            self._shed.inc()
            raise Overloaded(_full(self._in_use, self.capacity))
        self.add(nbytes)

    def take(self, nbytes: int) -> None:
        """Reserve ``nbytes`` now or raise (for synchronous code that cannot wait).

        Raises:
            PayloadTooLarge: ``nbytes`` exceeds the whole budget.
            Overloaded: there is no room now.
        """
        if nbytes > self.capacity:
            raise PayloadTooLarge(_too_large(nbytes, self.capacity))
        if self._in_use + nbytes > self.capacity:
            self._shed.inc()
            raise Overloaded(_full(self._in_use, self.capacity))
        self.add(nbytes)

    def add(self, nbytes: int) -> None:
        """Count bytes already held (a built response) without waiting."""
        self._in_use += nbytes
        self._gauge.set(self._in_use)

    async def release(self, nbytes: int) -> None:
        self._in_use -= nbytes
        self._gauge.set(self._in_use)
        await self._room.freed()


def _too_large(nbytes: int, capacity: int) -> str:
    return (
        f"this request would hold about {nbytes} bytes once decoded, more than the server's "
        f"memory budget of {capacity} bytes; send a smaller batch, flat numeric JSON arrays, "
        "or its tensors as binary data (the binary tensor extension costs ~1 byte per byte)"
    )


def _full(in_use: int, capacity: int) -> str:
    return (
        f"the server's memory budget is full ({in_use} of {capacity} bytes held by requests "
        "in flight); retry shortly"
    )
