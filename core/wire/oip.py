"""The Open Inference Protocol REST routes as one framework-neutral handler.

Endpoint → data plane → model runner, as KServe layers it: ``OipHandler`` parses the route,
checks the bearer token, decodes tensors, calls a ``DataPlane`` and renders its answer. The GPU
worker and the front door are two data planes behind the same routes, which is why a client (or
Triton's ``tritonclient``) cannot tell them apart.

Routes::

    GET  /v2/health/live | /v2/health/ready | /v2 | /metrics
    GET  /v2/models/{m}[/versions/{v}]             model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready
    GET  /v2/models/{m}[/versions/{v}]/config      Triton's model config (for perf_analyzer)
    POST /v2/models/{m}[/versions/{v}]/infer
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from core.errors import GpufanError, MethodNotAllowed, NotFound, Unauthorized
from core.wire.http import Request, Response, json_response
from core.wire.tensors import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    decode_request,
    encode_response,
)

__all__ = ["DataPlane", "OipHandler", "bounded_message", "check_bearer", "expected_bearer"]

log = logging.getLogger(__name__)

_MODEL_ROUTE = re.compile(
    r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<verb>/ready|/infer|/config)?/?$"
)
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
_THREAD_DECODE_BYTES = 4 << 20
_MESSAGE_CHARS = 1000  # a message echoing a client's names (a 1 MB tensor name) stays readable


class DataPlane(Protocol):
    """What sits behind the OIP routes: a worker's model runner or the front door's dispatcher."""

    async def live(self) -> bool: ...

    async def ready(self) -> bool: ...

    async def server_metadata(self) -> dict[str, Any]: ...

    async def model_metadata(self, model: str, version: str | None) -> dict[str, Any]: ...

    async def model_ready(self, model: str, version: str | None) -> bool: ...

    async def model_config(self, model: str, version: str | None) -> dict[str, Any]: ...

    def admit(self, model: str) -> AbstractAsyncContextManager[None]:
        """Hold room for one infer request for ``model`` while it is decoded and run, or raise
        ``Overloaded`` (503 + Retry-After): a request shed here costs no decoding."""
        ...

    async def infer(
        self, model: str, version: str | None, request: InferRequest
    ) -> InferResponse: ...

    def metrics(self) -> tuple[bytes, str]:
        """Prometheus exposition text and its content type."""
        ...


class OipHandler:
    """``Request -> Response`` over a DataPlane; every GpufanError becomes its status + message."""

    def __init__(self, plane: DataPlane, *, token: str | None = None) -> None:
        self._plane = plane
        self._expected = expected_bearer(token)

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except GpufanError as e:
            if e.status >= 500:
                log.warning("%s %s -> %s: %s", request.method, request.path, e.status, e)
            return json_response(e.status, {"error": bounded_message(str(e))}, e.headers)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return json_response(500, {"error": "internal server error; see the server log"})

    def _authorize(self, request: Request) -> None:
        if request.path not in _OPEN_PATHS:
            check_bearer(self._expected, request.headers.get("authorization", ""), "Authorization")

    async def _route(self, request: Request) -> Response:
        self._authorize(request)
        path, method = request.path, request.method
        plane = self._plane
        if path.startswith("/v2/models/"):
            m = _MODEL_ROUTE.match(path)
            if m is None:
                raise NotFound(f"no route {method} {path}")
            model, version, verb = m["model"], m["version"], m["verb"]
            if verb == "/infer":
                _expect(method, "POST", path)
                return await self._infer(model, version, request)
            _expect(method, "GET", path)
            if verb == "/ready":
                ok = await plane.model_ready(model, version)
                return json_response(200 if ok else 503, {"name": model, "ready": ok})
            if verb == "/config":
                return json_response(200, await plane.model_config(model, version))
            return json_response(200, await plane.model_metadata(model, version))
        _expect(method, "GET", path)
        if path == "/v2/health/live":
            ok = await plane.live()
            return json_response(200 if ok else 503, {"live": ok})
        if path == "/v2/health/ready":
            ok = await plane.ready()
            return json_response(200 if ok else 503, {"ready": ok})
        if path in ("/v2", "/v2/"):
            return json_response(200, await plane.server_metadata())
        if path == "/metrics":
            body, ctype = plane.metrics()
            return Response(200, [body], {"content-type": ctype})
        raise NotFound(f"no route {method} {path}")

    async def _infer(self, model: str, version: str | None, request: Request) -> Response:
        async with self._plane.admit(model):
            header = request.headers.get(HEADER_LENGTH)
            if len(request.body) > _THREAD_DECODE_BYTES:
                # A large body takes a second or more to decode: on a thread, so the loop keeps
                # reading other clients' bytes and answering their requests meanwhile.
                charge = _on_loop(request.charge, asyncio.get_running_loop())
                infer = await asyncio.to_thread(decode_request, request.body, header, charge=charge)
            else:
                infer = decode_request(request.body, header, charge=request.charge)
            result = await self._plane.infer(model, version, infer)
        body, headers = encode_response(result, infer.outputs, infer.binary_output_default)
        return Response(200, body, headers)


def expected_bearer(token: str | None) -> bytes | None:
    """What ``check_bearer`` compares against: ``Bearer <token>``, or None for no auth."""
    return f"Bearer {token}".encode() if token else None


def check_bearer(expected: bytes | None, given: str, header: str) -> None:
    """Raise Unauthorized unless ``given`` (the ``header`` a client sent: REST's header, gRPC's
    metadata) is the expected bearer value; compared in constant time. No-op without auth."""
    if expected is not None and not hmac.compare_digest(given.encode(), expected):
        raise Unauthorized(f"missing or invalid bearer token ({header}: Bearer <token>)")


def _on_loop(
    fn: Callable[[int], None] | None, loop: asyncio.AbstractEventLoop
) -> Callable[[int], None] | None:
    """``fn`` called from a thread but run on ``loop`` (the memory budget is the loop's); what it
    raises is raised in the calling thread."""
    if fn is None:
        return None

    async def run(nbytes: int) -> None:
        fn(nbytes)

    def call(nbytes: int) -> None:
        asyncio.run_coroutine_threadsafe(run(nbytes), loop).result()

    return call


def _expect(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}", allow=allowed)


def bounded_message(message: str) -> str:
    """An error message cut to a readable length (it may echo a client's 1 MB tensor name)."""
    if len(message) <= _MESSAGE_CHARS:
        return message
    return f"{message[:_MESSAGE_CHARS]}... ({len(message):,} characters in all)"
