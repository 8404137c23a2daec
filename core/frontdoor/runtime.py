"""Assemble the front door from settings: HTTP client, backends, dispatcher, data plane, handler.

Every front door — ``gpufan serve``, the demo, the cloud functions — builds its handler here, once
per process, so they cannot drift apart. Environment variables are read here and only here, by the
names the settings give (``token_env``), never at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client import generate_latest

from core.autoscale.history import HistoryStore, open_history
from core.autoscale.settings import of
from core.backends import Backend, BackendContext, backend_class
from core.config import LocalWorkers, ModelSpec, Settings, Target, settings_from_dict
from core.dispatch.dispatcher import Dispatcher
from core.errors import ConfigError
from core.frontdoor.recording import HistoryHook, history_location
from core.frontdoor.service import FrontDoor, ServedHook
from core.frontdoor.workers import WorkerPool
from core.planning.costmodel import CostModel, ModelFacts
from core.planning.estimate import Workload
from core.planning.limits import Origin
from core.planning.profile import ModelProfile
from core.pricing import load_snapshot
from core.pricing.live import live_cache, priced_keys
from core.wire.asgi import AsgiApp
from core.wire.edge import EdgeLimits
from core.wire.fanin import MetricsFanIn
from core.wire.h1 import H1Pool
from core.wire.modelconfig import CONFIG_FILE, read_batching
from core.wire.oip import OipHandler
from core.wire.profiletable import PROFILE_FILE, parse_profile_tables
from core.wire.session import make_session

if TYPE_CHECKING:
    from core.autoscale.loop import Autoscaler

log = logging.getLogger(__name__)

__all__ = [
    "FrontDoorRuntime",
    "LocalWorkersHandle",
    "embedded_settings",
    "front_door_asgi",
    "local_targets",
    "mirrored",
    "model_facts",
    "started_local_workers",
    "unbatched_models",
]


def _model_file(repository: Path, name: str) -> Path | None:
    versions = [p for p in (repository / name).glob("*/model.onnx") if p.parent.name.isdigit()]
    return max(versions, key=lambda p: int(p.parent.name), default=None)


def _local(spec: ModelSpec) -> Path | None:
    """The model's repository as a directory (a URL must have been mirrored: ``mirrored``)."""
    if isinstance(spec.repository, str):
        raise ConfigError(f"models[{spec.name}].repository {spec.repository} is not mirrored")
    return spec.repository


def mirrored(models: Sequence[ModelSpec], cache: Path | None = None) -> tuple[ModelSpec, ...]:
    """``models`` with each object-store repository (s3://, gs://, az://) replaced by its local
    mirror (``gpu_containers.sources``: fetched once per object version, each SDK's standard
    credentials). Blocking: run at start-up.

    Raises:
        ConfigError: a repository cannot be read or holds nothing.
    """
    out = []
    for spec in models:
        if isinstance(spec.repository, str):
            from gpu_containers.sources import open_source

            source = open_source(spec.repository, cache)
            with ThreadPoolExecutor(1) as pool:  # its own loop: the caller's may be running
                path = pool.submit(asyncio.run, source.sync()).result()
            spec = spec.model_copy(update={"repository": path})
        out.append(spec)
    return tuple(out)


def model_facts(
    spec: ModelSpec, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> ModelFacts:
    """Profile the model's latest version in its repository (or take ``flops_per_item``), at
    ``input_shapes`` (a request's) where given; a ``profile.csv`` beside it (``gpufan
    profile``) gives its measured speed per accelerator. A graph with dynamic dims is kept, so
    the cost model prices each request at its own shapes (``CostModel.at_shapes``).

    Raises:
        ConfigError: no model file in the repository, or shapes for a model without one.
    """
    profile = None
    reprofile = None
    repository = _local(spec)
    if input_shapes and repository is None:
        raise ConfigError(
            f"input shapes for {spec.name!r} need its graph: set models[{spec.name}].repository"
        )
    if repository is not None:
        path = _model_file(repository, spec.name)
        if path is None:
            raise ConfigError(
                f"models[{spec.name}].repository: no {spec.name}/<version>/model.onnx "
                f"under {repository}"
            )
        from core.planning.graphcost import profile_model, read_model  # onnx: only here

        graph = read_model(path)
        profile = profile_model(graph, input_shapes=input_shapes)
        if profile.assumed_unit_dims and spec.flops_per_item is None:  # priced per request

            def reprofile(shapes: Mapping[str, Sequence[int]]) -> ModelProfile:
                return profile_model(graph, input_shapes=shapes)

    if spec.flops_per_item is not None:
        base = profile or ModelProfile(spec.flops_per_item, 0, 0, 0, 0)
        profile = ModelProfile(
            spec.flops_per_item, base.param_bytes, base.input_bytes_per_item,
            base.output_bytes_per_item, base.peak_activation_bytes_per_item,
        )  # fmt: skip
    workload = Workload(
        spec.name,
        profile.input_bytes_per_item if profile else 0.0,
        profile.output_bytes_per_item if profile else 0.0,
    )
    measured = {}
    table = repository / spec.name / PROFILE_FILE if repository else None
    if table is not None and table.is_file():  # gpufan profile's sweep, shipped with the model
        measured = parse_profile_tables(table.read_text(), str(table))
    return ModelFacts(spec.name, profile, workload, measured, reprofile)


def unbatched_models(models: Sequence[ModelSpec]) -> frozenset[str]:
    """The models with no batch axis, whose requests run whole: ``max_batch_size: 0`` in
    gpufan.yaml, or (when it is unset) in the repository's ``config.pbtxt``, as Triton reads it.

    Raises:
        ConfigError: a config.pbtxt is malformed.
    """
    unbatched = set()
    for spec in models:
        size = spec.max_batch_size
        repository = _local(spec)
        if size is None and repository is not None:
            size = read_batching(repository / spec.name / CONFIG_FILE).max_batch_size
        if size == 0:
            unbatched.add(spec.name)
    return frozenset(unbatched)


def embedded_settings(workers: int = 2, port: int = 8000) -> Settings:
    """The embedded default: ``workers`` local workers serving the bundled demo model."""
    from gpu_containers import DEMO_REPOSITORY

    return settings_from_dict(
        {
            "models": [{"name": "digits", "repository": str(DEMO_REPOSITORY)}],
            "local_workers": {"count": workers, "repository": str(DEMO_REPOSITORY)},
            "server": {"port": port},
        },
        source="embedded default",
    )


def local_targets(workers: LocalWorkers, accelerator: str) -> tuple[Target, ...]:
    """One target per local worker: owned hardware, so free at the margin."""
    return tuple(
        Target(
            name=f"local-{i}",
            backend="local",
            cloud="local",
            region="local",
            accelerator=accelerator,
            pricing="owned",
            usd_per_hour=0.0,
            max_concurrency=workers.max_concurrency,
            variant=workers.variant,
        )
        for i in range(workers.count)
    )


def build_cost_model(
    settings: Settings,
    targets: tuple[Target, ...],
    input_shapes: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
) -> CostModel:
    """The cost model over ``targets`` with the bundled price snapshot; ``input_shapes``, model
    -> input -> dims, profiles those models at a request's shapes (``gpufan plan --input``)."""
    shapes = input_shapes or {}
    models = [model_facts(m, shapes.get(m.name)) for m in mirrored(settings.models)]
    origin = Origin.parse(settings.server.origin)
    return CostModel(models, targets, settings.policy, origin, load_snapshot())


def _resolve_tokens(targets: tuple[Target, ...], env: Mapping[str, str]) -> dict[str, str | None]:
    tokens: dict[str, str | None] = {}
    for t in targets:
        if t.token_env is None:
            tokens[t.name] = None
        elif t.token_env in env:
            tokens[t.name] = env[t.token_env]
        else:
            raise ConfigError(
                f"targets[{t.name}].token_env: environment variable {t.token_env} is not set"
            )
    return tokens


class FrontDoorRuntime:
    """Async context manager owning everything behind one front door.

    >>> async with FrontDoorRuntime(settings, targets) as rt:
    ...     response = await rt.handler(request)
    """

    def __init__(
        self,
        settings: Settings,
        targets: tuple[Target, ...],
        *,
        local_endpoints: Mapping[str, str] | None = None,
        local_token: str | None = None,
        env: Mapping[str, str] | None = None,
        history: HistoryStore | None = None,
        hooks: Sequence[ServedHook] = (),
    ) -> None:
        env = os.environ if env is None else env
        if not targets:
            raise ConfigError("no targets: configure 'targets' or start local workers")
        self.settings = settings
        self.targets = targets
        self._tokens = _resolve_tokens(targets, env)
        token_env = settings.server.token_env
        if token_env and token_env not in env:
            raise ConfigError(f"server.token_env: environment variable {token_env} is not set")
        self._server_token = env[token_env] if token_env else None
        self._local_endpoints = dict(local_endpoints or {})
        self._local_token = local_token
        self._session: aiohttp.ClientSession | None = None
        self._h1 = H1Pool()  # the one-shard relay's connections (core.dispatch.relay)
        self.backends: dict[str, Backend] = {}
        self._refresh: asyncio.Task[None] | None = None
        self.history = history  # the autoscaler's; None and none configured: nothing recorded
        self._history_location = None if history else history_location(settings, env)
        self.autoscaler: Autoscaler | None = None  # built with the front door, given a history
        self._hooks = tuple(hooks)  # the caller's; the history's is added on start
        self._history_hook: HistoryHook | None = None

    @property
    def server_token(self) -> str | None:
        """The bearer token clients must send (``server.token_env``'s value), or None."""
        return self._server_token

    async def __aenter__(self) -> FrontDoorRuntime:
        # Everything that can refuse the configuration runs before anything needs closing.
        classes = {name: backend_class(name) for name in sorted({t.backend for t in self.targets})}
        models = mirrored(self.settings.models)  # object-store repositories, fetched once
        self.settings = self.settings.model_copy(update={"models": models})
        self.cost_model = build_cost_model(self.settings, self.targets)
        total_slots = sum(t.max_concurrency for t in self.targets)
        self._session = make_session(max_connections=max(total_slots * 2, 16))
        try:
            ctx = BackendContext(
                self._session, self._tokens, self._local_endpoints, self._local_token, self._h1
            )
            for name, cls in classes.items():
                self.backends[name] = cls.create(ctx)
            if self.settings.pricing.live:
                await self._start_live_prices()
            if self._history_location:
                interval_s = of(self.settings).interval_s
                self.history = open_history(self._history_location, interval_s=interval_s)
            self.dispatcher = Dispatcher(
                self.targets,
                self.backends,
                self.settings.policy,
                placer=self.cost_model.placer,
                unbatched=unbatched_models(self.settings.models),
            )
            hooks = self._hooks
            if self.history is not None:  # count requests into the history; offer the autoscaler
                from core.autoscale.history import Recorder
                from core.autoscale.loop import Autoscaler

                self._history_hook = HistoryHook(Recorder(self.history))
                hooks = (*hooks, self._history_hook)
                self.autoscaler = Autoscaler(
                    [m.name for m in self.settings.models], self.targets, self.backends,
                    self.cost_model, self.history, settings=of(self.settings),
                    policy=self.settings.policy,
                )  # fmt: skip
            self.front_door = FrontDoor(
                self.settings.models, self.targets, self.backends, self.dispatcher, self.cost_model,
                hooks=hooks,
            )  # fmt: skip
            self.handler = OipHandler(self.front_door, token=self._server_token)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start_live_prices(self) -> None:
        """Price from the clouds' APIs now, then again every TTL; failures keep the snapshot."""
        assert self._session is not None
        ttl_s = self.settings.pricing.ttl_s
        cache = live_cache(self.targets, self.cost_model.book, self._session, ttl_s)
        keys = priced_keys(self.targets)
        self.cost_model.with_book(await cache.book(keys))

        async def refresh() -> None:
            while True:
                await asyncio.sleep(ttl_s)
                try:
                    self.cost_model.with_book(await cache.book(keys))
                except Exception:  # never let a price refresh take the front door down
                    log.exception("price refresh failed; keeping the previous prices")

        self._refresh = asyncio.create_task(refresh())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        if self._history_hook is not None:
            await self._history_hook.aclose()
        if self._history_location and self.history is not None:  # ours to close
            self.history.close()
        for backend in self.backends.values():
            await backend.aclose()
        self._h1.close()
        if self._session is not None:
            await self._session.close()


@dataclass(frozen=True)
class LocalWorkersHandle:
    """Local workers started for a front door: their targets, endpoints and shared token."""

    targets: tuple[Target, ...]
    endpoints: Mapping[str, str]
    token: str | None
    pool: WorkerPool | None


@contextmanager
def started_local_workers(workers: LocalWorkers) -> Iterator[LocalWorkersHandle]:
    """Start ``workers.count`` worker processes (none: an empty handle); stop them on exit.

    Each pool gets a fresh random bearer token, so a local worker answers only its front door.

    Raises:
        ConfigError: workers are asked for and ONNX Runtime is not installed.
    """
    if workers.count == 0:
        yield LocalWorkersHandle((), {}, None, None)
        return
    from gpu_containers import DEMO_REPOSITORY, require_onnxruntime

    require_onnxruntime("local_workers")
    token = secrets.token_urlsafe(24)
    args: list[str] = []
    if workers.max_batch_size is not None:
        args += ["--max-batch-size", str(workers.max_batch_size)]
    if workers.max_queue_delay_us is not None:
        args += ["--max-queue-delay-us", str(workers.max_queue_delay_us)]
    if workers.variant != "fp32":
        args += ["--variant", workers.variant]
    with WorkerPool(
        workers.repository or DEMO_REPOSITORY,
        workers.count,
        args,
        intra_op_threads=workers.intra_op_threads,
        env={"GPUFAN_WORKER_TOKEN": token},
    ) as pool:
        targets = local_targets(workers, _local_accelerator())
        endpoints = {t.name: ep for t, ep in zip(targets, pool.endpoints, strict=True)}
        yield LocalWorkersHandle(targets, endpoints, token, pool)


def _local_accelerator() -> str:
    import onnxruntime

    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def front_door_asgi(runtime: FrontDoorRuntime, metrics_folder: Path | None = None) -> AsgiApp:
    """The runtime as an ASGI app: built on lifespan start-up, closed on shutdown. With
    ``metrics_folder`` (processes sharing a port) its ``/metrics`` sums theirs
    (``core.wire.fanin``)."""

    async def startup() -> None:
        await runtime.__aenter__()

    async def shutdown() -> None:
        await runtime.__aexit__(None, None, None)

    server = runtime.settings.server
    app = AsgiApp(
        lambda request: runtime.handler(request),
        max_body_bytes=int(server.max_body_mb * 1024 * 1024),
        memory_budget=int(server.memory_budget_mb * 1024 * 1024),
        edge=EdgeLimits(
            header_timeout_s=server.header_timeout_s,
            body_timeout_s=server.body_timeout_s,
            keep_alive_s=server.keep_alive_s,
            max_connections=server.max_connections,
        ),
        startup=startup,
        shutdown=shutdown,
    )
    if metrics_folder is not None:

        def exposition() -> bytes:
            own, _ = runtime.front_door.metrics()
            return own + generate_latest(app.edge_metrics.registry)

        app.fan_in = MetricsFanIn(metrics_folder, exposition)
        app.startup.append(app.fan_in.start)
        app.shutdown.insert(0, app.fan_in.close)
    return app
