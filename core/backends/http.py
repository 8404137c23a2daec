"""The ``http`` backend: any server that speaks the Open Inference Protocol over REST.

Triton, KServe, an on-prem box or gpufan's own worker: each shard is one
``POST {endpoint}/v2/models/{model}[/versions/{v}]/infer`` with the binary tensor extension, sent
concurrently under the target's slots. Foreign errors are mapped into ``core.errors`` at this one
boundary by ``map_transport_errors``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from core.backends.base import ShardFailed, ShardJob, ShardOk, ShardOutcome, WorkerTelemetry
from core.config import Target
from core.errors import (
    BadRequest,
    ClientError,
    ConfigError,
    GpufanError,
    MalformedResponse,
    TargetTimeout,
    TargetUnavailable,
)
from core.plan import Shard
from core.tensors import (
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    decode_response,
    encode_request,
)

__all__ = ["HttpBackend", "map_transport_errors"]

_ERROR_TEXT_CHARS = 300  # enough for a worker's message, not a whole HTML error page


def _no_token(target: Target) -> None:
    return None


def _configured_endpoint(target: Target) -> str:
    if target.endpoint is None:
        raise ConfigError(f"target {target.name!r} has no 'endpoint'")
    return target.endpoint


@contextmanager
def map_transport_errors(target: Target) -> Iterator[None]:
    """Map what httpx and the OIP decoder raise into gpufan's error tree.

    Inside the block, call ``response.raise_for_status()`` and decode the body, so that:
    timeouts -> TargetTimeout; connect/read/protocol errors, 429 and 5xx -> TargetUnavailable;
    other 4xx -> ClientError with that status and the worker's ``error`` text; a 2xx body that
    does not decode -> MalformedResponse (in this block, ``BadRequest`` can only come from
    decoding the target's answer, never from the caller's request).
    """
    try:
        yield
    except (httpx.TimeoutException, TimeoutError) as e:
        raise TargetTimeout(f"{target.name} timed out ({type(e).__name__})") from e
    except httpx.HTTPStatusError as e:
        raise _status_error(target, e.response) from e
    except httpx.RequestError as e:  # connect, read, write, remote protocol, pool errors
        raise TargetUnavailable(f"{target.name}: {type(e).__name__}: {e}") from e
    except BadRequest as e:
        raise MalformedResponse(
            f"{target.name} answered with a body that is not a result: {e}"
        ) from e


def _status_error(target: Target, response: httpx.Response) -> GpufanError:
    status = response.status_code
    text = _error_text(response)
    if 400 <= status < 500 and status != 429:
        return ClientError(text, status=status)
    return TargetUnavailable(f"{target.name} answered {status}: {text}")


def _error_text(response: httpx.Response) -> str:
    """The OIP ``{"error": "..."}`` message, or the start of whatever else the body holds."""
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"][:_ERROR_TEXT_CHARS]
    return response.text[:_ERROR_TEXT_CHARS] or response.reason_phrase


def _telemetry(params: Mapping[str, Any]) -> WorkerTelemetry:
    """Telemetry from response parameters; a missing or non-numeric value is simply unknown."""

    def number(key: str) -> float | None:
        value = params.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return value if ok else None

    depth = number("queue_depth")
    return WorkerTelemetry(
        queue_depth=None if depth is None else int(depth),
        utilization=number("utilization"),
        items_per_s=number("items_per_s"),
    )


# Buffers go out as they are, not joined: on loopback a 2 x 8 MB FP32 request took ~21 ms
# streamed against ~34-50 ms joined (one copy fewer), and small requests cost the same.
async def _stream(chunks: Sequence[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    for chunk in chunks:
        yield chunk


def _length(chunks: Sequence[bytes | memoryview]) -> dict[str, str]:
    """An explicit Content-Length, so httpx sends the stream unchunked (workers need the size)."""
    size = sum(c.nbytes if isinstance(c, memoryview) else len(c) for c in chunks)
    return {"content-length": str(size)}


class HttpBackend:
    """Shards as OIP infer requests over one injected, pooled ``httpx.AsyncClient``.

    Args:
        client: the shared client (``core.httpclient.make_client``); its owner closes it.
        token_for: the bearer token for a target, or None to send no ``Authorization``.
        endpoint_for: the base URL of a target; the ``local`` backend supplies its workers' ports.
    """

    name = "http"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        token_for: Callable[[Target], str | None] = _no_token,
        endpoint_for: Callable[[Target], str] = _configured_endpoint,
    ) -> None:
        self._client = client
        self._token_for = token_for
        self._endpoint_for = endpoint_for

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        """One concurrent request per shard; outcomes in completion order.

        Closing or cancelling the iterator cancels the requests still in flight.
        """
        tasks = [asyncio.create_task(self._infer(target, job, s)) for s in shards]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _infer(self, target: Target, job: ShardJob, shard: Shard) -> ShardOutcome:
        # Outputs always come back binary: the front door re-encodes them for its caller anyway.
        outputs = tuple(RequestedOutput(o.name, True) for o in job.outputs or ()) or None
        request = InferRequest(shard.inputs, outputs, shard.id, {"binary_data_output": True})
        chunks, headers = encode_request(request, binary=True)
        async with job.slots:
            started = time.perf_counter()
            try:
                url = self._model_url(target, job.model, job.version) + "/infer"
                with map_transport_errors(target):
                    async with asyncio.timeout(job.timeout_s):
                        response = await self._client.post(
                            url,
                            content=_stream(chunks),
                            headers=self._headers(target, {**headers, **_length(chunks)}),
                            timeout=job.timeout_s,
                        )
                    response.raise_for_status()
                    result = decode_response(response.content, response.headers.get(HEADER_LENGTH))
            except GpufanError as e:
                return ShardFailed(shard, target.name, e, time.perf_counter() - started)
        params = result.parameters if isinstance(result.parameters, Mapping) else {}
        return ShardOk(
            shard,
            target.name,
            result.outputs,
            time.perf_counter() - started,
            _telemetry(params),
            cold_start=params.get("cold_start") is True,
        )

    async def model_metadata(
        self, target: Target, model: str, version: str | None
    ) -> dict[str, Any]:
        """``GET /v2/models/{m}[/versions/{v}]``."""
        return await self._get_json(target, self._model_url(target, model, version))

    async def model_config(self, target: Target, model: str, version: str | None) -> dict[str, Any]:
        """``GET /v2/models/{m}[/versions/{v}]/config`` (Triton's model configuration)."""
        return await self._get_json(target, self._model_url(target, model, version) + "/config")

    async def ready(self, target: Target) -> bool:
        """``GET /v2/health/ready``; an unreachable target is simply not ready."""
        try:
            with map_transport_errors(target):
                response = await self._client.get(
                    f"{self._endpoint_for(target)}/v2/health/ready",
                    headers=self._headers(target, {}),
                    timeout=target.timeout_s,
                )
        except GpufanError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        """Nothing to release: the injected client belongs to whoever made it."""

    def _model_url(self, target: Target, model: str, version: str | None) -> str:
        base = f"{self._endpoint_for(target)}/v2/models/{model}"
        return f"{base}/versions/{version}" if version else base

    def _headers(self, target: Target, headers: Mapping[str, str]) -> dict[str, str]:
        token = self._token_for(target)
        return {**headers, "authorization": f"Bearer {token}"} if token else dict(headers)

    async def _get_json(self, target: Target, url: str) -> dict[str, Any]:
        with map_transport_errors(target):
            response = await self._client.get(
                url, headers=self._headers(target, {}), timeout=target.timeout_s
            )
            response.raise_for_status()
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            raise MalformedResponse(f"{target.name} answered GET {url} with a non-object body")
        return doc
