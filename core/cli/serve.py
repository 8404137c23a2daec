"""``gpufan serve``: local workers (if any) plus the front door, until interrupted."""

from __future__ import annotations

import sys
from pathlib import Path

from core.config import Settings, load_settings
from core.frontdoor.runtime import (
    FrontDoorRuntime,
    embedded_settings,
    front_door_asgi,
    started_local_workers,
)
from core.wire.asgi import bind_socket, serve
from core.wire.logs import configure_logging

__all__ = ["resolve_settings", "run_serve"]

DEFAULT_WORKERS = 2


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
) -> int:
    configure_logging()
    settings = resolve_settings(config, workers)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    grpc_port = settings.server.grpc_port if grpc_port is None else grpc_port
    if grpc_port is not None:
        try:
            from core.wire.grpcserver import serve_grpc  # grpcio: only when gRPC is asked for
        except ImportError as e:
            print(f"gpufan serve: gRPC needs gpufan[grpc] ({e})", file=sys.stderr)
            return 2
    sock = bind_socket(host, port)  # bind first: a taken port fails before workers start
    print(f"gpufan serve: starting {settings.local_workers.count} local worker(s) ...", flush=True)
    with started_local_workers(settings.local_workers) as local:
        runtime = FrontDoorRuntime(
            settings,
            settings.targets + local.targets,
            local_endpoints=local.endpoints,
            local_token=local.token,
        )
        bound = sock.getsockname()[1]
        names = ", ".join(t.name for t in runtime.targets)
        announce = f"gpufan front door listening on http://{host}:{bound} (targets: {names})"
        app = front_door_asgi(runtime)
        if grpc_port is None:
            serve(app, sock, announce=announce)
            return 0
        server = settings.server
        edge = serve_grpc(app, lambda: runtime.front_door, host=host, port=grpc_port,
                          token=runtime.server_token,
                          max_message_bytes=int(server.max_body_mb * 1024 * 1024))  # fmt: skip
        serve(app, sock, announce=lambda: f"{announce}, grpc://{edge.address}")
    return 0
