"""The accelerator ladder: a Triton config and this build's providers -> the session to create.

GIVEN configs asking for TensorRT, CUDA options, OpenVINO, KIND_CPU, threads and graph levels,
WHEN ``plan_session`` meets builds with and without those providers,
THEN the providers come best first with the backend's options translated as its documentation
defines them, every rung the build lacks is named in a note (never skipped silently), and a key
the backend does not define is refused by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.wire.modelconfig import Accelerator, ModelConfig
from gpu_containers.providers import CPU, CUDA, OPENVINO, TENSORRT, plan_session

GPU_BUILD = (TENSORRT, CUDA, CPU)
CPU_BUILD = (CPU,)
TRT = Accelerator("tensorrt", {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"})


def test_tensorrt_fp16_first_with_caches_on_disk_then_cuda_then_cpu(tmp_path: Path) -> None:
    config = ModelConfig(
        gpu_accelerators=(TRT,),
        parameters={"cudnn_conv_algo_search": "1", "gpu_mem_limit": "4294967296",
                    "arena_extend_strategy": "1"},
    )  # fmt: skip
    plan = plan_session(config, GPU_BUILD, cache_dir=tmp_path)
    assert plan.requested == (TENSORRT, CUDA, CPU)
    trt, cuda, _ = (dict(options) for _, options in plan.providers)
    assert trt["trt_fp16_enable"] == "True" and "trt_int8_enable" not in trt
    assert trt["trt_max_workspace_size"] == "1073741824"
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path) == trt["trt_timing_cache_path"]
    assert cuda == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "gpu_mem_limit": "4294967296",
        "arena_extend_strategy": "kSameAsRequested",
    }
    assert plan.notes == ()


def test_a_cpu_build_falls_down_the_ladder_and_says_so(tmp_path: Path) -> None:
    config = ModelConfig(gpu_accelerators=(TRT,), instance_kind="KIND_GPU", cuda_graphs=True)
    plan = plan_session(config, CPU_BUILD, cache_dir=tmp_path)
    assert plan.requested == (CPU,)
    assert any("tensorrt asked for" in n and "falls back to CPU" in n for n in plan.notes)
    assert any("KIND_GPU asked for" in n for n in plan.notes)
    assert any("cuda.graphs" in n and "not enabled" in n for n in plan.notes)


def test_tensorrt_missing_but_cuda_present_falls_back_to_cuda(tmp_path: Path) -> None:
    plan = plan_session(ModelConfig(gpu_accelerators=(TRT,)), (CUDA, CPU), cache_dir=tmp_path)
    assert plan.requested == (CUDA, CPU)
    assert plan.notes == (f"tensorrt asked for; this onnxruntime build has no {TENSORRT}: "
                          "falls back to CUDA",)  # fmt: skip


def test_kind_cpu_stays_on_the_cpu_and_openvino_is_used_where_present(tmp_path: Path) -> None:
    config = ModelConfig(instance_kind="KIND_CPU", cpu_accelerators=(Accelerator("openvino"),))
    assert plan_session(config, (*GPU_BUILD, OPENVINO), cache_dir=tmp_path).requested == (
        OPENVINO, CPU,
    )  # fmt: skip
    without = plan_session(config, GPU_BUILD, cache_dir=tmp_path)
    assert without.requested == (CPU,) and "openvino asked for" in without.notes[0]


def test_threads_execution_mode_graph_level_and_memory_options(tmp_path: Path) -> None:
    config = ModelConfig(
        graph_level=-1,
        parameters={"intra_op_thread_count": "4", "inter_op_thread_count": "2",
                    "execution_mode": "1", "enable_mem_arena": "0", "enable_mem_pattern": "true"},
    )  # fmt: skip
    plan = plan_session(config, CPU_BUILD, cache_dir=tmp_path, intra_op_threads=1)
    assert (plan.intra_op_threads, plan.inter_op_threads, plan.parallel) == (4, 2, True)
    assert plan.graph_level == "ORT_ENABLE_BASIC"
    assert (plan.mem_arena, plan.mem_pattern) == (False, True)
    default = plan_session(ModelConfig(), CPU_BUILD, cache_dir=tmp_path, intra_op_threads=3)
    assert (default.intra_op_threads, default.graph_level) == (3, "ORT_ENABLE_ALL")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ModelConfig(gpu_accelerators=(Accelerator("tensorrt", {"precision_mode": "FP8"}),)),
         "precision_mode: FP32, FP16 or INT8"),
        (ModelConfig(gpu_accelerators=(Accelerator("tensorrt", {"speed": "max"}),)),
         "unknown parameter 'speed'"),
        (ModelConfig(gpu_accelerators=(Accelerator("tvm"),)), "gpu_execution_accelerator 'tvm'"),
        (ModelConfig(parameters={"cudnn_conv_algo_search": "3"}), "cudnn_conv_algo_search"),
        (ModelConfig(parameters={"intra_op_thread_count": "many"}), "expected an integer"),
    ],
)  # fmt: skip
def test_what_the_backend_does_not_define_is_refused(
    config: ModelConfig, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_session(config, GPU_BUILD, cache_dir=tmp_path)


def test_cuda_graphs_are_asked_of_the_cuda_and_tensorrt_eps_and_can_be_taken_back(
    tmp_path: Path,
) -> None:
    config = ModelConfig(gpu_accelerators=(TRT,), cuda_graphs=True)
    plan = plan_session(config, GPU_BUILD, cache_dir=tmp_path)
    trt, cuda, cpu = (dict(options) for _, options in plan.providers)
    assert cuda["enable_cuda_graph"] == "1" and trt["trt_cuda_graph_enable"] == "True"
    assert cpu == {} and plan.cuda_graphs and plan.notes == ()
    off = plan.without_cuda_graphs("an input or output is not a numeric tensor")
    assert not off.cuda_graphs and off.requested == plan.requested
    assert all("cuda_graph" not in k for _, options in off.providers for k in options)
    assert off.notes == ("optimization.cuda.graphs asked for; an input or output is not a "
                         "numeric tensor: not enabled",)  # fmt: skip
    assert not plan_session(ModelConfig(), GPU_BUILD, cache_dir=tmp_path).cuda_graphs
