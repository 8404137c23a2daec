"""The one bridge from a function runtime's entry points to the async core.

Each platform calls user code its own way, and each way breaks the obvious ``asyncio.run``:

- AWS Lambda calls a sync handler, then freezes the process and reuses it for the next event:
  the front door's pooled HTTP session (and its warm connections) must outlive an invocation,
  so it must live on one event loop that outlives them too;
- Cloud Functions (functions-framework: Flask under gunicorn threads) calls a sync function from
  several threads at once: they cannot all ``run_until_complete`` one loop;
- Azure Functions (Python v2) awaits async functions on the host's own running loop, where a
  nested ``run_until_complete`` raises "This event loop is already running".

One answer fits all three: a single event loop per process on a daemon thread, started on first
use. Sync callers block on ``run`` (``run_coroutine_threadsafe``); callers already inside a loop
``await arun``, which waits without blocking their loop. The ``FrontDoorRuntime`` is built on
that loop on the first call, from ``gpufan.yaml`` (an explicit path beats ``GPUFAN_CONFIG``),
and kept for the life of the process: one cold start per container or instance.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from core.config import load_settings
from core.errors import ConfigError, GpufanError
from core.frontdoor.runtime import FrontDoorRuntime
from core.frontdoor.service import ServedHook
from core.wire.http import Request, Response, json_response

__all__ = ["CONFIG_ENV", "FunctionRuntime", "payload_too_large"]

CONFIG_ENV = "GPUFAN_CONFIG"
EVENT_PATH_HINT = (
    "send it through the event path instead: upload jobs/<name>.manifest.json, then "
    "jobs/<name>.npz to the jobs bucket, and read results/jobs/<name>.npz/<version>/ "
    "(see functions/README.md)"
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Work = Callable[[FrontDoorRuntime], Awaitable[T]]


def payload_too_large(size: int, limit: int, platform: str, what: str = "request body") -> Response:
    """A 413 that names the platform's limit and points at the event path."""
    return json_response(
        413,
        {
            "error": f"{what} of {size} bytes exceeds {platform}'s limit of {limit} bytes for a "
            f"synchronous call; {EVENT_PATH_HINT}"
        },
    )


def _unavailable(e: GpufanError) -> Response:
    log.error("front door unavailable: %s", e)
    return json_response(e.status, {"error": str(e)})


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # halves per-request overhead where installed (see core.wire.asgi.run_async)
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class FunctionRuntime:
    """One front door per process, on one event loop, for sync and async entry points alike.

    Args:
        config: path of ``gpufan.yaml``; None reads ``GPUFAN_CONFIG`` on first use.
        env: where ``GPUFAN_CONFIG`` and the settings' ``token_env`` variables are read
            (defaults to ``os.environ``).
        hooks: called with every answered request (``core.frontdoor.service.Served``), on the
            runtime's loop thread, e.g. to emit a platform metric.
    """

    def __init__(
        self,
        config: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        hooks: Sequence[ServedHook] = (),
    ) -> None:
        self._config = config
        self._env = env
        self._hooks = tuple(hooks)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._built: FrontDoorRuntime | None = None
        self._building = asyncio.Lock()

    def _config_path(self) -> Path:
        env = os.environ if self._env is None else self._env
        path = self._config or env.get(CONFIG_ENV)
        if not path:
            raise ConfigError(f"no gpufan.yaml: set {CONFIG_ENV} to its path")
        return Path(path)

    async def _runtime(self) -> FrontDoorRuntime:
        """The front door, built on the first call of the process (on the loop thread)."""
        if self._built is not None:
            return self._built
        async with self._building:
            if self._built is None:
                settings = load_settings(self._config_path())
                runtime = FrontDoorRuntime(
                    settings, settings.targets, env=self._env, hooks=self._hooks
                )
                await runtime.__aenter__()
                self._built = runtime
                log.info("front door up: %d targets", len(settings.targets))
        return self._built

    async def _call(self, work: Work[T]) -> T:
        return await work(await self._runtime())

    def _loop_thread(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = _new_loop()
                thread = threading.Thread(target=loop.run_forever, name="gpufan-loop", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, work: Work[T]) -> T:
        """Run ``work(runtime)`` on the process's loop and wait for it (sync entry points)."""
        loop = self._loop_thread()
        if threading.current_thread() is self._thread:
            raise RuntimeError("run() called on the runtime's own loop; await arun() instead")
        return asyncio.run_coroutine_threadsafe(self._call(work), loop).result()

    async def arun(self, work: Work[T]) -> T:
        """Run ``work(runtime)`` on the process's loop from inside another running loop."""
        loop = self._loop_thread()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._call(work), loop))

    def handle(self, request: Request) -> Response:
        """One HTTP request through the OIP handler (sync entry points)."""
        try:
            return self.run(lambda rt: rt.handler(request))
        except GpufanError as e:  # OipHandler answers every error; only building the runtime
            return _unavailable(e)  # raises here, e.g. a broken gpufan.yaml

    async def ahandle(self, request: Request) -> Response:
        """One HTTP request through the OIP handler (async entry points)."""
        try:
            return await self.arun(lambda rt: rt.handler(request))
        except GpufanError as e:
            return _unavailable(e)

    def close(self) -> None:
        """Close the front door and stop the loop; the next call builds both afresh."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        built, self._built = self._built, None
        if built is not None:
            asyncio.run_coroutine_threadsafe(built.__aexit__(None, None, None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        self._building = asyncio.Lock()
