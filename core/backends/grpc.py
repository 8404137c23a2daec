"""The ``grpc`` backend: any server that speaks the Open Inference Protocol over gRPC.

Triton, KServe (``--grpc_port``) or a gpufan worker started with ``--grpc-port``: a target whose
``endpoint`` is ``grpc://host:port`` (``grpcs://`` for TLS with the system's roots) gets each
shard as one ``ModelInfer`` with raw tensor contents, concurrently under the target's slots, over
one channel per endpoint (HTTP/2 multiplexes the shards on it). Errors map as the ``http``
backend's do (``core.wire.oipproto.error_for_code``): a target's INVALID_ARGUMENT is the caller's
400, its NOT_FOUND/UNAUTHENTICATED the target's fault, anything else a retryable unavailability.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from core.backends.base import (
    BackendContext,
    ShardFailed,
    ShardJob,
    ShardOk,
    ShardOutcome,
    each_completed,
    target_fault,
)
from core.config import Target
from core.errors import ConfigError, GpufanError
from core.planning.shards import Shard
from core.wire.oipproto import (
    config_from_pb,
    error_for_code,
    metadata_from_pb,
    request_to_pb,
    response_from_pb,
)
from core.wire.tensors import InferRequest

__all__ = ["GrpcBackend"]

_T = TypeVar("_T")
# A shard is as large as the front door accepted; grpcio's default cap (4 MiB) would refuse it.
_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class GrpcBackend:
    """Shards as OIP ``ModelInfer`` calls, one lazily opened channel per target endpoint.

    Args:
        token_for: the bearer token for a target (sent as ``authorization`` metadata), or None.
    """

    name = "grpc"

    def __init__(self, *, token_for: Callable[[Target], str | None] = lambda _: None) -> None:
        self._token_for = token_for
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pbg.GRPCInferenceServiceStub] = {}

    @classmethod
    def create(cls, ctx: BackendContext) -> GrpcBackend:
        return cls(token_for=lambda t: ctx.tokens.get(t.name))

    def _stub(self, target: Target) -> pbg.GRPCInferenceServiceStub:
        endpoint = target.endpoint  # its scheme is grpc:// or grpcs:// (core.config.Target)
        if endpoint is None:
            raise ConfigError(f"target {target.name!r}: backend 'grpc' needs a grpc:// endpoint")
        stub = self._stubs.get(endpoint)
        if stub is None:
            scheme, _, address = endpoint.partition("://")
            if scheme == "grpcs":
                channel = grpc.aio.secure_channel(
                    address, grpc.ssl_channel_credentials(), options=_OPTIONS
                )
            else:
                channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
            self._channels[endpoint] = channel
            stub = self._stubs[endpoint] = pbg.GRPCInferenceServiceStub(channel)
        return stub

    def _metadata(self, target: Target) -> tuple[tuple[str, str], ...]:
        token = self._token_for(target)
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _call(self, target: Target, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run one RPC with gRPC's errors in gpufan's tree (a target's 401/403/404: its fault)."""
        try:
            return await call()
        except grpc.aio.AioRpcError as e:
            error = error_for_code(e.code(), e.details() or "", target.name)
            raise target_fault(target, error) from e

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        """One concurrent ModelInfer per shard; outcomes in completion order."""
        tasks = [asyncio.create_task(self._infer(target, job, s)) for s in shards]
        async for outcome in each_completed(tasks):
            yield outcome

    async def _infer(self, target: Target, job: ShardJob, shard: Shard) -> ShardOutcome:
        request = request_to_pb(job.model, job.version, InferRequest(shard.inputs, job.outputs,
                                                                     shard.id))  # fmt: skip
        async with job.slots:
            started = time.perf_counter()
            try:
                stub = self._stub(target)
                answer = await self._call(
                    target,
                    lambda: stub.ModelInfer(
                        request, timeout=job.timeout_s, metadata=self._metadata(target)
                    ),
                )
                result = response_from_pb(answer, target.name)
            except GpufanError as e:
                return ShardFailed(shard, target.name, e, time.perf_counter() - started)
        return ShardOk.answered(shard, target.name, result, time.perf_counter() - started)

    async def _ask(self, target: Target, rpc: str, request: Any) -> Any:
        """One unary RPC with the target's timeout and token, errors mapped."""
        call = getattr(self._stub(target), rpc)
        return await self._call(
            target,
            lambda: call(request, timeout=target.timeout_s, metadata=self._metadata(target)),
        )

    async def model_metadata(
        self, target: Target, model: str, version: str | None
    ) -> dict[str, Any]:
        """``ModelMetadata``, in REST's shape."""
        request = pb.ModelMetadataRequest(name=model, version=version or "")
        return metadata_from_pb(await self._ask(target, "ModelMetadata", request))

    async def model_config(self, target: Target, model: str, version: str | None) -> dict[str, Any]:
        """``ModelConfig`` (Triton's), in REST's JSON shape."""
        request = pb.ModelConfigRequest(name=model, version=version or "")
        return config_from_pb(await self._ask(target, "ModelConfig", request))

    async def ready(self, target: Target) -> bool:
        """``ServerReady``; an unreachable target is simply not ready."""
        try:
            answer = await self._stub(target).ServerReady(
                pb.ServerReadyRequest(), timeout=target.timeout_s, metadata=self._metadata(target)
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.ready)

    async def aclose(self) -> None:
        """Close every channel this backend opened."""
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for channel in channels:
            await channel.close()
