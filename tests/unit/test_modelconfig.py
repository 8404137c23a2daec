"""Triton's config.pbtxt as gpufan honours it: every block the worker acts on, and clear errors.

GIVEN a config written as Triton's documentation writes one (instance_group, dynamic_batching with
preferred sizes, optimization with graph level, CUDA graphs and a TensorRT accelerator, the ONNX
Runtime backend's parameters, model_warmup),
WHEN ``read_config`` reads it,
THEN each value lands where the worker reads it, and a malformed value names the file and key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.wire.modelconfig import (
    Accelerator,
    BatchingConfig,
    ModelConfig,
    WarmupInput,
    WarmupSample,
    read_batching,
    read_config,
)

TRITON = """\
name: "cnn"
platform: "onnxruntime_onnx"
max_batch_size: 32
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2000
}
optimization {
  graph : { level : 1 }
  cuda { graphs: true }
  execution_accelerators {
    gpu_execution_accelerator : [ {
      name : "tensorrt"
      parameters { key: "precision_mode" value: "FP16" }
      parameters { key: "trt_engine_cache_enable" value: "1" }
    } ]
  }
}
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }
model_warmup [
  {
    name: "b4"
    batch_size: 4
    count: 2
    inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 3, 64, 64 ] random_data: true } }
  }
]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    return path


def test_a_triton_config_is_read_whole(tmp_path: Path) -> None:
    config = read_config(_write(tmp_path, TRITON))
    assert config == ModelConfig(
        batching=BatchingConfig(32, 2000, (4, 8), True),
        instance_count=2,
        instance_kind="KIND_CPU",
        gpu_accelerators=(
            Accelerator("tensorrt", {"precision_mode": "FP16", "trt_engine_cache_enable": "1"}),
        ),
        cuda_graphs=True,
        graph_level=1,
        parameters={"intra_op_thread_count": "1", "cudnn_conv_algo_search": "1"},
        warmup=(WarmupSample("b4", 4, {"input": WarmupInput("FP32", (3, 64, 64), True)}, 2),),
    )
    assert read_batching(tmp_path / "config.pbtxt") == config.batching


def test_no_config_means_the_defaults(tmp_path: Path) -> None:
    assert read_config(tmp_path / "config.pbtxt") == ModelConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("instance_group [ { count: 1 kind: KIND_TPU } ]", "kind must be one of KIND_AUTO"),
        ("optimization { graph { level: 3 } }", "optimization.graph.level must be -1, 1 or 2"),
        ("optimization { cuda { graphs: maybe } }", "graphs must be true or false"),
        ('parameters { key: "k" }', "parameters need a key and a string value"),
        ('model_warmup [ { name: "w" inputs { key: "x" value: { data_type: TYPE_FP32 '
         'input_data_file: "x.bin" } } } ]', "input_data_file is not supported"),
    ],
)  # fmt: skip
def test_a_bad_value_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as e:
        read_config(path)
    assert str(path) in str(e.value)


def test_queue_policy_bounds_the_queue_and_zero_is_tritons_unbounded(tmp_path: Path) -> None:
    text = "max_batch_size: 8\ndynamic_batching { default_queue_policy { max_queue_size: 5 } }"
    assert read_config(_write(tmp_path, text)).batching.queue_limit(2) == 5
    unbounded = "dynamic_batching { default_queue_policy { max_queue_size: 0 } }"
    assert read_config(_write(tmp_path, unbounded)).batching.queue_limit(2) is None
    # No policy: four rounds of full batches per instance, never unbounded.
    assert read_config(_write(tmp_path, "max_batch_size: 8")).batching.queue_limit(2) == 64
    assert read_config(_write(tmp_path, "max_batch_size: 0")).batching.queue_limit(1) == 4
