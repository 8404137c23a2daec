"""The local HTTP edge: an ASGI adapter over a ``Handler`` and a uvicorn runner.

The adapter reserves each request's decoded cost in the process's memory budget before reading
its body (``core.wire.budget``), enforces the body-size limit while the body streams in (so an
oversize upload is refused with 413 before it is buffered), and writes response buffers without
joining them. The runner serves through ``core.wire.edge``'s guarded protocol (read timeouts,
idle keep-alive, a connection cap). Both add their series to the handler's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvicorn
from prometheus_client import generate_latest

from core.errors import GpufanError, PayloadTooLarge
from core.wire.budget import MemoryBudget, request_cost
from core.wire.edge import EdgeLimits, EdgeMetrics, guarded_protocol
from core.wire.fanin import MetricsFanIn
from core.wire.http import JOIN_BYTES, Handler, Request, Response, json_response

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "AsgiApp",
    "RunningServer",
    "bind_socket",
    "run_async",
    "serve",
    "start_server",
]

# 2 GiB: eight 16 MiB binary batches and their answers at once, or one 100 MB JSON body.
DEFAULT_MEMORY_BUDGET = 2 << 30
# How long a request may wait for memory before it is shed: short next to any SLO, long enough
# for a batch in flight to be answered and free its bytes.
_ADMISSION_WAIT_S = 0.5

Hook = Callable[[], Awaitable[None]]
T = TypeVar("T")


class AsgiApp:
    """ASGI 3 application calling ``handler``; lifespan events run ``startup``/``shutdown``."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        edge: EdgeLimits | None = None,
        startup: Hook | None = None,
        shutdown: Hook | None = None,
    ) -> None:
        self._handler = handler
        self._max = max_body_bytes
        # Run in order at start-up; at shutdown likewise (``serve_grpc`` puts its stop first).
        self.startup: list[Hook] = [startup] if startup else []
        self.shutdown: list[Hook] = [shutdown] if shutdown else []
        self.edge = edge or EdgeLimits()
        self.edge_metrics = EdgeMetrics()
        self.budget = MemoryBudget(
            memory_budget, wait_s=_ADMISSION_WAIT_S, registry=self.edge_metrics.registry
        )
        # several processes on one port: /metrics answers for all (``core.wire.fanin``)
        self.fan_in: MetricsFanIn | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            hooks = self.startup if kind == "lifespan.startup" else self.shutdown
            try:
                for hook in hooks:
                    await hook()
            except Exception as e:  # reported to the server, which exits
                await send({"type": f"{kind}.failed", "message": repr(e)})
                return
            await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        held = _Held(self.budget, headers)
        try:
            try:
                declared = headers.get("content-length", "")
                if declared.isdigit():  # reserve before reading a byte of the body
                    length = int(declared)
                    if length > self._max:
                        raise PayloadTooLarge(
                            f"request body of {length} bytes exceeds the limit of {self._max} bytes"
                        )
                    await held.grow(length)
                body = await self._read_body(receive, held)
            except GpufanError as e:
                self.edge_metrics.refused.labels(type(e).__name__).inc()
                await _send(send, _error(e))
                return
            if body is None:  # client went away
                return
            request = Request(
                method=scope["method"],
                path=scope["path"],
                headers=headers,
                body=body,
                query=scope.get("query_string", b"").decode("latin-1"),
                charge=held.take,
            )
            response = await self._handler(request)
            if request.path == "/metrics" and response.status == 200:
                response.body.append(generate_latest(self.edge_metrics.registry))
                if self.fan_in is not None:
                    response.body[:] = [await self.fan_in.merged(b"".join(response.body))]
            held.add(response.content_length)  # built already: counted while it is sent
            await _send(send, response)
        finally:
            await held.release()

    async def _read_body(self, receive: Any, held: _Held) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self._max:
                    raise PayloadTooLarge(  # chunked, or more than its Content-Length
                        f"request body exceeds the limit of {self._max} bytes"
                    )
                await held.grow(size)  # a chunked body reserves as it arrives
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Held:
    """One request's reservation in the memory budget: its body's decoded cost, then its answer."""

    def __init__(self, budget: MemoryBudget, headers: dict[str, str]) -> None:
        self._budget = budget
        self._headers = headers
        self._length = 0  # body bytes reserved for
        self._bytes = 0

    async def grow(self, length: int) -> None:
        """Reserve for a body of ``length`` bytes (no-op when that much is reserved already)."""
        if length <= self._length:
            return
        extra = request_cost(length, self._headers) - request_cost(self._length, self._headers)
        await self._budget.acquire(extra)
        self._length = length
        self._bytes += extra

    def take(self, nbytes: int) -> None:
        """Reserve ``nbytes`` more now, or raise (the codec's charge; see ``Request.charge``)."""
        self._budget.take(nbytes)
        self._bytes += nbytes

    def add(self, nbytes: int) -> None:
        self._budget.add(nbytes)
        self._bytes += nbytes

    async def release(self) -> None:
        await self._budget.release(self._bytes)
        self._bytes = 0


def _error(e: GpufanError) -> Response:
    """A refusal before the body was read. An oversize body ends the connection; a shed one
    (503) keeps it: closing with the body unread would reset it, and a client still sending
    (as most do before they read) would lose the answer; uvicorn discards the body instead."""
    close = {"connection": "close"} if isinstance(e, PayloadTooLarge) else {}
    return json_response(e.status, {"error": str(e)}, {**close, **e.headers})


async def _send(send: Any, response: Response) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    headers.append((b"content-length", str(response.content_length).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    chunks = response.body
    if len(chunks) > 1 and response.content_length <= JOIN_BYTES:  # one write, not one each
        chunks = [b"".join(chunks)]
    last = len(chunks) - 1
    if last < 0:
        await send({"type": "http.response.body", "body": b""})
    for i, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < last})


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind a listening socket (port 0 picks a free port; read it back with getsockname).

    ``reuse_port``: SO_REUSEPORT, so that several processes each bind their own socket to the
    port and the kernel spreads connections over them (``gpufan serve --processes``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every small response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class RunningServer:
    """A uvicorn server running as a task on the current event loop."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self._server = server
        self.task = task

    async def stop(self) -> None:
        self._server.should_exit = True
        await self.task


async def start_server(
    app: AsgiApp, sock: socket.socket, *, timeout_s: float = 30.0
) -> RunningServer:
    """Start serving ``app`` on ``sock`` in this loop; return once it accepts connections."""
    config = uvicorn.Config(
        app,
        http=guarded_protocol(app.edge, app.edge_metrics),
        lifespan="on",
        log_level="warning",
        log_config=None,  # its records go to the root handler: core.wire.logs' format
        access_log=False,
        # No X-Forwarded-For rewriting: nothing here reads the client's address, and the
        # middleware is one more coroutine on every request.
        proxy_headers=False,
        timeout_keep_alive=app.edge.keep_alive_s,  # type: ignore[arg-type]  # a float works
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + timeout_s
    # uvicorn exposes no start-up event, only the flag; poll it, bounded by the deadline.
    while not server.started and not task.done():
        if asyncio.get_running_loop().time() > deadline:
            server.should_exit = True
            raise TimeoutError(f"server did not start within {timeout_s} s")
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # start-up failed: raise its error
        raise RuntimeError("server exited during start-up")
    return RunningServer(server, task)


def serve(
    app: AsgiApp, sock: socket.socket, *, announce: str | Callable[[], str] | None = None
) -> None:
    """Run ``app`` on ``sock`` until SIGINT/SIGTERM; print ``announce`` once it accepts requests
    (a callable is asked then: a gRPC port picked at start-up is known only by then).

    The announcement line is how a parent process learns that a child worker is ready.
    """

    async def main() -> None:
        running = await start_server(app, sock)
        if announce:
            print(announce if isinstance(announce, str) else announce(), flush=True)
        await running.task

    # uvicorn re-raises the signal that stopped it once it has shut down; with SIGTERM's default
    # action that would kill the process (exit -15) after a clean shutdown. A no-op handler
    # makes SIGTERM end the process with status 0, as a graceful stop should.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run_async(main())
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where it is installed (it halves per-request overhead)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
