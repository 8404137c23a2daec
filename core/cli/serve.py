"""``gpufan serve``: local workers (if any) plus the front door, until interrupted."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from core.config import Settings, load_settings
from core.frontdoor.runtime import (
    FrontDoorRuntime,
    LocalWorkersHandle,
    embedded_settings,
    front_door_asgi,
    started_local_workers,
)
from core.wire.asgi import bind_socket, serve
from core.wire.logs import configure_logging

__all__ = ["resolve_settings", "run_serve"]

DEFAULT_WORKERS = 2
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def resolve_settings(config: Path | None, workers: int | None) -> Settings:
    """The config file's settings, or the embedded default; ``--workers`` overrides either."""
    if config is None:
        return embedded_settings(DEFAULT_WORKERS if workers is None else workers)
    settings = load_settings(config)
    if workers is None:
        return settings
    local = settings.local_workers.model_copy(update={"count": workers})
    return settings.model_copy(update={"local_workers": local})


def run_serve(
    config: Path | None,
    *,
    host: str | None,
    port: int | None,
    workers: int | None,
    grpc_port: int | None = None,
    processes: int | None = None,
) -> int:
    configure_logging()
    settings = resolve_settings(config, workers)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    grpc_port = settings.server.grpc_port if grpc_port is None else grpc_port
    processes = settings.server.processes if processes is None else processes
    if processes < 1:
        print(f"gpufan serve: --processes must be >= 1, got {processes}", file=sys.stderr)
        return 2
    if processes > 1 and not hasattr(socket, "SO_REUSEPORT"):
        print("gpufan serve: --processes needs SO_REUSEPORT (Linux, BSD, macOS)", file=sys.stderr)
        return 2
    if grpc_port is not None:
        try:
            import core.wire.grpcserver  # noqa: F401  # grpcio: only when gRPC is asked for
        except ImportError as e:
            print(f"gpufan serve: gRPC needs gpufan[grpc] ({e})", file=sys.stderr)
            return 2
    # bind first: a taken port fails before workers start
    sock = bind_socket(host, port, reuse_port=processes > 1)
    bound = sock.getsockname()[1]
    # where the processes answer each other's /metrics scrapes (core.wire.fanin)
    metrics = Path(tempfile.mkdtemp(prefix="gpufan-metrics-")) if processes > 1 else None
    print(f"gpufan serve: starting {settings.local_workers.count} local worker(s) ...", flush=True)
    try:
        with started_local_workers(settings.local_workers) as local:
            children = []
            for _ in range(processes - 1):  # after the workers: every process fronts the same
                pid = os.fork()
                if pid == 0:
                    _as_child_front_door(settings, local, host, bound, grpc_port, processes,
                                         metrics)  # fmt: skip
                children.append(pid)
            try:
                _front_door(settings, local, sock, host, grpc_port, processes, metrics)
            finally:
                _stop(children)
    finally:
        if metrics is not None:
            shutil.rmtree(metrics, ignore_errors=True)
    return 0


def _front_door(
    settings: Settings,
    local: LocalWorkersHandle,
    sock: socket.socket,
    host: str,
    grpc_port: int | None,
    processes: int,
    metrics: Path | None,
    *,
    announce: bool = True,
) -> None:
    """Serve one front-door process on ``sock`` (and gRPC) until SIGINT/SIGTERM; with
    ``metrics``, its /metrics sums every process's."""
    runtime = FrontDoorRuntime(
        settings,
        settings.targets + local.targets,
        local_endpoints=local.endpoints,
        local_token=local.token,
    )
    names = ", ".join(t.name for t in runtime.targets)
    line = (
        f"gpufan front door listening on http://{host}:{sock.getsockname()[1]} (targets: {names})"
    )
    if processes > 1:
        line += f" in {processes} processes"
    app = front_door_asgi(runtime, metrics)
    if grpc_port is None:
        serve(app, sock, announce=line if announce else None)
        return
    from core.wire.grpcserver import serve_grpc

    server = settings.server
    edge = serve_grpc(app, lambda: runtime.front_door, host=host, port=grpc_port,
                      token=runtime.server_token,
                      max_message_bytes=int(server.max_body_mb * 1024 * 1024),
                      reuse_port=processes > 1)  # fmt: skip
    serve(app, sock, announce=(lambda: f"{line}, grpc://{edge.address}") if announce else None)


def _as_child_front_door(
    settings: Settings,
    local: LocalWorkersHandle,
    host: str,
    port: int,
    grpc_port: int | None,
    processes: int,
    metrics: Path | None,
) -> NoReturn:
    """A forked front-door process: its own socket on the same port (SO_REUSEPORT), its own
    runtime; it ends with its parent and never runs the parent's clean-up (the local workers
    belong to the parent)."""
    code = 0
    try:
        _die_with_parent()
        sock = bind_socket(host, port, reuse_port=True)
        # a port picked at random (0) is the parent's to serve gRPC on: only it knows it
        _front_door(settings, local, sock, host, grpc_port or None, processes, metrics,
                    announce=False)  # fmt: skip
    except BaseException:
        logging.getLogger(__name__).exception("front-door process %d failed", os.getpid())
        code = 1
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (elsewhere: best effort)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _stop(children: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM the forked front doors and reap them (SIGKILL past ``grace_s``)."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid in children:
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
