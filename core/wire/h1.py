"""A lean HTTP/1.1 keep-alive client: the front door's one-shard relay path to OIP targets.

aiohttp costs about 180 us more than a bare asyncio protocol per small request on a 2-core VM
(one loop, batch-1 MLP answers from one worker: p50 ~890 us vs ~710 us), and the front door's
whole budget is 200 us. This client does only what that path needs and nothing else: plain
``http://``, a ``Content-Length`` body written in one call, one request at a time per connection,
idle connections pooled per ``host:port``. Parsing is httptools (uvicorn's parser), so chunked
answers and keep-alive rules are the parser's, not ours. Everything else (TLS, proxies, metadata
calls) goes through ``core.wire.client.OipClient`` on aiohttp.

A connection that broke, timed out or answered ``Connection: close`` is never pooled again, so
a failed call costs one connection, and the next call opens a fresh one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httptools

from core.errors import TargetTimeout, TargetUnavailable
from core.wire.http import JOIN_BYTES

__all__ = ["Abandoned", "H1Pool", "H1Reply", "Patience"]


class Abandoned(Exception):
    """The caller gave up on a call still in flight (its ``patience`` said so)."""


@dataclass(frozen=True, slots=True)
class H1Reply:
    """A whole response; header names are lower-case."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Patience:
    """Ask ``give_up()`` once ``after_s`` into a call; True abandons it (``Abandoned``)."""

    after_s: float
    give_up: Callable[[], bool]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` sends a request and resolves with its reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[H1Reply] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self.idle_since = 0.0
        self.reusable = True

    # -------------------------------------------------------------------------- asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the stream can no longer be trusted
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(TargetUnavailable(f"malformed HTTP response: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._transport = None
        why = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        self._fail(TargetUnavailable(f"connection lost before the response ended ({why})"))

    # -------------------------------------------------------------------------- parser side

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(H1Reply(self._parser.get_status_code(), self._headers, body))

    # -------------------------------------------------------------------------- caller side

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def exchange(
        self, data: Sequence[Any], timeout_s: float, patience: Patience | None, bound_s: float
    ) -> H1Reply:
        """Send the buffers ``data``; resolve with the reply, or fail after ``timeout_s`` (the
        time left of the caller's ``bound_s``, which the error names)."""
        transport = self._transport
        if transport is None:
            raise TargetUnavailable("connection closed")
        waiter: asyncio.Future[H1Reply] = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_later(timeout_s, self._expire, waiter, bound_s)
        asked = None
        if patience is not None and patience.after_s < timeout_s:
            asked = self._loop.call_later(patience.after_s, self._ask, waiter, patience)
        if len(data) == 1:
            transport.write(data[0])
        else:
            transport.writelines(data)  # a large body is never copied into one buffer
        try:
            return await waiter
        except BaseException:  # timed out, failed or cancelled: the connection's state is lost
            self.close()
            raise
        finally:
            timer.cancel()
            if asked is not None:
                asked.cancel()

    def _expire(self, waiter: asyncio.Future[H1Reply], timeout_s: float) -> None:
        if not waiter.done():
            waiter.set_exception(TargetTimeout(f"no response within {timeout_s:g} s"))

    def _ask(self, waiter: asyncio.Future[H1Reply], patience: Patience) -> None:
        if not waiter.done() and patience.give_up():
            waiter.set_exception(Abandoned(f"unanswered after {patience.after_s * 1000:.3g} ms"))

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class H1Pool:
    """Keep-alive connections per ``(host, port)``, made on first use in the running loop.

    Args:
        keepalive_s: an idle connection older than this is closed, not reused; keep it under
            the servers' own idle limit (uvicorn's default is 5 s) so a request is never written
            into a connection the server is closing.
        max_idle: idle connections kept per host (more in flight are closed when they finish).
    """

    def __init__(self, *, keepalive_s: float = 4.0, max_idle: int = 256) -> None:
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def request(
        self,
        host: str,
        port: int,
        head: bytes,
        body: Sequence[Any],
        timeout_s: float,
        patience: Patience | None = None,
    ) -> H1Reply:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body`` (its
        buffers, ``Content-Length`` already in ``head``); the whole exchange, connecting
        included, bounded by ``timeout_s``.

        Raises:
            TargetUnavailable: the connection could not be made or broke.
            TargetTimeout: no whole response within ``timeout_s``.
            Abandoned: ``patience`` gave up on it.
        """
        started = time.monotonic()
        connection = self._take((host, port), started) or await self._connect(host, port, timeout_s)
        size = len(head) + sum(len(b) for b in body)
        data = [b"".join((head, *body))] if size <= JOIN_BYTES else [head, *body]
        left = timeout_s - (time.monotonic() - started)
        reply = await connection.exchange(data, max(left, 1e-3), patience, timeout_s)
        self._give((host, port), connection)
        return reply

    def _take(self, key: tuple[str, int], now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.open and now - connection.idle_since < self._keepalive_s:
                return connection
            connection.close()
        return None

    def _give(self, key: tuple[str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if connection.reusable and connection.open and len(idle) < self._max_idle:
            connection.idle_since = time.monotonic()
            idle.append(connection)
        else:
            connection.close()

    async def _connect(self, host: str, port: int, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, connection = await loop.create_connection(lambda: _Connection(loop), host, port)
        except TimeoutError:
            raise TargetTimeout(f"connecting to {host}:{port} took over {timeout_s:g} s") from None
        except OSError as e:
            raise TargetUnavailable(f"cannot connect to {host}:{port}: {e}") from e
        return connection

    def close(self) -> None:
        """Close every idle connection (those in flight close as they finish)."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
