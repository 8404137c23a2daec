"""The HTTP edge protects itself: read timeouts, a connection cap, a memory budget with admission.

Each test runs a real uvicorn server on a loopback socket and talks to it with raw sockets, as a
slow or hostile client would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from core.wire.asgi import AsgiApp, RunningServer, bind_socket, start_server
from core.wire.budget import JSON_FACTOR, PARSED_JSON_FACTOR
from core.wire.edge import EdgeLimits
from core.wire.http import Request, Response, json_response

Serve = Callable[..., Awaitable[tuple[int, AsgiApp]]]


async def _echo(request: Request) -> Response:
    if request.path == "/metrics":
        return Response(200, [b"# app metrics\n"], {"content-type": "text/plain"})
    if request.path == "/slow":
        await asyncio.sleep(1.0)
    return json_response(200, {"bytes": len(request.body)})


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    running: list[RunningServer] = []

    async def start(
        edge: EdgeLimits | None = None,
        memory_budget: int = 1 << 30,
        handler=_echo,
        max_body_bytes: int = 1 << 20,
    ) -> tuple[int, AsgiApp]:
        sock = bind_socket("127.0.0.1", 0)
        app = AsgiApp(
            handler, max_body_bytes=max_body_bytes, memory_budget=memory_budget, edge=edge
        )
        running.append(await start_server(app, sock, timeout_s=5))
        return sock.getsockname()[1], app

    yield start
    for server in running:
        await server.stop()


async def _exchange(port: int, raw: bytes, *, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send ``raw``, read until the server closes (or ``wait_s``); the answer and its delay."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(raw)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(1 << 16), wait_s)
    finally:
        writer.close()
    return answer, time.perf_counter() - started


def _post(body: bytes, *, length: int | None = None, path: str = "/x") -> bytes:
    n = len(body) if length is None else length
    return f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {n}\r\n\r\n".encode() + body


async def test_a_body_shorter_than_its_content_length_gets_408_within_the_body_timeout(
    serve: Serve,
) -> None:
    port, _ = await serve(EdgeLimits(body_timeout_s=0.3))
    answer, took = await _exchange(port, _post(b'{"a":', length=100))
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert b"body not received within 0.3 s" in answer
    assert 0.25 < took < 1.0


async def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_header_timeout(
    serve: Serve,
) -> None:
    port, _ = await serve(EdgeLimits(header_timeout_s=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def drip() -> None:  # bounded: 86 bytes, one every 20 ms
        for byte in b"GET /v2 HTTP/1.1\r\nhost: slowloris\r\nx-pad: " + b"a" * 50:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)

    started = time.perf_counter()
    dripping = asyncio.create_task(drip())
    answer = await asyncio.wait_for(reader.read(4096), 5)
    took = time.perf_counter() - started
    dripping.cancel()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"headers not received within 0.5 s" in answer
    assert 0.45 < took < 1.0


async def test_a_request_that_keeps_its_pace_is_served(serve: Serve) -> None:
    """A body sent in pieces, each gap under the body timeout, is not a slow client."""
    port, _ = await serve(EdgeLimits(body_timeout_s=0.4))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post(b"", length=30))
    for _ in range(3):  # 0.6 s in all, longer than the timeout, but no gap is
        await asyncio.sleep(0.2)
        writer.write(b"x" * 10)
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b'{"bytes":30}')


async def test_connections_past_the_cap_get_503_with_retry_after(serve: Serve) -> None:
    port, _ = await serve(EdgeLimits(max_connections=3))
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    await asyncio.sleep(0.1)
    answer, _ = await _exchange(port, b"GET /v2 HTTP/1.1\r\nhost: t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b"retry-after: 1" in answer.lower()
    assert b"too many open connections" in answer
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.1)
    answer, _ = await _exchange(port, b"GET /v2 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    metrics, _ = await _exchange(port, b"GET /metrics HTTP/1.1\r\nconnection: close\r\n\r\n")
    assert b'gpufan_http_refused_total{reason="connections"} 1.0' in metrics


async def test_idle_keep_alive_connections_are_closed(serve: Serve) -> None:
    port, _ = await serve(EdgeLimits(keep_alive_s=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v2 HTTP/1.1\r\nhost: t\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(4096), 5)).startswith(b"HTTP/1.1 200 ")
    started = time.perf_counter()
    assert await asyncio.wait_for(reader.read(4096), 5) == b""  # closed by the server
    assert time.perf_counter() - started < 1.0
    writer.close()


async def test_a_request_that_cannot_fit_the_budget_waits_then_is_shed_unread(
    serve: Serve,
) -> None:
    body = b"x" * 1000
    port, app = await serve(memory_budget=1500 * JSON_FACTOR)
    slow = asyncio.create_task(_exchange(port, _post(body, path="/slow")))
    await asyncio.sleep(0.1)  # the slow request holds 1000 x JSON_FACTOR of 1500 x
    answer, took = await _exchange(port, _post(body))
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b"retry-after: 1" in answer.lower()
    assert b"memory budget is full" in answer
    assert 0.3 < took < 1.0  # it waited (0.5 s) for room before it was shed
    first, _ = await slow
    assert first.startswith(b"HTTP/1.1 200 ")
    assert app.budget.in_use == 0
    small, _ = await _exchange(port, _post(b"y" * 100, path="/slow"))  # fits beside nothing
    assert small.startswith(b"HTTP/1.1 200 ")


async def test_a_request_waits_for_room_and_is_served_when_it_frees(serve: Serve) -> None:
    async def handler(request: Request) -> Response:
        await asyncio.sleep(0.3 if request.path == "/slow" else 0)
        return json_response(200, {"bytes": len(request.body)})

    port, _ = await serve(memory_budget=1500 * JSON_FACTOR, handler=handler)
    slow = asyncio.create_task(_exchange(port, _post(b"x" * 1000, path="/slow")))
    await asyncio.sleep(0.05)
    answer, took = await _exchange(port, _post(b"x" * 1000))
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert 0.15 < took < 0.5  # it waited for the slow one to answer
    assert (await slow)[0].startswith(b"HTTP/1.1 200 ")


async def test_a_body_larger_than_the_whole_budget_is_413_naming_the_budget(serve: Serve) -> None:
    port, _ = await serve(memory_budget=100 * JSON_FACTOR)
    answer, took = await _exchange(port, _post(b"[" + b"0," * 100 + b"0]"))
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"memory budget" in answer and b"binary" in answer
    assert took < 0.5


async def test_metrics_carry_the_budget_and_its_use(serve: Serve) -> None:
    port, _ = await serve(memory_budget=12345678)
    answer, _ = await _exchange(port, b"GET /metrics HTTP/1.1\r\nconnection: close\r\n\r\n")
    text = answer.split(b"\r\n\r\n", 1)[1]
    assert text.startswith(b"# app metrics\n")
    assert b"gpufan_memory_budget_bytes 1.2345678e+07" in text
    assert b"gpufan_memory_in_use_bytes 0.0" in text
    assert b"gpufan_http_open_connections 1.0" in text


def test_edge_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="body_timeout_s must be > 0"):
        EdgeLimits(body_timeout_s=0)
    with pytest.raises(ValueError, match="max_connections"):
        EdgeLimits(max_connections=0)


@pytest.mark.parametrize(
    ("datatype", "data", "factor"),
    [
        ("FP32", [0.0] * 200_000, JSON_FACTOR),  # the densest floats: lifted to numpy
        ("INT64", [1] * 200_000, JSON_FACTOR),  # 8 bytes out per 2 bytes in
        ("FP32", [[0.0] * 1000] * 200, PARSED_JSON_FACTOR),  # nested: parsed into objects
        ("BOOL", [True] * 200_000, PARSED_JSON_FACTOR),
    ],
)
def test_the_reservation_covers_what_decoding_holds(
    datatype: str, data: list[object], factor: int
) -> None:
    """The edge reserves JSON_FACTOR per body byte and the codec charges the rest: together they
    must cover what decoding really holds, or the memory bound is luck."""
    import tracemalloc

    import numpy as np

    from core.wire.tensors import decode_request

    n = int(np.asarray(data).size)
    doc = {"inputs": [{"name": "x", "shape": [n], "datatype": datatype, "data": data}]}
    body = orjson.dumps(doc)
    charged: list[int] = []
    tracemalloc.start()
    request = decode_request(body, None, charge=charged.append)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(request.inputs[0].data, np.asarray(data).ravel())
    reserved = JSON_FACTOR * len(body) + sum(charged)
    assert peak <= reserved, (peak / len(body), reserved / len(body))
    assert reserved <= factor * len(body) + 7_000_000  # lifted: one 256 KiB slice as objects


async def test_a_body_waiting_for_memory_is_not_a_slow_client(serve: Serve) -> None:
    """Its bytes sit unread because the server holds it back: the body timeout must not fire."""
    body = b"x" * 1000
    port, _ = await serve(EdgeLimits(body_timeout_s=0.2), memory_budget=1500 * JSON_FACTOR)
    slow = asyncio.create_task(_exchange(port, _post(body, path="/slow")))
    await asyncio.sleep(0.1)
    answer, took = await _exchange(port, _post(body[:100], length=1000))  # the rest still to come
    assert answer.startswith(b"HTTP/1.1 503 "), answer  # shed for memory after its 0.5 s wait
    assert b"memory budget is full" in answer and took > 0.4
    assert (await slow)[0].startswith(b"HTTP/1.1 200 ")


async def test_a_client_still_sending_reads_the_503_instead_of_a_reset(serve: Serve) -> None:
    """Shed before its body is read, a client that sends the whole body before it reads (as
    http.client does) must still get the 503: the server may not close on unread bytes."""
    import http.client

    body = b"0" * (8 << 20)  # far more than the socket buffers hold
    port, _ = await serve(
        memory_budget=len(body) * JSON_FACTOR + 1500 * JSON_FACTOR, max_body_bytes=len(body)
    )

    def send() -> tuple[int, str | None]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/x", body)
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("retry-after")
        finally:
            conn.close()

    hold = asyncio.create_task(_exchange(port, _post(b"x" * 2000, path="/slow")))
    await asyncio.sleep(0.1)  # 2000 x JSON_FACTOR held: the 8 MB body cannot fit beside it
    status, retry_after = await asyncio.to_thread(send)
    assert (status, retry_after) == (503, "1")
    assert (await hold)[0].startswith(b"HTTP/1.1 200 ")


# ------------------------------------------------------------------ one write per small answer


class _Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_response_head_leaves_with_its_first_body_bytes() -> None:
    from core.wire.edge import _HeadWithBody

    raw = _Recording()
    transport = _HeadWithBody(raw)
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # interim: the client waits for it
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
    assert raw.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]  # the final head is held
    transport.write(b"abc")
    transport.write(b"def")
    assert raw.writes[1:] == [b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nabc", b"def"]
    assert not transport.is_closing()  # everything else is the transport's own

    held = _HeadWithBody(raw := _Recording())
    held.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    held.close()  # a head never followed by a body still goes out before the close
    assert raw.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"] and raw.closed


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response's head and its Content-Length body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
    return head, await asyncio.wait_for(reader.readexactly(int(fields[b"content-length"])), 5)


async def test_expect_100_continue_still_gets_its_interim_answer(serve: Serve) -> None:
    port, _ = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"x": 1}'
    writer.write(
        b"POST /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n"
        % len(body)
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(body)
    head, answer = await _answer(reader)
    assert head.startswith(b"HTTP/1.1 200") and orjson.loads(answer) == {"bytes": len(body)}
    writer.close()


async def test_a_large_answer_in_many_buffers_arrives_whole(serve: Serve) -> None:
    parts = [bytes([i]) * 100_000 for i in range(5)]

    async def large(request: Request) -> Response:
        return Response(200, list(parts), {"content-type": "application/octet-stream"})

    port, _ = await serve(handler=large)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):  # and the connection serves the next request after it
        writer.write(_post(b"{}"))
        head, body = await _answer(reader)
        assert head.startswith(b"HTTP/1.1 200") and body == b"".join(parts)
    writer.close()
