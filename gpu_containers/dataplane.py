"""The GPU worker's data plane: OIP routes -> validation -> dynamic batcher -> onnxruntime.

``WorkerDataPlane`` implements ``core.wire.oip.DataPlane``. Every request is checked against the
model's signature before it reaches the batcher, so a client's mistake is a 400/404 that says
what was wrong and never a 5xx from deep inside onnxruntime — and never poisons a batch shared
with other callers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

import core
from core.errors import BadRequest, ClientError, Overloaded, first_few
from core.wire.modelconfig import WarmupSample
from core.wire.profiletable import PROFILE_FILE, parse_profile_csv
from core.wire.tensors import InferRequest, InferResponse, Tensor, dtype_of
from gpu_containers.batcher import Batcher, BatchObserver, BatchStats
from gpu_containers.repository import ModelEntry, Repository
from gpu_containers.runner import ModelRunner, TensorSpec, session_plan
from gpu_containers.telemetry import WorkerMetrics

__all__ = ["WorkerDataPlane"]

_PLATFORM = "onnxruntime_onnx"


log = logging.getLogger(__name__)


def _preferred(
    entry: ModelEntry, version: str, runner: ModelRunner, accelerator: str | None
) -> tuple[tuple[int, ...], str]:
    """The config's preferred batch sizes; else the one the model's profile table measured
    fastest per item on this worker's accelerator (``gpufan profile``); else none."""
    cfg = entry.batching
    if cfg.preferred_batch_sizes:
        return cfg.preferred_batch_sizes, "config.pbtxt"
    table = entry.versions[version].parent.parent / PROFILE_FILE
    acc = accelerator or ("cpu" if runner.provider == "CPUExecutionProvider" else None)
    if acc is None or not table.is_file():
        return (), "none"
    measured = parse_profile_csv(table.read_text(), str(table), entry.variant(version)).get(acc)
    if measured is None:
        return (), "none"
    best = measured.fastest_batch(max(cfg.max_batch_size, 1))
    log.info("%s:%s: batches cut at %d, fastest per item in %s", entry.name, version, best, table)
    return (best,), measured.source


def _warm_up(m: _Loaded) -> tuple[int, ...]:
    """Every instance, before the worker is ready (the plane is built before the server binds):
    the config's ``model_warmup`` samples, else zeros at batch 1 and each preferred size. A model
    whose warm-up inputs it refuses is logged and still served (real inputs may work). Returns
    the batch sizes run on the first instance (model metadata reports them)."""
    samples = m.entry.config.warmup
    preferred = m.preferred if m.batched else ()
    runs: list[tuple[int, WarmupSample | None]] = [
        (s.batch_size, s) for s in samples for _ in range(s.count)
    ]
    runs = runs or [(b, None) for b in sorted({1, *preferred})]
    for runner in m.runners:
        for batch, sample in runs:
            try:
                seconds = runner.warm_up(batch, sample, batched=m.batched)
            except Exception as e:  # onnxruntime's own error types
                log.warning("warm-up of %s:%s at batch %d failed: %s", m.entry.name, m.version,
                            batch, e)  # fmt: skip
                return ()
            log.info("warmed up %s:%s at batch %d in %.1f ms", m.entry.name, m.version, batch,
                     seconds * 1e3)  # fmt: skip
    return tuple(batch for batch, _ in runs)


@dataclass(slots=True)
class _Loaded:
    entry: ModelEntry
    version: str
    runners: tuple[ModelRunner, ...]  # one per instance (instance_group count)
    batcher: Batcher
    batched: bool  # inputs carry a leading batch axis (Triton max_batch_size > 0)
    preferred: tuple[int, ...] = ()  # the batch sizes batches are cut at
    preferred_source: str = "none"  # config.pbtxt, or the profile table it was measured in
    warmed: tuple[int, ...] = ()  # batch sizes of the warm-up runs

    @property
    def runner(self) -> ModelRunner:
        """The first instance: every instance has the same model, signature and providers."""
        return self.runners[0]

    @property
    def max_batch_size(self) -> int:
        return self.entry.batching.max_batch_size if self.batched else 0


def _has_batch_axis(runner: ModelRunner) -> bool:
    return all(s.shape and s.shape[0] == -1 for s in (*runner.inputs, *runner.outputs))


class WorkerDataPlane:
    """Serve every version of every model in a repository from this process.

    Sessions load in the constructor (slow, synchronous, before the port opens); batchers start
    on the server's event loop at the first request and stop in ``close``.
    """

    def __init__(
        self,
        repository: Repository,
        *,
        intra_op_threads: int = 1,
        metrics: WorkerMetrics | None = None,
        accelerator: str | None = None,
    ) -> None:
        self.repository = repository
        self.telemetry = metrics or WorkerMetrics()
        self._models: dict[tuple[str, str], _Loaded] = {}
        for entry in repository:
            for version, path in entry.versions.items():
                cfg = entry.batching
                plan = session_plan(entry.config, path, intra_op_threads)
                runners = tuple(
                    ModelRunner(path, plan=plan) for _ in range(entry.config.instance_count)
                )
                for note in runners[0].notes:  # every accelerator that fell back, said aloud
                    log.warning("%s:%s: %s", entry.name, version, note)
                batched = cfg.max_batch_size > 0 and _has_batch_axis(runners[0])
                preferred, source = _preferred(entry, version, runners[0], accelerator)
                batcher = Batcher(
                    [r.run for r in runners],
                    max_batch_size=cfg.max_batch_size if batched else 0,
                    max_queue_delay_us=cfg.max_queue_delay_us,
                    enabled=cfg.dynamic_batching,
                    preferred_batch_sizes=preferred,
                    max_queue=cfg.queue_limit(len(runners)),
                    name=f"{entry.name}-{version}",
                    observer=self._observer(entry.name),
                )
                loaded = _Loaded(entry, version, runners, batcher, batched, preferred, source)
                self._models[entry.name, version] = loaded
                self.telemetry.set_provider(
                    entry.name, version, runners[0].provider, runners[0].requested[0],
                    len(runners[0].notes),
                )  # fmt: skip
                loaded.warmed = _warm_up(loaded)

    def _observer(self, model: str) -> BatchObserver:
        def observe(items: int, waits: Sequence[float]) -> None:
            self.telemetry.observe_batch(model, items, waits)

        return observe

    def _get(self, model: str, version: str | None) -> _Loaded:
        entry = self.repository.entry(model)
        return self._models[model, entry.resolve(version)]

    async def close(self) -> None:
        """Fail queued requests and release the executor threads (server shutdown)."""
        for loaded in self._models.values():
            await loaded.batcher.close()

    # ------------------------------------------------------------------------ health, metadata

    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return bool(self._models)

    async def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "gpufan-worker",
            "version": core.__version__,
            "extensions": ["binary_tensor_data", "model_configuration"],
        }

    async def model_ready(self, model: str, version: str | None) -> bool:
        self._get(model, version)
        return True

    async def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        m = self._get(model, version)
        return {
            "name": model,
            "versions": list(m.entry.versions),
            "platform": _PLATFORM,
            "inputs": [_meta(s) for s in m.runner.inputs],
            "outputs": [_meta(s) for s in m.runner.outputs],
            "parameters": {
                "execution_provider": m.runner.provider,
                "requested_providers": ",".join(m.runner.requested),
                "fallbacks": "; ".join(m.runner.notes),
                "instances": len(m.runners),
                "io_binding": m.runner.buffers is not None,
                "cuda_graphs": m.runner.cuda_graphs,
                "warmup_batches": ",".join(map(str, m.warmed)),
                "preferred_batch_size": ",".join(map(str, m.preferred)),
                "preferred_batch_size_source": m.preferred_source,
                "variant": m.entry.variant(m.version),
            },
        }

    async def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        m = self._get(model, version)
        skip = 1 if m.batched else 0
        config: dict[str, Any] = {
            "name": model,
            "platform": _PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": m.max_batch_size,
            "input": [_config_tensor(s, skip) for s in m.runner.inputs],
            "output": [_config_tensor(s, skip) for s in m.runner.outputs],
            "parameters": {
                "execution_provider": {"string_value": m.runner.provider},
                "requested_providers": {"string_value": ",".join(m.runner.requested)},
                "fallbacks": {"string_value": "; ".join(m.runner.notes)},
                "variant": {"string_value": m.entry.variant(m.version)},
            },
            "instance_group": [{"count": len(m.runners), "kind": m.entry.config.instance_kind}],
        }
        if m.batched and m.entry.batching.dynamic_batching:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": m.entry.batching.max_queue_delay_us,
                "preferred_batch_size": list(m.preferred),
                "default_queue_policy": {
                    "max_queue_size": m.entry.batching.queue_limit(len(m.runners)) or 0
                },
            }
        return config

    def metrics(self) -> tuple[bytes, str]:
        depth = dict.fromkeys(self.repository.models, 0)
        for (model, _), m in self._models.items():
            depth[model] += m.batcher.stats().queue_depth
        for model, n in depth.items():
            self.telemetry.queue_depth.labels(model).set(n)
        return self.telemetry.exposition()

    # ------------------------------------------------------------------------------- inference

    def admit(self, model: str) -> AbstractAsyncContextManager[None]:
        """Shed before decoding when every version of ``model`` has a full batcher queue."""
        loaded = [m for (name, _), m in self._models.items() if name == model]
        if loaded and all(m.batcher.full for m in loaded):
            self.telemetry.observe_request(model, "shed", 0.0)
            loaded[0].batcher.refuse()
        return contextlib.nullcontext()

    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        started = time.perf_counter()
        outcome = "error"
        try:
            m = self._get(model, version)
            inputs = _validate_inputs(m, request)
            names = _requested_outputs(m, request)
            results = await m.batcher.submit(inputs, names)
            outcome = "ok"
        except ClientError:
            outcome = "client_error"
            raise
        except Overloaded:
            outcome = "shed"
            raise
        finally:
            label = model if model in self.repository.models else "_unknown"
            self.telemetry.observe_request(label, outcome, time.perf_counter() - started)
        return InferResponse(
            model_name=model,
            model_version=m.version,
            id=request.id,
            outputs=tuple(Tensor(n, results[n]) for n in names or m.runner.output_names),
            parameters=self._telemetry_params(m.batcher.stats()),
        )

    def _telemetry_params(self, stats: BatchStats) -> dict[str, Any]:
        """The keys the router reads from every response (core.backends.WorkerTelemetry)."""
        gpu = self.telemetry.gpu.sample()
        return {
            "queue_depth": stats.queue_depth,
            "utilization": round(gpu.utilization if gpu else stats.busy_fraction, 4),
            "items_per_s": round(stats.items_per_s, 2),
        }


def _meta(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _config_tensor(spec: TensorSpec, skip: int) -> dict[str, Any]:
    dims = list(spec.shape[skip:])
    out: dict[str, Any] = {"name": spec.name, "data_type": f"TYPE_{_config_type(spec.datatype)}"}
    if dims:
        out["dims"] = dims
    else:  # Triton cannot declare empty dims: a [N] tensor is dims [1] reshaped to []
        out["dims"] = [1]
        out["reshape"] = {"shape": []}
    return out


def _config_type(datatype: str) -> str:
    return "STRING" if datatype == "BYTES" else datatype


def _validate_inputs(m: _Loaded, request: InferRequest) -> dict[str, np.ndarray]:
    specs = {s.name: s for s in m.runner.inputs}
    given = {t.name: t for t in request.inputs}
    missing = [n for n in specs if n not in given]
    extra = [n for n in given if n not in specs]
    if missing or extra:
        parts = [f"missing input(s) {first_few(missing)}"] if missing else []
        parts += [f"unexpected input(s) {first_few(extra)}"] if extra else []
        raise BadRequest(f"{'; '.join(parts)}; model {m.entry.name!r} expects {list(specs)}")
    arrays: dict[str, np.ndarray] = {}
    batch: int | None = None
    for name, spec in specs.items():
        t = given[name]
        if t.datatype != spec.datatype:
            raise BadRequest(f"input {name!r} expects {spec.datatype}, got {t.datatype}")
        shape = t.data.shape
        if len(shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise BadRequest(
                f"input {name!r} expects shape {list(spec.shape)} (-1 = any), got {list(shape)}"
            )
        if m.batched:
            if shape[0] == 0:
                raise BadRequest(f"input {name!r} has a batch of zero items")
            if batch is not None and shape[0] != batch:
                raise BadRequest(
                    f"inputs disagree on the batch size: {name!r} has {shape[0]}, others {batch}"
                )
            batch = shape[0]
        arrays[name] = _to_ort(name, t.data, spec.datatype)
    return arrays


def _to_ort(name: str, data: np.ndarray, datatype: str) -> np.ndarray:
    """onnxruntime wants ONNX strings as Python ``str`` (it would ``str()`` bytes to "b'..'")."""
    if datatype != "BYTES":
        return data.astype(dtype_of(datatype), copy=False)
    try:
        flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in data.ravel()]
    except UnicodeDecodeError:
        raise BadRequest(f"input {name!r}: ONNX string tensors must be UTF-8") from None
    return np.array(flat, dtype=object).reshape(data.shape)


def _requested_outputs(m: _Loaded, request: InferRequest) -> tuple[str, ...]:
    if request.outputs is None:
        return ()
    valid = m.runner.output_names
    names = tuple(o.name for o in request.outputs)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise BadRequest(
            f"unknown output(s) {first_few(unknown)}; model {m.entry.name!r} has {list(valid)}"
        )
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:
        raise BadRequest(f"output(s) requested more than once: {first_few(twice)}")
    return names
