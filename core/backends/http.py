"""The ``http`` backend: any server that speaks the Open Inference Protocol over REST.

Triton, KServe, an on-prem box or gpufan's own worker: each shard is one
``POST {endpoint}/v2/models/{model}[/versions/{v}]/infer`` with the binary tensor extension, sent
concurrently under the target's slots through ``core.wire.client.OipClient``, which maps foreign
errors into ``core.errors``. A target's 401/403/404 is the target's fault here, not the caller's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

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
from core.wire.client import OipClient, model_path
from core.wire.h1 import H1Pool, H1Reply, Patience
from core.wire.tensors import HEADER_LENGTH, InferRequest, RequestedOutput, WireBody

__all__ = ["HttpBackend"]

T = TypeVar("T")


def _no_token(target: Target) -> None:
    return None


def _configured_endpoint(target: Target) -> str:
    if target.endpoint is None:
        raise ConfigError(f"target {target.name!r} has no 'endpoint'")
    return target.endpoint


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a relayed request goes: host, port, and the fixed part of its head."""

    host: str
    port: int
    prefix: str  # the endpoint's path, before /v2
    headers: bytes  # Host and Authorization lines


class HttpBackend:
    """Shards as OIP infer requests over one injected, pooled ``aiohttp.ClientSession``, and
    one-shard requests relayed as they arrived over ``h1`` (``core.dispatch.relay``).

    Args:
        session: the shared session (``core.wire.session.make_session``); its owner closes it.
        token_for: the bearer token for a target, or None to send no ``Authorization``.
        endpoint_for: the base URL of a target; the ``local`` backend supplies its workers' ports.
        h1: the relay's pooled client; None: this backend relays nothing.
    """

    name = "http"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        token_for: Callable[[Target], str | None] = _no_token,
        endpoint_for: Callable[[Target], str] = _configured_endpoint,
        h1: H1Pool | None = None,
    ) -> None:
        self._session = session
        self._token_for = token_for
        self._endpoint_for = endpoint_for
        self._h1 = h1
        # (target, endpoint) -> route; None: not relayable. Keyed by both: targets sharing an
        # endpoint may carry different tokens, and a local worker's endpoint changes on restart.
        self._routes: dict[tuple[str, str], _Route | None] = {}
        self._paths: dict[tuple[str, str | None], bytes] = {}

    @classmethod
    def create(cls, ctx: BackendContext) -> HttpBackend:
        """Built by the front door: the pooled session, each target's configured token, and
        the relay's client."""
        return cls(ctx.session, token_for=lambda t: ctx.tokens.get(t.name), h1=ctx.h1)

    def _oip(self, target: Target) -> OipClient:
        return OipClient(
            self._endpoint_for(target),
            self._session,
            token=self._token_for(target),
            name=target.name,
        )

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        """One concurrent request per shard; outcomes in completion order.

        Closing or cancelling the iterator cancels the requests still in flight.
        """
        tasks = [asyncio.create_task(self._infer(target, job, s)) for s in shards]
        async for outcome in each_completed(tasks):
            yield outcome

    async def _infer(self, target: Target, job: ShardJob, shard: Shard) -> ShardOutcome:
        # Outputs always come back binary: the front door re-encodes them for its caller anyway.
        outputs = tuple(RequestedOutput(o.name, True) for o in job.outputs or ()) or None
        request = InferRequest(shard.inputs, outputs, shard.id, {"binary_data_output": True})
        async with job.slots:
            started = time.perf_counter()
            try:
                result = await self._call(
                    target,
                    self._oip(target).infer(
                        job.model, request, version=job.version, timeout=job.timeout_s
                    ),
                )
            except GpufanError as e:
                return ShardFailed(shard, target.name, e, time.perf_counter() - started)
        return ShardOk.answered(shard, target.name, result, time.perf_counter() - started)

    async def _call(self, target: Target, call: Awaitable[T]) -> T:
        try:
            return await call
        except GpufanError as e:
            fault = target_fault(target, e)
            if fault is e:
                raise
            raise fault from e

    # ------------------------------------------------------------------------------ the relay

    def _route(self, target: Target) -> _Route | None:
        key = (target.name, self._endpoint_for(target))
        if key not in self._routes:
            endpoint = key[1]
            url = urlsplit(endpoint)
            route = None
            if url.scheme == "http" and url.hostname and self._h1 is not None:
                token = self._token_for(target)
                lines = f"host: {url.netloc}\r\n"
                if token:
                    lines += f"authorization: Bearer {token}\r\n"
                port = url.port or 80
                route = _Route(url.hostname, port, url.path.rstrip("/"), lines.encode("latin-1"))
            self._routes[key] = route
        return self._routes[key]

    def relays(self, target: Target) -> bool:
        """Plain-HTTP endpoints only: TLS targets go through aiohttp."""
        return self._route(target) is not None

    async def relay(
        self,
        target: Target,
        model: str,
        version: str | None,
        wire: WireBody,
        timeout_s: float,
        patience: Patience | None,
    ) -> H1Reply:
        """POST the request's bytes as they arrived to the target's infer route."""
        route = self._route(target)
        assert route is not None and self._h1 is not None, "relay() on a target relays() refused"
        path = self._paths.get((model, version))
        if path is None:
            path = model_path(model, version).encode("latin-1") + b"/infer"
            self._paths[(model, version)] = path
        head = b"POST %s%s HTTP/1.1\r\n%scontent-length: %d\r\n" % (
            route.prefix.encode("latin-1"),
            path,
            route.headers,
            wire.size,
        )
        if wire.header_length is None:
            head += b"content-type: application/json\r\n"
        else:
            head += b"content-type: application/octet-stream\r\n%s: %s\r\n" % (
                HEADER_LENGTH.encode(), wire.header_length.encode()
            )  # fmt: skip
        return await self._h1.request(
            route.host, route.port, head + b"\r\n", wire.buffers, timeout_s, patience
        )

    async def model_metadata(
        self, target: Target, model: str, version: str | None
    ) -> dict[str, Any]:
        """``GET /v2/models/{m}[/versions/{v}]``."""
        return await self._call(
            target, self._oip(target).model_metadata(model, version, timeout=target.timeout_s)
        )

    async def model_config(self, target: Target, model: str, version: str | None) -> dict[str, Any]:
        """``GET /v2/models/{m}[/versions/{v}]/config`` (Triton's model configuration)."""
        return await self._call(
            target, self._oip(target).model_config(model, version, timeout=target.timeout_s)
        )

    async def ready(self, target: Target) -> bool:
        """``GET /v2/health/ready``; an unreachable target is simply not ready."""
        return await self._oip(target).ready(timeout=target.timeout_s)

    async def aclose(self) -> None:
        """Nothing to release: the injected session belongs to whoever made it."""
