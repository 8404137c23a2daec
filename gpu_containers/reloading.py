"""Triton's poll mode: a data plane that swaps in the repository's new state while it serves.

Every ``poll_s`` the source is asked whether the repository changed (one listing for an object
store). A new state is loaded on a thread — sessions built and warmed up — while the old plane
keeps answering; only a plane that loaded whole replaces it, so a broken new version (a corrupt
``model.onnx``, a malformed ``config.pbtxt``) is logged and the old versions go on serving.
Requests already inside the old plane finish there: it is closed once the last of them is
answered, so a swap fails no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.wire.tensors import InferRequest, InferResponse
from gpu_containers.dataplane import WorkerDataPlane
from gpu_containers.sources import RepositorySource

__all__ = ["ReloadingPlane"]

log = logging.getLogger(__name__)

_DRAIN_S = 300.0  # an old plane is closed after this even if a request is still inside it


class _Generation:
    """One loaded state of the repository and the requests inside it."""

    def __init__(self, plane: WorkerDataPlane) -> None:
        self.plane = plane
        self.inside = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.inside += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inside -= 1
        if self.inside == 0:
            self.idle.set()


class ReloadingPlane:
    """A ``core.wire.oip.DataPlane`` over the newest state of a repository that loaded whole.

    Args:
        plane: the plane built from the source's first state.
        build: a plane from a repository directory (sessions load and warm up: slow, blocking).
        source: asked every ``poll_s`` seconds for a new state.
    """

    def __init__(
        self,
        plane: WorkerDataPlane,
        build: Callable[[Path], WorkerDataPlane],
        source: RepositorySource,
        poll_s: float,
    ) -> None:
        self._gen = _Generation(plane)
        self._build = build
        self._source = source
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0  # states swapped in since start
        self.failures = 0  # new states that did not load (the old one kept serving)

    @property
    def plane(self) -> WorkerDataPlane:
        return self._gen.plane

    async def start(self) -> None:
        """Begin polling (on the server's loop, at start-up)."""
        self._task = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._gen.plane.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.reload()
            except Exception:  # a poll's failure must never stop the polling
                log.exception("polling %s failed", self._source.url)

    async def reload(self) -> bool:
        """Swap in the repository's new state if there is one and it loads; True if swapped."""
        try:
            path = await self._source.sync()
        except ConfigError as e:
            log.warning("%s; still serving the state loaded before", e)
            return False
        if path is None:
            return False
        try:
            plane = await asyncio.to_thread(self._build, path)
        except Exception as e:  # ConfigError, or onnxruntime's own on a corrupt model
            self.failures += 1
            log.warning("the new state of %s did not load (%s: %s); still serving %s",
                        self._source.url, type(e).__name__, e, _versions(self.plane))  # fmt: skip
            return False
        old, self._gen = self._gen, _Generation(plane)
        self.reloads += 1
        log.info("serving the new state of %s: %s", self._source.url, _versions(plane))
        asyncio.create_task(self._retire(old))  # noqa: RUF006  # it ends by itself, bounded
        return True

    async def _retire(self, old: _Generation) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(old.idle.wait(), _DRAIN_S)
        if old.inside:
            log.warning("closing the previous state with %d request(s) still inside", old.inside)
        await old.plane.close()

    # ------------------------------------------------------------------------------ DataPlane

    async def live(self) -> bool:
        return await self.plane.live()

    async def ready(self) -> bool:
        return await self.plane.ready()

    async def server_metadata(self) -> dict[str, Any]:
        return await self.plane.server_metadata()

    async def model_ready(self, model: str, version: str | None) -> bool:
        return await self.plane.model_ready(model, version)

    async def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        return await self.plane.model_metadata(model, version)

    async def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        return await self.plane.model_config(model, version)

    def admit(self, model: str) -> AbstractAsyncContextManager[None]:
        return self.plane.admit(model)

    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        gen = self._gen
        gen.enter()
        try:
            return await gen.plane.infer(model, version, request)
        finally:
            gen.leave()

    def metrics(self) -> tuple[bytes, str]:
        return self.plane.metrics()


def _versions(plane: WorkerDataPlane) -> str:
    return ", ".join(f"{e.name} v{','.join(e.versions)}" for e in plane.repository)
