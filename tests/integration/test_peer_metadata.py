"""The front door believes a peer's model metadata only when it makes sense (issue 15, item 3).

Two OIP servers on 127.0.0.1 (gpufan's own handler over a small data plane): one answers as
KServe 0.21 does for a model served by a custom predictor - metadata with no inputs or outputs,
no ``/config`` route (404) - and one as a gpufan worker does. test_kserve_peer runs the same
front door in front of a real KServe ModelServer; this pins the rules without one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from core.config import settings_from_dict
from core.errors import NotFound
from core.frontdoor.runtime import FrontDoorRuntime
from core.wire.asgi import AsgiApp, RunningServer, bind_socket, start_server
from core.wire.oip import OipHandler
from core.wire.tensors import InferRequest, InferResponse

MODEL = "m"
KSERVE_METADATA = {"name": MODEL, "inputs": [], "outputs": [], "platform": "", "versions": None}
FULL_METADATA = {
    "name": MODEL,
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
}


class Peer:
    """A data plane that answers metadata and config as a KServe or a gpufan worker does."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.asked: list[str] = []

    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return True

    async def server_metadata(self) -> dict[str, Any]:
        return {"name": self.kind}

    async def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        self.asked.append("metadata")
        return dict(KSERVE_METADATA if self.kind == "kserve" else FULL_METADATA)

    async def model_ready(self, model: str, version: str | None) -> bool:
        return True

    async def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        self.asked.append("config")
        if self.kind == "kserve":
            raise NotFound(f"no route GET /v2/models/{model}/config")
        return {"name": model, "max_batch_size": 64}

    def admit(self, model: str) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        raise AssertionError("metadata tests send no inference")

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"


Start = Callable[[str], Awaitable[tuple[str, Peer]]]


@pytest.fixture
async def peer() -> AsyncIterator[Start]:
    """``await peer(kind)`` starts one server and returns its endpoint and plane."""
    servers: list[RunningServer] = []

    async def start(kind: str) -> tuple[str, Peer]:
        plane = Peer(kind)
        sock = bind_socket("127.0.0.1", 0)
        servers.append(
            await start_server(
                AsgiApp(OipHandler(plane), max_body_bytes=1 << 20), sock, timeout_s=5
            )
        )
        return f"http://127.0.0.1:{sock.getsockname()[1]}", plane

    yield start
    for server in servers:
        await server.stop()


def runtime(*endpoints: tuple[str, str]) -> FrontDoorRuntime:
    targets = [
        {"name": name, "backend": "http", "endpoint": url, "usd_per_hour": 0.0}
        for name, url in endpoints
    ]
    settings = settings_from_dict({"models": [{"name": MODEL}], "targets": targets}, source="test")
    return FrontDoorRuntime(settings, settings.targets, env={})


async def test_empty_metadata_from_a_peer_listed_first_is_skipped_not_cached(peer: Start) -> None:
    kserve_url, kserve = await peer("kserve")
    gpufan_url, gpufan = await peer("gpufan")
    async with runtime(("kserve", kserve_url), ("gpufan", gpufan_url)) as rt:
        for _ in range(3):  # the answer is the worker's every time, and only that is cached
            meta = await rt.front_door.model_metadata(MODEL, None)
            assert meta["inputs"] == FULL_METADATA["inputs"]
            assert meta["outputs"] == FULL_METADATA["outputs"]
        assert kserve.asked == ["metadata"] and gpufan.asked == ["metadata"]
        # /config: KServe's 404 is skipped, the worker answers, and KServe stays healthy
        config = await rt.front_door.model_config(MODEL, None)
        assert config["max_batch_size"] == 64
        assert rt.dispatcher.health.allows("kserve")
        assert await rt.front_door.model_ready(MODEL, None)


async def test_a_lone_peer_with_empty_metadata_and_no_config_route_says_so(peer: Start) -> None:
    kserve_url, _ = await peer("kserve")
    async with runtime(("kserve", kserve_url)) as rt:
        # nothing is down: a 404 naming what each target said, not a 503 to retry
        with pytest.raises(NotFound, match=r"no target describes it \(kserve: model metadata"):
            await rt.front_door.model_metadata(MODEL, None)
        with pytest.raises(NotFound, match=r"no target has a model configuration route") as e:
            await rt.front_door.model_config(MODEL, None)
        assert "404 from kserve" in str(e.value) and e.value.status == 404
        assert await rt.front_door.model_ready(MODEL, None)  # served, only not described
