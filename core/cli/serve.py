"""``gpufan serve``: local workers (if any) plus the front door, until interrupted."""

from __future__ import annotations

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
    config: Path | None, *, host: str | None, port: int | None, workers: int | None
) -> int:
    configure_logging()
    settings = resolve_settings(config, workers)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
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
        serve(
            front_door_asgi(runtime),
            sock,
            announce=f"gpufan front door listening on http://{host}:{bound} (targets: {names})",
        )
    return 0
