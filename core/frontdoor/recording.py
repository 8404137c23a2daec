"""The front door's side of the history: count every answered request into the store.

``FrontDoorRuntime`` (``core.frontdoor.runtime``) builds ``RecordingFrontDoor`` instead of
``FrontDoor`` when a
history store is configured (``autoscale.history`` or ``GPUFAN_HISTORY``); without one nothing is
recorded and nothing changes. Items come from the request, busy seconds from the shards' attempts
in the placement report (failed attempts included: they held a GPU too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson

from core.autoscale.history import HISTORY_ENV, Recorder
from core.autoscale.settings import of
from core.config import Settings
from core.frontdoor.service import FrontDoor
from core.planning.shards import batch_size
from core.wire.tensors import InferRequest, InferResponse

__all__ = ["RecordingFrontDoor", "history_location"]


def history_location(settings: Settings, env: Mapping[str, str]) -> str | None:
    """Where the config (else ``GPUFAN_HISTORY``) keeps the history; None when neither says."""
    return of(settings).history or env.get(HISTORY_ENV)


class RecordingFrontDoor(FrontDoor):
    """A ``FrontDoor`` that feeds a ``Recorder`` after each answered request; flushes run in a
    worker thread, never on the request path."""

    def __init__(self, *args: Any, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = recorder
        self._flushes: set[asyncio.Future[None]] = set()

    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        response = await super().infer(model, version, request)
        report = orjson.loads(str(response.parameters["gpufan_report"]))
        busy_ms = sum(a["ms"] for shard in report["shards"] for a in shard["attempts"])
        if self.recorder.observe(model, batch_size(request.inputs), busy_ms / 1000):
            task = asyncio.ensure_future(asyncio.to_thread(self.recorder.flush))
            self._flushes.add(task)  # held until done: a dropped task may be collected mid-write
            task.add_done_callback(self._flushes.discard)
        return response

    async def close(self) -> None:
        """Wait for flushes in flight, then write what is still counted."""
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await asyncio.to_thread(self.recorder.flush)
