"""The Open Inference Protocol over gRPC, served from the same data plane as the REST routes.

``GrpcEdge`` runs grpcio's asyncio server on the HTTP edge's event loop, beside uvicorn, with
``inference.GRPCInferenceService`` answered by ``OipServicer`` over the same ``DataPlane``: the
same bearer token (``authorization`` metadata; health RPCs open, as REST's health routes), the
same admission and memory budget, the same messages as REST's errors under the gRPC status their
HTTP status maps to (``core.wire.oipproto.status_code``; a 503 carries ``retry-after``), and the
same data-plane metrics, plus ``gpufan_grpc_requests`` by method and code on REST's ``/metrics``.

What grpcio does itself is left to it: the message-size limit (RESOURCE_EXHAUSTED, before a
byte is handed to us) and the cap on RPCs in flight (``maximum_concurrent_rpcs``). A message is
in memory once it reaches the servicer, so the budget here bounds what is being run, not what
is being received.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import CollectorRegistry, Counter
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

import core
from core.errors import GpufanError
from core.wire.asgi import AsgiApp
from core.wire.budget import BINARY_FACTOR, MemoryBudget
from core.wire.oip import DataPlane, bounded_message, check_bearer, expected_bearer
from core.wire.oipproto import (
    config_to_pb,
    metadata_to_pb,
    request_from_pb,
    response_to_pb,
    status_code,
)

__all__ = ["GrpcEdge", "OipServicer", "serve_grpc"]

log = logging.getLogger(__name__)

_OPEN = frozenset({"ServerLive", "ServerReady"})
_R = TypeVar("_R")


class OipServicer(pbg.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """GRPCInferenceService over a DataPlane: the RPCs tritonclient and perf_analyzer use."""

    def __init__(
        self,
        plane: DataPlane,
        *,
        token: str | None,
        budget: MemoryBudget,
        registry: CollectorRegistry,
    ) -> None:
        self._plane = plane
        self._expected = expected_bearer(token)
        self._budget = budget
        self._calls = Counter(
            "gpufan_grpc_requests",
            "gRPC requests answered, by method and status code",
            ["method", "code"],
            registry=registry,
        )

    async def _answer(self, method: str, context: Any, call: Callable[[], Awaitable[_R]]) -> _R:
        try:
            self._authorize(method, context)
            result = await call()
        except GpufanError as e:
            code, message = status_code(e), bounded_message(str(e))
            if e.status >= 500:
                log.warning("gRPC %s -> %s: %s", method, code.name, e)
            if "retry-after" in e.headers:
                context.set_trailing_metadata((("retry-after", e.headers["retry-after"]),))
        except Exception:
            code, message = grpc.StatusCode.INTERNAL, "internal server error; see the server log"
            log.exception("unhandled error in gRPC %s", method)
        else:
            self._calls.labels(method, "OK").inc()
            return result
        self._calls.labels(method, code.name).inc()
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    def _authorize(self, method: str, context: Any) -> None:
        if method not in _OPEN:
            given = dict(context.invocation_metadata() or ()).get("authorization", "")
            check_bearer(self._expected, str(given), "authorization")

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        async def live() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=await self._plane.live())

        return await self._answer("ServerLive", context, live)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        async def ready() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=await self._plane.ready())

        return await self._answer("ServerReady", context, ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        async def meta() -> pb.ServerMetadataResponse:
            doc = await self._plane.server_metadata()
            return pb.ServerMetadataResponse(
                name=doc.get("name", ""),
                version=str(doc.get("version", core.__version__)),
                extensions=doc.get("extensions", ()),
            )

        return await self._answer("ServerMetadata", context, meta)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        async def ready() -> pb.ModelReadyResponse:
            ok = await self._plane.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ok)

        return await self._answer("ModelReady", context, ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        async def meta() -> pb.ModelMetadataResponse:
            doc = await self._plane.model_metadata(request.name, request.version or None)
            return metadata_to_pb(doc)

        return await self._answer("ModelMetadata", context, meta)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> Any:
        async def config() -> pb.ModelConfigResponse:
            doc = await self._plane.model_config(request.name, request.version or None)
            return config_to_pb(doc)

        return await self._answer("ModelConfig", context, config)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        async def infer() -> pb.ModelInferResponse:
            model = request.model_name
            held = request.ByteSize() * BINARY_FACTOR
            await self._budget.acquire(held)
            try:
                async with self._plane.admit(model):
                    infer_request = request_from_pb(request)
                    result = await self._plane.infer(model, request.model_version or None,
                                                     infer_request)  # fmt: skip
                return response_to_pb(result)
            finally:
                await self._budget.release(held)

        return await self._answer("ModelInfer", context, infer)


class GrpcEdge:
    """A gRPC server for one data plane, started and stopped on the HTTP edge's loop.

    Args:
        host, port: where to listen (port 0 picks a free one: read ``port`` after ``start``).
        max_message_bytes: the largest request message (REST's body limit).
        max_rpcs: RPCs in flight at once; past it grpcio answers RESOURCE_EXHAUSTED.
    """

    def __init__(
        self, host: str, port: int, *, max_message_bytes: int, max_rpcs: int, reuse_port: bool
    ) -> None:
        self.host = host
        self.port = port
        self._reuse_port = reuse_port
        self._max_message = max_message_bytes
        self._max_rpcs = max_rpcs
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(
        self,
        plane: DataPlane,
        *,
        token: str | None,
        budget: MemoryBudget,
        registry: CollectorRegistry,
    ) -> None:
        """Bind and serve; OSError when the port cannot be bound."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max_message),
                ("grpc.max_send_message_length", -1),  # answers are as large as asked for
                # a taken port is an error, not a shared one, but among `serve --processes`
                ("grpc.so_reuseport", int(self._reuse_port)),
            ],
            maximum_concurrent_rpcs=self._max_rpcs,
        )
        pbg.add_GRPCInferenceServiceServicer_to_server(
            OipServicer(plane, token=token, budget=budget, registry=registry), server
        )
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as e:  # grpcio's way of saying the bind failed
            raise OSError(f"cannot listen for gRPC on {self.address}: {e}") from None
        started = time.perf_counter()
        await server.start()
        self._server = server
        log.info("gRPC on %s (started in %.0f ms)", self.address,
                 (time.perf_counter() - started) * 1e3)  # fmt: skip

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking RPCs; those in flight get ``grace_s`` to finish."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None


def serve_grpc(
    app: AsgiApp,
    plane: Callable[[], DataPlane],
    *,
    host: str,
    port: int,
    token: str | None,
    max_message_bytes: int,
    reuse_port: bool = False,
) -> GrpcEdge:
    """Serve ``plane()`` over gRPC for as long as ``app`` runs: started after the app's own
    start-up (the front door's plane exists only then), stopped before its shutdown, so RPCs
    in flight finish before the plane closes. Shares the app's memory budget and metrics."""
    edge = GrpcEdge(host, port, max_message_bytes=max_message_bytes,
                    max_rpcs=app.edge.max_connections, reuse_port=reuse_port)  # fmt: skip

    async def start() -> None:
        await edge.start(
            plane(), token=token, budget=app.budget, registry=app.edge_metrics.registry
        )

    app.startup.append(start)
    app.shutdown.insert(0, edge.stop)
    return edge
