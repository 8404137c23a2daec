"""HttpBackend and a Dispatcher over real OIP servers on 127.0.0.1 (uvicorn, in the test loop).

Each server is gpufan's own ``OipHandler`` over a small data plane whose behaviour the test picks:
``ok`` doubles its FP32 input and reports telemetry, ``busy`` answers 503, ``slow`` hangs past the
shard timeout, ``bad`` answers 400, ``garbage`` answers 200 with a body that is not a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from core.backends.base import ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.backends.http import HttpBackend
from core.config import Policy, Target
from core.dispatch.dispatcher import Dispatcher
from core.errors import (
    BadRequest,
    ClientError,
    MalformedResponse,
    TargetTimeout,
    TargetUnavailable,
)
from core.planning.loads import BreakerState
from core.planning.shards import Shard, split
from core.wire.asgi import AsgiApp, RunningServer, bind_socket, start_server
from core.wire.http import Request, Response, json_response
from core.wire.oip import OipHandler
from core.wire.session import make_session
from core.wire.tensors import InferRequest, InferResponse, RequestedOutput, Tensor

MODEL = "double"


class Plane:
    """A worker data plane with one behaviour; counts infer calls and the auth headers seen."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0
        self.release = asyncio.Event()

    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return self.mode != "busy"

    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "fake-worker"}

    async def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        return {"name": model, "versions": [version or "1"], "platform": "onnxruntime_onnx"}

    async def model_ready(self, model: str, version: str | None) -> bool:
        return True

    async def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        return {"name": model, "max_batch_size": 64}

    def admit(self, model: str) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        self.calls += 1
        if self.mode == "busy":
            raise TargetUnavailable("worker overloaded")
        if self.mode == "bad":
            raise BadRequest("input 'x' must have 3 columns")
        if self.mode == "slow":
            await asyncio.wait_for(self.release.wait(), timeout=5.0)
        x = request.inputs[0].data
        return InferResponse(
            model,
            (Tensor("y", x * 2),),
            parameters={"queue_depth": 1, "utilization": 0.75, "items_per_s": 1234.5},
        )

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"


class Worker:
    def __init__(self, endpoint: str, plane: Plane, auth: list[str | None]) -> None:
        self.endpoint = endpoint
        self.plane = plane
        self.auth = auth


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def worker() -> AsyncIterator[WorkerFactory]:
    """``await worker(mode, token=None)`` starts one server; all are stopped at teardown."""
    started: list[tuple[RunningServer, Plane]] = []

    async def start(mode: str, token: str | None = None) -> Worker:
        plane = Plane(mode)
        oip = OipHandler(plane, token=token)
        auth: list[str | None] = []

        async def handler(request: Request) -> Response:
            auth.append(request.headers.get("authorization"))
            if mode == "garbage" and request.path.endswith("/infer"):
                return Response(200, [b"\x00 this is not json"], {"content-type": "text/plain"})
            if mode == "408" and request.path.endswith("/infer"):
                return json_response(408, {"error": "request body not received within 1 s"})
            return await oip(request)

        sock = bind_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        server = await start_server(AsgiApp(handler, max_body_bytes=1 << 24), sock, timeout_s=5)
        started.append((server, plane))
        return Worker(f"http://127.0.0.1:{port}", plane, auth)

    yield start
    for server, plane in started:
        plane.release.set()
        await asyncio.wait_for(server.stop(), timeout=5)


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    http = make_session(max_connections=32)
    yield http
    await http.close()


def target(name: str, w: Worker | str, usd: float = 0.0, **kw: Any) -> Target:
    endpoint = w if isinstance(w, str) else w.endpoint
    return Target(name=name, backend="http", endpoint=endpoint, usd_per_hour=usd, **kw)


def job(timeout_s: float = 5.0, slots: int = 4, outputs: Any = None) -> ShardJob:
    return ShardJob(MODEL, None, outputs, timeout_s, asyncio.Semaphore(slots))


def shards(n: int, sizes: list[int]) -> list[Shard]:
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return split("req", (Tensor("x", x),), sizes)


async def outcomes(backend: HttpBackend, t: Target, j: ShardJob, s: list[Shard]) -> list[Any]:
    return [o async for o in backend.run(t, j, s)]


async def one(backend: HttpBackend, t: Target, j: ShardJob | None = None) -> ShardOutcome:
    (outcome,) = await outcomes(backend, t, j or job(), shards(2, [2]))
    return outcome


async def test_ok_worker_computes_each_shard_with_telemetry(
    worker: WorkerFactory, client: Any
) -> None:
    w = await worker("ok")
    backend = HttpBackend(client)
    got = await outcomes(
        backend, target("ok", w), job(outputs=(RequestedOutput("y"),)), shards(7, [3, 2, 2])
    )
    assert len(got) == 3 and all(isinstance(o, ShardOk) for o in got)
    for o in got:
        np.testing.assert_array_equal(o.outputs[0].data, o.shard.inputs[0].data * 2)
        assert o.telemetry.queue_depth == 1 and o.telemetry.utilization == 0.75
        assert o.telemetry.items_per_s == 1234.5 and o.elapsed_s > 0
    assert w.auth == [None, None, None]  # no token configured, no header sent


async def test_bearer_token_is_sent(worker: WorkerFactory, client: Any) -> None:
    w = await worker("ok", token="s3cret")
    t = target("secure", w)
    ok = await one(HttpBackend(client, token_for=lambda _t: "s3cret"), t)
    assert isinstance(ok, ShardOk) and w.auth[-1] == "Bearer s3cret"
    # a target refusing our token is the target's misconfiguration, not the caller's mistake:
    # retryable elsewhere (and counted by its breaker), never a 401 to a caller whose token was fine
    refused = await one(HttpBackend(client), t)
    assert isinstance(refused, ShardFailed) and isinstance(refused.error, TargetUnavailable)
    assert "answered 401" in str(refused.error) and "bearer token" in str(refused.error)


async def test_503_is_target_unavailable(worker: WorkerFactory, client: Any) -> None:
    w = await worker("busy")
    failed = await one(HttpBackend(client), target("busy", w))
    assert isinstance(failed, ShardFailed) and isinstance(failed.error, TargetUnavailable)
    assert "503" in str(failed.error) and "worker overloaded" in str(failed.error)


async def test_a_408_is_our_slowness_retried_elsewhere_not_the_callers_mistake(
    worker: WorkerFactory, client: Any
) -> None:
    """A worker's 408 means the front door's own request reached it too slowly (its event loop
    was busy): a timeout of this attempt, never passed back to the caller as a 4xx."""
    w = await worker("408")
    failed = await one(HttpBackend(client), target("408", w))
    assert isinstance(failed, ShardFailed) and isinstance(failed.error, TargetTimeout)
    assert "answered 408" in str(failed.error) and "within 1 s" in str(failed.error)


async def test_hang_past_the_timeout_is_target_timeout(worker: WorkerFactory, client: Any) -> None:
    w = await worker("slow")
    failed = await one(HttpBackend(client), target("slow", w), job(timeout_s=0.2))
    assert isinstance(failed, ShardFailed) and isinstance(failed.error, TargetTimeout)
    assert failed.elapsed_s < 1.0


async def test_400_is_a_client_error_with_the_workers_text(
    worker: WorkerFactory, client: Any
) -> None:
    w = await worker("bad")
    failed = await one(HttpBackend(client), target("bad", w))
    assert isinstance(failed, ShardFailed) and type(failed.error) is ClientError
    assert failed.error.status == 400 and str(failed.error) == "input 'x' must have 3 columns"


async def test_garbage_200_is_malformed(worker: WorkerFactory, client: Any) -> None:
    w = await worker("garbage")
    failed = await one(HttpBackend(client), target("garbage", w))
    assert isinstance(failed, ShardFailed) and isinstance(failed.error, MalformedResponse)


async def test_connection_refused_is_target_unavailable(client: Any) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    failed = await one(HttpBackend(client), target("gone", f"http://127.0.0.1:{port}"))
    assert isinstance(failed, ShardFailed) and isinstance(failed.error, TargetUnavailable)
    assert "Cannot connect" in str(failed.error)


async def test_metadata_config_and_ready(worker: WorkerFactory, client: Any) -> None:
    ok, busy = await worker("ok"), await worker("busy")
    backend = HttpBackend(client)
    meta = await backend.model_metadata(target("ok", ok), MODEL, "3")
    assert meta["name"] == MODEL and meta["versions"] == ["3"]
    assert (await backend.model_config(target("ok", ok), MODEL, None))["max_batch_size"] == 64
    assert await backend.ready(target("ok", ok))
    assert not await backend.ready(target("busy", busy))
    assert not await backend.ready(target("gone", "http://127.0.0.1:9"))


async def test_closing_the_iterator_cancels_in_flight_requests(
    worker: WorkerFactory, client: Any
) -> None:
    w = await worker("slow")
    stream = HttpBackend(client).run(target("slow", w), job(), shards(4, [2, 2]))
    pending = asyncio.ensure_future(stream.__anext__())
    for _ in range(100):  # both requests reach the server (bounded wait)
        if w.plane.calls == 2:
            break
        await asyncio.sleep(0.01)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await stream.aclose()
    assert w.plane.calls == 2
    requests = [t for t in asyncio.all_tasks() if "HttpBackend" in t.get_coro().__qualname__]
    assert requests == []  # the server's own tasks live in this loop too; none of ours is left


async def test_dispatcher_redispatches_to_healthy_workers(
    worker: WorkerFactory, client: Any
) -> None:
    busy, ok1, ok2 = await worker("busy"), await worker("ok"), await worker("ok")
    backend = HttpBackend(client)
    dispatcher = Dispatcher(
        [
            target("busy", busy, 0.0, max_concurrency=2),
            target("ok1", ok1, 1.0, max_concurrency=2),
            target("ok2", ok2, 1.0, max_concurrency=2),
        ],
        {"http": backend},
        Policy(max_shard_items=8, backoff_ms=1, breaker_failures=2),
    )
    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    result = await dispatcher.dispatch(MODEL, None, InferRequest((Tensor("x", x),)))
    np.testing.assert_array_equal(result.outputs[0].data, x * 2)
    assert result.redispatched == 2 and busy.plane.calls == 2
    retried = [s for s in result.shards if len(s.attempts) == 2]
    assert len(retried) == 2
    for s in retried:
        assert s.attempts[0].target == "busy" and not s.attempts[0].ok
        assert s.target in {"ok1", "ok2"} and s.attempts[1].ok
    assert dispatcher.health.view("busy").breaker is BreakerState.OPEN
    assert dispatcher.health.view("ok1").utilization == 0.75

    again = await dispatcher.dispatch(MODEL, None, InferRequest((Tensor("x", x[:5]),)))
    np.testing.assert_array_equal(again.outputs[0].data, x[:5] * 2)
    assert busy.plane.calls == 2 and again.redispatched == 0  # the open breaker kept it away


async def test_dispatcher_passes_a_workers_400_through(worker: WorkerFactory, client: Any) -> None:
    bad, ok = await worker("bad"), await worker("ok")
    dispatcher = Dispatcher(
        [target("bad", bad, 0.0, max_concurrency=1), target("ok", ok, 1.0, max_concurrency=1)],
        {"http": HttpBackend(client)},
        Policy(),
    )
    x = np.zeros((1, 3), np.float32)
    with pytest.raises(ClientError, match="3 columns") as e:
        await dispatcher.dispatch(MODEL, None, InferRequest((Tensor("x", x),)))
    assert e.value.status == 400 and bad.plane.calls == 1 and ok.plane.calls == 0
