"""The HTTP edge's self-protection: read timeouts, idle keep-alive, a cap on open connections.

uvicorn already closes idle keep-alive connections and parses HTTP with httptools; what it lacks
is a deadline for a request's headers and body, so a client sending a byte at a time
(slowloris) or a ``Content-Length`` longer than the body it sends holds its socket forever. The
guard below adds them as a subclass of uvicorn's httptools protocol, the way nginx's
``client_header_timeout``/``client_body_timeout`` and ``worker_connections`` work:

- headers must be complete within ``header_timeout_s`` of the connection opening (or of the
  first byte of the next request on a kept-alive connection), however steadily they trickle
  in: else 408 and close;
- while a body streams in, each gap between reads may last at most ``body_timeout_s``: else 408
  and close (a pause that is ours never counts against the client: reading held back, bytes
  received that the app has not taken yet — as while it waits for memory —, or a client
  waiting for our ``100 Continue``);
- past ``max_connections`` open sockets a new one is answered 503 with ``Retry-After`` and closed
  at once, before it can hold anything.

Progress is stamped in ``data_received``. A timer that fires late means the loop was busy (a
large body being decoded): bytes may be waiting unread, and libuv runs timers before I/O, so a
late body check grants a fresh interval instead of blaming the client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["EdgeLimits", "EdgeMetrics", "guarded_protocol"]

_LATE_S = 0.05  # a timer this late was held up by the event loop, not by the client


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The edge's settings (``server:`` in gpufan.yaml, flags on ``gpufan worker``)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 1.0  # longest silence inside a body: a datacentre client never stalls
    keep_alive_s: float = 5.0  # uvicorn's idle keep-alive timeout
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")


class EdgeMetrics:
    """What the edge refused and why, and what it holds now, as Prometheus series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "gpufan_http_open_connections", "Open HTTP connections", registry=self.registry
        )
        self.refused = Counter(
            "gpufan_http_refused",
            "Connections and requests the edge refused, by reason",
            ["reason"],
            registry=self.registry,
        )


def guarded_protocol(limits: EdgeLimits, metrics: EdgeMetrics) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits`` enforced (pass it as ``Config(http=...)``)."""

    class GuardedProtocol(_Guarded):
        pass

    GuardedProtocol.limits = limits
    GuardedProtocol.metrics = metrics
    return GuardedProtocol


class _Guarded(HttpToolsProtocol):
    limits: EdgeLimits
    metrics: EdgeMetrics

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._progress = self._since = self.loop.time()
        self._phase: str | None = "headers"  # what the client owes us: headers, a body, nothing
        self._timer: asyncio.TimerHandle | None = None
        self.metrics.connections.set(len(self.connections))
        if len(self.connections) > self.limits.max_connections:
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "too many open connections", "connections")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)
        self.metrics.connections.set(len(self.connections))

    def data_received(self, data: bytes) -> None:
        self._progress = self.loop.time()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._owe("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle: Any = self.cycle
        if cycle is not None and not isinstance(cycle.transport, _HeadWithBody):
            cycle.transport = _HeadWithBody(cycle.transport)
        self._owe("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._owe(None)

    # ------------------------------------------------------------------------------ deadlines

    def _owe(self, phase: str | None) -> None:
        self._phase = phase
        self._progress = self._since = self.loop.time()
        self._cancel()
        if phase is not None:
            self._arm()

    def _limit(self) -> float:
        limits = self.limits
        return limits.header_timeout_s if self._phase == "headers" else limits.body_timeout_s

    def _start(self) -> float:
        """Headers are due a fixed time after they began; a body, a time after its last bytes."""
        return self._since if self._phase == "headers" else self._progress

    def _arm(self) -> None:
        self._due = self._start() + self._limit()
        self._timer = self.loop.call_at(self._due, self._check)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._phase is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._phase == "body" and self._ours(now):
            self._progress = now
        limit = self._limit()
        if now - self._start() < limit:
            self._arm()
            return
        self._refuse(
            HTTPStatus.REQUEST_TIMEOUT,
            f"request {self._phase} not received within {limit:g} s",
            f"{self._phase}_timeout",
        )

    def _ours(self, now: float) -> bool:
        """Whether a silence inside a body is the server's doing, not the client's."""
        cycle: Any = self.cycle
        return bool(
            self.flow.read_paused  # we hold reading back
            or now - self._due > _LATE_S  # the loop was busy: bytes may be waiting unread
            or (cycle is not None and cycle.body)  # bytes the app has not taken yet (it waits)
            or (cycle is not None and cycle.waiting_for_100_continue)  # the client waits for us
        )

    def _refuse(self, status: HTTPStatus, message: str, reason: str) -> None:
        """Answer ``status`` with a JSON error, close the connection, and end the app's read."""
        self.metrics.refused.labels(reason).inc()
        body = orjson.dumps({"error": message})
        head = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            head.append("retry-after: 1")
        self._phase = None
        cycle: Any = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's next receive() says http.disconnect
            cycle.message_event.set()
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.transport.close()


class _HeadWithBody:
    """A response cycle's transport that sends its status line and headers with the first body
    bytes, in one write.

    uvicorn writes the head as soon as the app starts its response and the body when it comes,
    so a small answer leaves in two writes: two syscalls, and a client woken twice (on a 2-core
    box that alone was ~10% of the front door's time). Interim ``1xx`` heads (``100 Continue``)
    go out at once; everything after the first body write passes straight through.
    """

    __slots__ = ("_held", "_state", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held = b""
        self._state = 0  # 0: no head yet, 1: head held, 2: head sent

    def write(self, data: bytes) -> None:
        if self._state == 2:
            self._transport.write(data)
        elif self._state == 1:
            self._state = 2
            self._transport.write(self._held + data)
            self._held = b""
        elif data.startswith(b"HTTP/1.1 1"):  # an interim response: the client waits for it
            self._transport.write(data)
        else:
            self._state = 1
            self._held = data

    def close(self) -> None:
        if self._state == 1:
            self._state = 2
            self._transport.write(self._held)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
