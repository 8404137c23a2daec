"""A small async Open Inference Protocol client over one injected ``aiohttp.ClientSession``.

The one place gpufan talks OIP as a caller: the ``http``-style backends, ``gpufan infer``, the demo
and the benchmarks all go through it. Foreign errors are mapped into ``core.errors`` here, by
``map_transport_errors`` and ``error_for_status``: a worker's 400 reaches the caller as it is,
and a dead socket is a ``TargetUnavailable`` wherever it happens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import orjson

from core.errors import (
    BadRequest,
    ClientError,
    GpufanError,
    MalformedResponse,
    TargetTimeout,
    TargetUnavailable,
)
from core.wire.http import JOIN_BYTES
from core.wire.tensors import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    decode_response,
    encode_request,
)

__all__ = [
    "OipClient",
    "as_request",
    "error_for_status",
    "infer_result",
    "map_transport_errors",
    "model_path",
    "requested",
]

_ERROR_TEXT_CHARS = 300  # enough for a worker's message, not a whole HTML error page


def _error_text(body: bytes, reason: str) -> str:
    """The OIP ``{"error": "..."}`` message, or the start of whatever else the body holds."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, str):
        return error[:_ERROR_TEXT_CHARS]
    return body[:_ERROR_TEXT_CHARS].decode("utf-8", "replace") or reason


def error_for_status(status: int, body: bytes, where: str, reason: str = "") -> GpufanError:
    """4xx (but 408 and 429) -> ClientError with the same status and the server's text;
    408 (our own request reached it too slowly: a busy event loop here, not the caller's
    mistake) -> TargetTimeout; 429 and 5xx -> TargetUnavailable naming ``where``."""
    text = _error_text(body, reason)
    if status == 408:
        return TargetTimeout(f"{where} answered 408: {text}")
    if 400 <= status < 500 and status != 429:
        return ClientError(text, status=status)
    return TargetUnavailable(f"{where} answered {status}: {text}")


@contextmanager
def map_transport_errors(where: str) -> Iterator[None]:
    """Map what aiohttp raises into gpufan's tree: timeouts -> TargetTimeout, connect/read/
    protocol errors -> TargetUnavailable."""
    try:
        yield
    except TimeoutError as e:  # asyncio.timeout and aiohttp's own timeouts alike
        raise TargetTimeout(f"{where} timed out ({type(e).__name__})") from e
    except aiohttp.ClientError as e:  # connect, disconnect, payload, protocol errors
        raise TargetUnavailable(f"{where}: {type(e).__name__}: {e}") from e


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]
    reason: str


# Buffers go out as they are, not joined: with an explicit Content-Length aiohttp writes an async
# iterable unchunked, so a large binary tensor is never copied into one request body (a small
# one is joined: ``JOIN_BYTES``).
async def _stream(chunks: Sequence[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    for chunk in chunks:
        yield chunk


def _content_length(chunks: Sequence[bytes | memoryview]) -> str:
    return str(sum(c.nbytes if isinstance(c, memoryview) else len(c) for c in chunks))


def model_path(model: str, version: str | None = None) -> str:
    """``/v2/models/{model}[/versions/{version}]``, each name quoted."""
    path = f"/v2/models/{quote(model, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


class OipClient:
    """Calls one OIP server at ``base_url`` (a gpufan worker or front door, Triton, KServe).

    Args:
        base_url: e.g. ``http://127.0.0.1:8101``.
        session: the shared, pooled session (``core.wire.session.make_session``); its owner
            closes it.
        token: sent as ``Authorization: Bearer <token>`` when given.
        name: how errors name this server (defaults to ``base_url``).
    """

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        token: str | None = None,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        self._session = session
        self._headers = {"authorization": f"Bearer {token}"} if token else {}

    def model_url(self, model: str, version: str | None = None) -> str:
        return self.base_url + model_path(model, version)

    async def _send(
        self,
        method: str,
        url: str,
        timeout: float | None,
        chunks: Sequence[bytes | memoryview] = (),
        headers: Mapping[str, str] | None = None,
    ) -> _Reply:
        """One request, bounded by ``timeout`` from the first byte sent to the last byte read."""
        headers = {**self._headers, **(headers or {})}
        data: bytes | memoryview | AsyncIterator[bytes | memoryview] | None = None
        if chunks:
            length = _content_length(chunks)
            headers["content-length"] = length
            if len(chunks) == 1:
                data = chunks[0]
            elif int(length) <= JOIN_BYTES:  # a small body: one copy beats a streamed write
                data = b"".join(chunks)
            else:
                data = _stream(chunks)
        with map_transport_errors(self.name):
            async with (
                asyncio.timeout(timeout),
                self._session.request(method, url, data=data, headers=headers) as response,
            ):
                body = await response.read()
        return _Reply(response.status, body, response.headers, response.reason or "")

    async def _get(self, url: str, timeout: float | None) -> dict[str, Any]:
        reply = await self._send("GET", url, timeout)
        if reply.status != 200:
            raise error_for_status(reply.status, reply.body, self.name, reply.reason)
        try:
            doc = orjson.loads(reply.body)
        except orjson.JSONDecodeError as e:
            raise MalformedResponse(f"{self.name} sent invalid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise MalformedResponse(f"{self.name} sent {type(doc).__name__}, not an object")
        return doc

    async def ready(self, timeout: float | None = 5.0) -> bool:
        """``GET /v2/health/ready``; an unreachable server is simply not ready."""
        try:
            await self._get(f"{self.base_url}/v2/health/ready", timeout)
        except GpufanError:
            return False
        return True

    async def model_metadata(
        self, model: str, version: str | None = None, timeout: float | None = 10.0
    ) -> dict[str, Any]:
        return await self._get(self.model_url(model, version), timeout)

    async def model_config(
        self, model: str, version: str | None = None, timeout: float | None = 10.0
    ) -> dict[str, Any]:
        """Triton's model configuration (``/config``)."""
        return await self._get(self.model_url(model, version) + "/config", timeout)

    async def infer(
        self,
        model: str,
        request: InferRequest,
        *,
        version: str | None = None,
        binary: bool = True,
        timeout: float | None = 60.0,
    ) -> InferResponse:
        """POST one infer request (binary tensors unless ``binary`` is False), bounded by
        ``timeout`` from the first byte sent to the last byte read."""
        chunks, headers = encode_request(request, binary=binary)
        url = self.model_url(model, version) + "/infer"
        reply = await self._send("POST", url, timeout, chunks, headers)
        return infer_result(reply.status, reply.body, reply.headers, self.name, reply.reason)


def infer_result(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    where: str,
    reason: str = "",
    *,
    keep_written: bool = False,
) -> InferResponse:
    """An infer call's reply as its result, or the error it stands for (``error_for_status``;
    a 200 whose body is not a result is a ``MalformedResponse``); ``keep_written`` as
    ``decode_response``'s."""
    if status != 200:
        raise error_for_status(status, body, where, reason)
    try:
        return decode_response(body, headers.get(HEADER_LENGTH), keep_written=keep_written)
    except BadRequest as e:  # the codec speaks for requests; here the server is at fault
        raise MalformedResponse(f"{where} sent a body that is not a result: {e}") from None


def requested(
    names: Sequence[str] | None, binary: bool = True
) -> tuple[RequestedOutput, ...] | None:
    """Requested-output entries for ``names`` (None: every output)."""
    return None if names is None else tuple(RequestedOutput(n, binary) for n in names)


def as_request(
    inputs: Mapping[str, Any],
    outputs: Sequence[str] | None = None,
    *,
    binary: bool = True,
    parameters: Mapping[str, Any] | None = None,
    request_id: str | None = None,
) -> InferRequest:
    """An InferRequest from ``{name: array}``; outputs come back binary unless told otherwise."""
    return InferRequest(
        inputs=tuple(Tensor(n, np.asarray(a)) for n, a in inputs.items()),
        outputs=requested(outputs, binary),
        id=request_id,
        parameters={"binary_data_output": binary, **(parameters or {})},
    )
