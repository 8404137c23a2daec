"""The relay's lean HTTP/1.1 client against real loopback servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from core.errors import TargetTimeout, TargetUnavailable
from core.wire.h1 import Abandoned, H1Pool, Patience

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # False: close after it


class Server:
    """Reads requests (Content-Length bodies) and lets ``answer`` reply; counts connections."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.bodies: list[bytes] = []
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.heads.append(head)
                self.bodies.append(body)
                if not await self.answer(body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test ended while an answer was held back
        finally:
            writer.close()


async def ok(body: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-echo: yes\r\n\r\n%s" % (len(body), body)
    )
    return True


@pytest.fixture
async def served() -> AsyncIterator[Callable[[Answer], Awaitable[tuple[Server, int]]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> tuple[Server, int]:
        server = Server(answer)
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(listening)
        return server, listening.sockets[0].getsockname()[1]

    yield start
    for s in servers:
        s.close()


def head(body: bytes) -> bytes:
    return b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)


async def test_keeps_one_connection_alive_across_requests(served) -> None:
    server, port = await served(ok)
    pool = H1Pool()
    for i in range(5):
        body = b"request %d" % i
        reply = await pool.request("127.0.0.1", port, head(body), (body,), 5.0)
        assert (reply.status, reply.body, reply.headers["x-echo"]) == (200, body, "yes")
    assert server.connections == 1
    assert server.bodies == [b"request %d" % i for i in range(5)]
    pool.close()


async def test_a_large_body_in_several_buffers_arrives_whole(served) -> None:
    server, port = await served(ok)
    parts = [bytes([i]) * 300_000 for i in range(3)]
    length = b"content-length: %d\r\n\r\n" % sum(map(len, parts))
    reply = await H1Pool().request(
        "127.0.0.1", port, b"POST /x HTTP/1.1\r\nhost: x\r\n" + length, parts, 10.0
    )
    assert reply.body == server.bodies[0] == b"".join(parts)


async def test_a_chunked_answer_is_whole(served) -> None:
    async def chunked(body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        return True

    _, port = await served(chunked)
    reply = await H1Pool().request("127.0.0.1", port, head(b"x"), (b"x",), 5.0)
    assert reply.body == b"abcde"


async def test_connection_close_is_not_reused(served) -> None:
    async def closing(body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        return False

    server, port = await served(closing)
    pool = H1Pool()
    for _ in range(3):
        assert (await pool.request("127.0.0.1", port, head(b"x"), (b"x",), 5.0)).body == b"ok"
    assert server.connections == 3


async def test_a_server_that_dies_mid_answer_is_unavailable_and_the_next_call_reconnects(
    served,
) -> None:
    calls = 0

    async def dies_once(body: bytes, writer: asyncio.StreamWriter) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
            await writer.drain()
            return False
        return await ok(body, writer)

    server, port = await served(dies_once)
    pool = H1Pool()
    with pytest.raises(TargetUnavailable, match="connection lost"):
        await pool.request("127.0.0.1", port, head(b"x"), (b"x",), 5.0)
    assert (await pool.request("127.0.0.1", port, head(b"y"), (b"y",), 5.0)).body == b"y"
    assert server.connections == 2


async def test_bytes_on_an_idle_connection_retire_it(served) -> None:
    async def chatty(body: bytes, writer: asyncio.StreamWriter) -> bool:
        await ok(body, writer)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")  # unasked
        return True

    server, port = await served(chatty)
    pool = H1Pool()
    assert (await pool.request("127.0.0.1", port, head(b"a"), (b"a",), 5.0)).body == b"a"
    await asyncio.sleep(0.2)
    assert (await pool.request("127.0.0.1", port, head(b"b"), (b"b",), 5.0)).body == b"b"
    assert server.connections == 2  # the stale answer never reached the second call


async def test_garbage_is_unavailable(served) -> None:
    async def garbage(body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"this is not HTTP\r\n\r\n")
        return True

    _, port = await served(garbage)
    with pytest.raises(TargetUnavailable, match="malformed HTTP response"):
        await H1Pool().request("127.0.0.1", port, head(b"x"), (b"x",), 5.0)


async def test_silence_times_out_within_its_bound_and_the_connection_is_dropped(served) -> None:
    async def silent(body: bytes, writer: asyncio.StreamWriter) -> bool:
        if body == b"hang":
            await asyncio.sleep(5)
        return await ok(body, writer)

    server, port = await served(silent)
    pool = H1Pool()
    began = time.monotonic()
    with pytest.raises(TargetTimeout, match=r"no response within 0\.2 s"):
        await pool.request("127.0.0.1", port, head(b"hang"), (b"hang",), 0.2)
    assert time.monotonic() - began < 1.0
    assert (await pool.request("127.0.0.1", port, head(b"x"), (b"x",), 5.0)).body == b"x"
    assert server.connections == 2  # the timed-out connection's state was lost: not reused


async def test_patience_abandons_only_when_it_says_so(served) -> None:
    async def slow(body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3)
        return await ok(body, writer)

    _, port = await served(slow)
    pool = H1Pool()
    asked: list[float] = []

    def give_up() -> bool:
        asked.append(time.monotonic())
        return True

    began = time.monotonic()
    with pytest.raises(Abandoned):
        await pool.request("127.0.0.1", port, head(b"x"), (b"x",), 5.0, Patience(0.05, give_up))
    assert len(asked) == 1 and asked[0] - began < 0.25
    reply = await pool.request(
        "127.0.0.1", port, head(b"y"), (b"y",), 5.0, Patience(0.05, lambda: False)
    )
    assert reply.body == b"y"  # asked, declined: the answer is awaited


async def test_an_idle_connection_past_keepalive_is_not_reused(served) -> None:
    server, port = await served(ok)
    pool = H1Pool(keepalive_s=0.05)
    await pool.request("127.0.0.1", port, head(b"x"), (b"x",), 5.0)
    await asyncio.sleep(0.1)
    await pool.request("127.0.0.1", port, head(b"x"), (b"x",), 5.0)
    assert server.connections == 2


async def test_nobody_listening_is_unavailable_naming_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(TargetUnavailable, match=f"127.0.0.1:{port}"):
            await H1Pool().request("127.0.0.1", port, head(b"x"), (b"x",), 5.0)


async def test_the_http_backend_relays_each_targets_own_token_path_and_headers(served) -> None:
    from core.backends.http import HttpBackend
    from core.config import Target
    from core.wire.session import make_session
    from core.wire.tensors import WireBody

    server, port = await served(ok)
    endpoint = f"http://127.0.0.1:{port}/prefix"
    a = Target(name="a", backend="http", endpoint=endpoint)
    b = Target(name="b", backend="http", endpoint=endpoint)
    tokens = {"a": "token-a", "b": None}
    async with make_session() as session:
        backend = HttpBackend(session, token_for=lambda t: tokens[t.name], h1=H1Pool())
        assert backend.relays(a) and not HttpBackend(session).relays(a)  # no pool: no relay
        for target in (a, b):
            reply = await backend.relay(target, "m", "2", WireBody(b"{}xx", "2"), 5.0, None)
            assert reply.body == b"{}xx"
    first, second = (h.decode().lower() for h in server.heads)
    assert first.startswith("post /prefix/v2/models/m/versions/2/infer http/1.1\r\n")
    assert "authorization: bearer token-a" in first and "authorization" not in second
    assert "inference-header-content-length: 2" in first
    assert "content-type: application/octet-stream" in first
    tls = Target(name="t", backend="http", endpoint="https://127.0.0.1:1")
    async with make_session() as session:
        assert not HttpBackend(session, h1=H1Pool()).relays(tls)  # TLS goes through aiohttp
