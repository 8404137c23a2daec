"""The front door's side of the history: count every answered request into the store.

``FrontDoorRuntime`` (``core.frontdoor.runtime``) adds a ``HistoryHook`` to the front door's hooks
when a history store is configured (``autoscale.history`` or ``GPUFAN_HISTORY``); without one
nothing is recorded and nothing changes. Items and busy seconds come from the typed ``Served``
value (failed attempts included: they held a GPU too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from core.autoscale.history import HISTORY_ENV, Recorder
from core.autoscale.settings import of
from core.config import Settings
from core.frontdoor.service import Served

__all__ = ["HistoryHook", "history_location"]


def history_location(settings: Settings, env: Mapping[str, str]) -> str | None:
    """Where the config (else ``GPUFAN_HISTORY``) keeps the history; None when neither says."""
    return of(settings).history or env.get(HISTORY_ENV)


class HistoryHook:
    """A front-door hook that feeds a ``Recorder``; flushes run in a worker thread, never on the
    request path. Call it on the front door's event loop."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._flushes: set[asyncio.Future[None]] = set()

    def __call__(self, served: Served) -> None:
        result = served.result
        if self.recorder.observe(served.model, result.items, result.busy_s):
            task = asyncio.ensure_future(asyncio.to_thread(self.recorder.flush))
            self._flushes.add(task)  # held until done: a dropped task may be collected mid-write
            task.add_done_callback(self._flushes.discard)

    async def aclose(self) -> None:
        """Wait for flushes in flight, then write what is still counted."""
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await asyncio.to_thread(self.recorder.flush)
