"""From a model's ``config.pbtxt`` and what this onnxruntime build offers, the session to create.

Pure: no session is made here. The accelerator ladder is Triton's ONNX Runtime backend's:
TensorRT (``optimization.execution_accelerators.gpu_execution_accelerator { name: "tensorrt" }``)
first, the CUDA EP under it (and alone when TensorRT is not asked for), OpenVINO for a
``cpu_execution_accelerator``, the CPU EP always last. A rung this build lacks is skipped and the
skip is written in ``notes`` (the worker logs them and puts them in model metadata and
``/metrics``), never silently. Option names and values follow the backend's documentation: its
``precision_mode`` becomes TensorRT EP's ``trt_fp16_enable``/``trt_int8_enable``, its
``cudnn_conv_algo_search`` 0/1/2 the CUDA EP's EXHAUSTIVE/HEURISTIC/DEFAULT, and so on.

TensorRT's engine and timing caches go on disk beside the model unless the config names a path,
so a restarted worker does not rebuild its engines. ``optimization.cuda.graphs`` asks the CUDA
(and TensorRT) EP to capture CUDA graphs, replayed over the worker's IOBinding buffers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from core.errors import ConfigError
from core.wire.modelconfig import ModelConfig

__all__ = ["SessionPlan", "plan_session"]

TENSORRT, CUDA, OPENVINO, CPU = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)
_CONV_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}
_ARENA = {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"}
_CUDA_KEYS = ("gpu_mem_limit", "do_copy_in_default_stream", "cudnn_conv_use_max_workspace")
_TRT_RENAMED = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
}
# The provider options that capture CUDA graphs (onnxruntime's CUDA and TensorRT EP docs)
_CUDA_GRAPHS = {CUDA: {"enable_cuda_graph": "1"}, TENSORRT: {"trt_cuda_graph_enable": "True"}}
_GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}


@dataclass(frozen=True)
class SessionPlan:
    """The providers to ask for, best first, with their options; and the session options."""

    providers: tuple[tuple[str, Mapping[str, str]], ...]
    notes: tuple[str, ...]
    intra_op_threads: int  # 0: onnxruntime's default (every core)
    inter_op_threads: int
    parallel: bool  # execution_mode 1
    graph_level: str  # an ort.GraphOptimizationLevel member's name
    mem_arena: bool | None = None  # None: onnxruntime's default
    mem_pattern: bool | None = None

    @property
    def requested(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.providers)

    @property
    def cuda_graphs(self) -> bool:
        """Whether the CUDA EP is asked to capture and replay CUDA graphs."""
        return any(o.get("enable_cuda_graph") == "1" for n, o in self.providers if n == CUDA)

    def without_cuda_graphs(self, why: str) -> SessionPlan:
        """This plan with CUDA graphs off, saying why (a session that cannot capture them)."""
        off = {k for options in _CUDA_GRAPHS.values() for k in options}
        providers = tuple((n, {k: v for k, v in o.items() if k not in off})
                          for n, o in self.providers)  # fmt: skip
        note = f"optimization.cuda.graphs asked for; {why}: not enabled"
        return replace(self, providers=providers, notes=(*self.notes, note))


def _flag(value: str, key: str) -> bool:
    if value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise ConfigError(f"parameter {key}: expected 0/1 or true/false, got {value!r}")


def _count(params: Mapping[str, str], key: str, default: int) -> int:
    if key not in params:
        return default
    try:
        value = int(params[key])
    except ValueError:
        raise ConfigError(f"parameter {key}: expected an integer, got {params[key]!r}") from None
    if value < 0:
        raise ConfigError(f"parameter {key}: must be >= 0, got {value}")
    return value


def _tensorrt_options(params: Mapping[str, str], cache: Path) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in params.items():
        if key == "precision_mode":
            mode = value.upper()
            if mode not in ("FP32", "FP16", "INT8"):
                raise ConfigError(f"tensorrt precision_mode: FP32, FP16 or INT8, got {value!r}")
            if mode == "FP16":
                options["trt_fp16_enable"] = "True"
            elif mode == "INT8":
                options["trt_int8_enable"] = "True"
        elif key in _TRT_RENAMED:
            options[_TRT_RENAMED[key]] = value
        elif key.startswith("trt_"):
            options[key] = value
        else:
            raise ConfigError(f"tensorrt accelerator: unknown parameter {key!r}")
    options.setdefault("trt_engine_cache_enable", "True")
    options.setdefault("trt_engine_cache_path", str(cache))
    options.setdefault("trt_timing_cache_enable", "True")
    options.setdefault("trt_timing_cache_path", str(cache))
    return options


def _cuda_options(params: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    options = {k: params[k] for k in _CUDA_KEYS if k in params}
    if "cudnn_conv_algo_search" in params:
        value = params["cudnn_conv_algo_search"]
        if value not in _CONV_SEARCH:
            raise ConfigError(f"parameter cudnn_conv_algo_search: 0, 1 or 2, got {value!r}")
        options["cudnn_conv_algo_search"] = _CONV_SEARCH[value]
    if "arena_extend_strategy" in params:
        value = params["arena_extend_strategy"]
        if value not in _ARENA:
            raise ConfigError(f"parameter arena_extend_strategy: 0 or 1, got {value!r}")
        options["arena_extend_strategy"] = _ARENA[value]
    return {**options, **extra}  # a "cuda" accelerator's own parameters win


def plan_session(
    config: ModelConfig, available: Sequence[str], *, cache_dir: Path, intra_op_threads: int = 1
) -> SessionPlan:
    """The session for ``config`` on a build offering ``available`` providers.

    ``intra_op_threads`` (the worker's flag) applies unless the config's
    ``intra_op_thread_count`` says otherwise.

    Raises:
        ConfigError: an accelerator or parameter the backend's documentation does not define.
    """
    params = config.parameters
    notes: list[str] = []
    providers: list[tuple[str, Mapping[str, str]]] = []
    cuda_extra: dict[str, str] = {}
    wants_gpu = config.instance_kind != "KIND_CPU"
    gpu_below = "CUDA" if CUDA in available else "CPU"
    for accelerator in config.gpu_accelerators:
        if accelerator.name == "tensorrt":
            if not wants_gpu:
                notes.append("tensorrt asked for on a KIND_CPU instance group: not used")
            elif TENSORRT in available:
                providers.append((TENSORRT, _tensorrt_options(accelerator.parameters, cache_dir)))
            else:
                notes.append(
                    f"tensorrt asked for; this onnxruntime build has no {TENSORRT}: "
                    f"falls back to {gpu_below}"
                )
        elif accelerator.name == "cuda":
            cuda_extra.update(accelerator.parameters)
        else:
            raise ConfigError(f"gpu_execution_accelerator {accelerator.name!r}: tensorrt or cuda")
    if wants_gpu and CUDA in available:
        providers.append((CUDA, _cuda_options(params, cuda_extra)))
    elif config.instance_kind == "KIND_GPU":
        notes.append(f"KIND_GPU asked for; this onnxruntime build has no {CUDA}: runs on CPU")
    if config.cuda_graphs:  # replayed over the IOBinding buffers (gpu_containers.binding)
        if any(name == CUDA for name, _ in providers):
            providers = [(n, {**o, **_CUDA_GRAPHS.get(n, {})}) for n, o in providers]
        else:
            notes.append(f"optimization.cuda.graphs asked for; no {CUDA}: not enabled")
    for accelerator in config.cpu_accelerators:
        if accelerator.name != "openvino":
            raise ConfigError(f"cpu_execution_accelerator {accelerator.name!r}: only openvino")
        if OPENVINO in available:
            providers.append((OPENVINO, dict(accelerator.parameters)))
        else:
            notes.append(f"openvino asked for; this onnxruntime build has no {OPENVINO}: CPU EP")
    providers.append((CPU, {}))
    return SessionPlan(
        providers=tuple(providers),
        notes=tuple(notes),
        intra_op_threads=_count(params, "intra_op_thread_count", intra_op_threads),
        inter_op_threads=_count(params, "inter_op_thread_count", 1),
        parallel=_count(params, "execution_mode", 0) == 1,
        graph_level=_GRAPH_LEVELS.get(config.graph_level or 0, "ORT_ENABLE_ALL"),
        mem_arena=_flag(params["enable_mem_arena"], "enable_mem_arena")
        if "enable_mem_arena" in params
        else None,
        mem_pattern=_flag(params["enable_mem_pattern"], "enable_mem_pattern")
        if "enable_mem_pattern" in params
        else None,
    )
