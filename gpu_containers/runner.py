"""One onnxruntime session per model version, and what it tells OIP clients about its tensors.

The CUDA execution provider is asked for first whenever this onnxruntime build has it, so the same
code runs in the GPU image and on a laptop; the provider that actually won is recorded because
onnxruntime silently falls back to CPU when CUDA cannot initialise, and the router must know.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.errors import ConfigError
from core.wire.modelconfig import ModelConfig, WarmupSample
from core.wire.tensors import dtype_of
from gpu_containers.binding import DeviceBuffers, bindable
from gpu_containers.providers import SessionPlan, plan_session

__all__ = ["ModelRunner", "TensorSpec", "session_plan"]

# onnxruntime's NodeArg.type strings -> OIP datatypes (ONNX TensorProto element types).
_OIP_OF_ORT = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint64)": "UINT64",
    "tensor(uint32)": "UINT32",
    "tensor(uint16)": "UINT16",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output: OIP datatype and shape with dynamic dimensions as -1."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def _spec(arg: ort.NodeArg, where: str) -> TensorSpec:
    try:
        datatype = _OIP_OF_ORT[arg.type]
    except KeyError:
        raise ConfigError(
            f"{where}: tensor {arg.name!r} has type {arg.type}, which the Open Inference "
            f"Protocol cannot carry"
        ) from None
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def _warmup_array(
    datatype: str, dims: tuple[int, ...], rng: np.random.Generator | None
) -> np.ndarray:
    if datatype == "BYTES":
        return np.full(dims, "", dtype=object)
    dtype = dtype_of(datatype)
    if rng is None:
        return np.zeros(dims, dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(dims).astype(dtype)
    return rng.integers(0, 2, size=dims).astype(dtype)  # small ints are valid as most indices


def session_plan(config: ModelConfig, path: Path, intra_op_threads: int) -> SessionPlan:
    """The session for one model version on this onnxruntime build (``providers.plan_session``);
    TensorRT's caches go in ``.trt_cache`` beside the model."""
    return plan_session(
        config, ort.get_available_providers(), cache_dir=path.parent / ".trt_cache",
        intra_op_threads=intra_op_threads,
    )  # fmt: skip


# With CUDA graphs onnxruntime runs a shape normally before it captures it: a few warm-up runs per
# shape leave the capture to the warm-up, not to the first user request.
_GRAPH_WARMUP_RUNS = 3


def _session(path: Path, opts: ort.SessionOptions, plan: SessionPlan) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=opts,
            providers=[(name, dict(options)) for name, options in plan.providers],
        )
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ConfigError(f"{path}: onnxruntime cannot load the model: {e}") from e


class ModelRunner:
    """A loaded model version; ``run`` is synchronous and meant for one dedicated thread.

    onnxruntime releases the GIL inside ``InferenceSession.run``, so running it in a thread keeps
    the event loop free to decode the next requests while a batch computes.
    """

    def __init__(
        self,
        path: Path,
        *,
        plan: SessionPlan | None = None,
        intra_op_threads: int = 1,
        io_binding: bool | None = None,
    ) -> None:
        if plan is None:  # no config.pbtxt: CUDA first when this build has it, CPU always
            plan = session_plan(ModelConfig(), path, intra_op_threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = plan.intra_op_threads
        opts.inter_op_num_threads = plan.inter_op_threads
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, plan.graph_level)
        if plan.parallel:
            opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        if plan.mem_arena is not None:
            opts.enable_cpu_mem_arena = plan.mem_arena
        if plan.mem_pattern is not None:
            opts.enable_mem_pattern = plan.mem_pattern
        # Spinning intra-op threads busy-wait for work and steal the cores the HTTP server and the
        # other workers share (../shared/reference/perf-anchors.md): park them instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        for name, options in plan.providers:
            if name == "TensorrtExecutionProvider":
                for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
                    Path(options[key]).mkdir(parents=True, exist_ok=True)
        if plan.cuda_graphs and io_binding is False:
            plan = plan.without_cuda_graphs("they replay over IOBinding buffers, turned off")
        try:
            self._session = _session(path, opts, plan)
        except ConfigError as e:
            if not plan.cuda_graphs:
                raise
            # e.g. nodes the CUDA EP leaves to the CPU, or control flow: no graph can hold them
            plan = plan.without_cuda_graphs(f"onnxruntime refused them ({e.__cause__})")
            self._session = _session(path, opts, plan)
        if plan.cuda_graphs and not bindable(self._session):
            plan = plan.without_cuda_graphs("an input or output is not a numeric tensor")
            self._session = _session(path, opts, plan)
        self.path = path
        self.provider: str = self._session.get_providers()[0]
        self.requested = plan.requested
        notes = list(plan.notes)
        if self.provider != plan.requested[0]:  # onnxruntime falls back without raising
            notes.append(
                f"onnxruntime could not start {plan.requested[0]}: runs on {self.provider}"
            )
        self.notes = tuple(notes)
        self.inputs = tuple(_spec(a, str(path)) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a, str(path)) for a in self._session.get_outputs())
        # IOBinding over preallocated device buffers: by default on the CUDA EP, where a plain
        # run allocates device memory every call; on the CPU it only adds a copy.
        on_gpu = self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        wanted = on_gpu if io_binding is None else io_binding
        self.cuda_graphs = plan.cuda_graphs and on_gpu
        device = "cuda" if on_gpu else "cpu"
        self.buffers = (
            DeviceBuffers(self._session, device, cuda_graphs=self.cuda_graphs)
            if wanted and bindable(self._session)  # CUDA graphs: on_gpu, io_binding not False
            else None
        )

    def warm_up(
        self, batch: int = 1, sample: WarmupSample | None = None, *, batched: bool = True
    ) -> float:
        """Run once before serving; seconds. Without a ``sample`` (Triton's ``model_warmup``):
        zeros, every dynamic dimension ``batch`` (the batch axis) or 1.

        The first run of a session at a shape allocates its arena and (on a GPU) builds kernels
        or engines, or captures a CUDA graph: done before the worker reports ready, no user
        request pays for it.
        """
        feeds: dict[str, np.ndarray] = {}
        if sample is not None:
            rng = np.random.default_rng(0)
            for name, spec in sample.inputs.items():
                dims = (sample.batch_size, *spec.dims) if batched else spec.dims
                feeds[name] = _warmup_array(spec.datatype, dims, rng if spec.random else None)
        else:
            for s in self.inputs:
                dims = tuple(
                    d if d >= 0 else (batch if i == 0 else 1) for i, d in enumerate(s.shape)
                )
                feeds[s.name] = _warmup_array(s.datatype, dims, None)
        started = time.perf_counter()
        for _ in range(_GRAPH_WARMUP_RUNS if self.cuda_graphs else 1):
            self.run(feeds, ())
        return time.perf_counter() - started

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run the session; ``output_names`` empty means every output."""
        names = list(output_names) or list(self.output_names)
        if self.buffers is not None:
            return self.buffers.run(inputs, names)
        results = self._session.run(names, dict(inputs))
        return dict(zip(names, results, strict=True))
