"""A small async Open Inference Protocol client over one injected ``httpx.AsyncClient``.

Used wherever gpufan talks OIP as a caller: the ``http`` backends, ``gpufan infer``, the demo and
the benchmarks. Answers that are not 2xx become the matching ``core.errors`` exception carrying the
server's own ``error`` text, so a worker's 400 reaches the caller word for word.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import orjson

from core.errors import (
    ClientError,
    GpufanError,
    MalformedResponse,
    TargetTimeout,
    TargetUnavailable,
)
from core.tensors import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    decode_response,
    encode_request,
)

__all__ = ["OipClient", "as_request", "error_for_status", "map_transport_errors", "requested"]


def _server_message(response: httpx.Response) -> str:
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:200]
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)[:200]


def error_for_status(response: httpx.Response, where: str) -> GpufanError:
    """4xx (but 429) -> ClientError with the same status; 429 and 5xx -> TargetUnavailable."""
    message = f"{where} answered {response.status_code}: {_server_message(response)}"
    status = response.status_code
    if 400 <= status < 500 and status != 429:
        return ClientError(_server_message(response), status=status)
    return TargetUnavailable(message)


@contextmanager
def map_transport_errors(where: str) -> Iterator[None]:
    """Map httpx's exceptions into gpufan's tree (the one place this mapping lives)."""
    try:
        yield
    except httpx.TimeoutException as e:
        raise TargetTimeout(f"{where} timed out ({type(e).__name__})") from e
    except httpx.TransportError as e:
        raise TargetUnavailable(f"{where} unreachable: {type(e).__name__}: {e}") from e


class OipClient:
    """Calls one OIP server at ``base_url`` (a gpufan worker or front door, Triton, KServe)."""

    def __init__(
        self, base_url: str, client: httpx.AsyncClient, *, token: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client
        self._headers = {"authorization": f"Bearer {token}"} if token else {}

    def _model_path(self, model: str, version: str | None) -> str:
        path = f"{self.base_url}/v2/models/{quote(model, safe='')}"
        return f"{path}/versions/{quote(version, safe='')}" if version else path

    async def _get(self, url: str, timeout: float | None) -> dict[str, Any]:
        with map_transport_errors(self.base_url):
            response = await self._client.get(url, headers=self._headers, timeout=timeout)
        if response.status_code != 200:
            raise error_for_status(response, self.base_url)
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError as e:
            raise MalformedResponse(f"{self.base_url} sent invalid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise MalformedResponse(f"{self.base_url} sent {type(doc).__name__}, not an object")
        return doc

    async def ready(self, timeout: float | None = 5.0) -> bool:
        try:
            await self._get(f"{self.base_url}/v2/health/ready", timeout)
        except GpufanError:
            return False
        return True

    async def model_metadata(
        self, model: str, version: str | None = None, timeout: float | None = 10.0
    ) -> dict[str, Any]:
        return await self._get(self._model_path(model, version), timeout)

    async def model_config(
        self, model: str, version: str | None = None, timeout: float | None = 10.0
    ) -> dict[str, Any]:
        return await self._get(self._model_path(model, version) + "/config", timeout)

    async def infer(
        self,
        model: str,
        request: InferRequest,
        *,
        version: str | None = None,
        binary: bool = True,
        timeout: float | None = 60.0,
    ) -> InferResponse:
        """POST one infer request; binary tensors both ways unless ``binary`` is False."""
        body, headers = encode_request(request, binary=binary)
        with map_transport_errors(self.base_url):
            response = await self._client.post(
                self._model_path(model, version) + "/infer",
                content=body[0] if len(body) == 1 else b"".join(body),
                headers={**self._headers, **headers},
                timeout=timeout,
            )
        if response.status_code != 200:
            raise error_for_status(response, self.base_url)
        try:
            return decode_response(response.content, response.headers.get(HEADER_LENGTH))
        except ClientError as e:  # the codec speaks for requests; here the server is at fault
            raise MalformedResponse(f"{self.base_url} sent a malformed result: {e}") from None


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
