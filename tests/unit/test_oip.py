"""The OIP route handler over an in-memory data plane: routing, auth, error mapping."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import orjson
import pytest

from core.errors import NotFound
from core.wire.http import Request, Response
from core.wire.oip import OipHandler
from core.wire.tensors import HEADER_LENGTH, InferRequest, InferResponse, Tensor, decode_response


class DoublingPlane:
    """A real (tiny) data plane: model 'double' returns 2*x for its input."""

    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return True

    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "test"}

    async def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        if model != "double":
            raise NotFound(f"unknown model {model!r}")
        return {"name": model, "versions": ["1"]}

    async def model_ready(self, model: str, version: str | None) -> bool:
        return model == "double"

    async def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        return {"name": model, "max_batch_size": 8}

    def admit(self, model: str) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        await self.model_metadata(model, version)
        x = request.inputs[0].data
        return InferResponse(model, (Tensor("y", x * 2),), version, request.id)

    def metrics(self) -> tuple[bytes, str]:
        raise RuntimeError("boom")  # an unexpected error must become a clean 500


def _call(
    handler: OipHandler, method: str, path: str, body: bytes = b"", **headers: str
) -> Response:
    import asyncio

    return asyncio.run(handler(Request(method, path, headers, body)))


def _error(resp: Response) -> str:
    return orjson.loads(resp.body_bytes())["error"]


@pytest.fixture
def handler() -> OipHandler:
    return OipHandler(DoublingPlane())


def test_routes(handler: OipHandler) -> None:
    assert _call(handler, "GET", "/v2/health/live").status == 200
    assert _call(handler, "GET", "/v2").status == 200
    assert orjson.loads(_call(handler, "GET", "/v2/models/double").body_bytes())["name"] == "double"
    assert _call(handler, "GET", "/v2/models/double/versions/1/ready").status == 200
    assert _call(handler, "GET", "/v2/models/other/ready").status == 503
    assert (
        orjson.loads(_call(handler, "GET", "/v2/models/double/config").body_bytes())[
            "max_batch_size"
        ]
        == 8
    )


def test_infer_json_in_binary_out(handler: OipHandler) -> None:
    body = orjson.dumps(
        {
            "id": "r1",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    resp = _call(handler, "POST", "/v2/models/double/infer", body)
    assert resp.status == 200
    out = decode_response(resp.body_bytes(), resp.headers[HEADER_LENGTH])
    assert out.id == "r1"
    np.testing.assert_array_equal(out.outputs[0].data, np.array([2, 4, 6], np.float32))


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/nope", 404, "no route GET /nope"),
        ("GET", "/v2/models/double/infer", 405, "use POST"),
        ("POST", "/v2/models/double", 405, "use GET"),
        ("GET", "/v2/models/unknown", 404, "unknown model 'unknown'"),
        ("POST", "/v2/models/double/infer", 400, "malformed JSON"),
        ("GET", "/metrics", 500, "internal server error"),
    ],
)
def test_errors_map_to_status_and_message(
    handler: OipHandler, method: str, path: str, status: int, message: str
) -> None:
    resp = _call(handler, method, path, b"{bad")
    assert resp.status == status
    assert message in _error(resp)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("PUT", "/v2/health/live", "GET"), ("GET", "/v2/models/double/infer", "POST")],
)
def test_a_405_says_which_method_is_allowed(
    handler: OipHandler, method: str, path: str, allow: str
) -> None:
    resp = _call(handler, method, path)
    assert (resp.status, resp.headers["allow"]) == (405, allow)


def test_an_error_echoing_a_huge_name_is_cut_short(handler: OipHandler) -> None:
    name = "n" * 1_000_000
    body = orjson.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": [2], "data": [1]}]})
    resp = _call(handler, "POST", "/v2/models/double/infer", body)
    message = _error(resp)
    assert resp.status == 400
    assert message.startswith("tensor 'nnn") and message.endswith("characters in all)")
    assert len(message) < 1100


def test_bearer_token_guards_all_but_health() -> None:
    handler = OipHandler(DoublingPlane(), token="s3cret")
    assert _call(handler, "GET", "/v2/health/ready").status == 200
    assert _call(handler, "GET", "/v2").status == 401
    assert _call(handler, "GET", "/v2", authorization="Bearer wrong").status == 401
    assert _call(handler, "GET", "/v2", authorization="Bearer s3cret").status == 200


class SummingPlane(DoublingPlane):
    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        total = np.asarray([request.inputs[0].data.sum()])
        return InferResponse(model, (Tensor("sum", total),), version, request.id)


def test_a_large_body_is_decoded_on_a_thread_and_charged_on_the_loop() -> None:
    """Decoding 16 MB of JSON must not hold the event loop, and the codec's charge must run on
    the loop's thread (the memory budget is not thread-safe), refusing as there."""
    import asyncio
    import threading
    import time

    from core.errors import Overloaded

    x = np.zeros(4_000_000, np.float32)
    doc = {"inputs": [{"name": "x", "shape": [x.size], "datatype": "FP32", "data": x}]}
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    threads: list[str] = []

    def charge(nbytes: int) -> None:
        threads.append(threading.current_thread().name)

    def refuse(nbytes: int) -> None:
        raise Overloaded("the server's memory budget is full")

    async def main() -> tuple[Response, Response, list[float]]:
        gaps: list[float] = []

        async def tick() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        handler = OipHandler(SummingPlane())
        path = "/v2/models/double/infer"
        ok = await handler(Request("POST", path, {}, body, charge=charge))
        shed = await handler(Request("POST", path, {}, body, charge=refuse))
        ticker.cancel()
        return ok, shed, gaps

    started = time.perf_counter()
    ok, shed, gaps = asyncio.run(main())
    took = time.perf_counter() - started  # two decodes: on the loop, each would be one gap
    assert ok.status == 200, ok.body_bytes()[:200]
    assert threads == [threading.main_thread().name]
    assert shed.status == 503 and shed.headers["retry-after"] == "1"
    # The loop ran all along (on it, the decode would have been one long gap, or no tick at all).
    assert len(gaps) > 20 and max(gaps) < took / 5, (len(gaps), max(gaps, default=0), took)
