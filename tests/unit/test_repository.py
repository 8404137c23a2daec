"""Model repository: the config.pbtxt subset, version selection, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError, NotFound
from core.wire.modelconfig import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    BatchingConfig,
    parse_pbtxt,
)
from gpu_containers.repository import Repository

TRITON_CONFIG = """\
name: "digits"            # Triton writes these keys too; only the batching ones are read
platform: "onnxruntime_onnx"
max_batch_size: 128
input [
  { name: "input", data_type: TYPE_FP32, dims: [ 64 ] }
]
instance_group [ { count: 2, kind: KIND_GPU } ]
dynamic_batching {
  preferred_batch_size: [ 16, 32 ]
  max_queue_delay_microseconds: 250
}
optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
"""


def _model(root: Path, name: str, versions: list[str], config: str | None = None) -> None:
    for v in versions:
        (root / name / v).mkdir(parents=True)
        (root / name / v / "model.onnx").write_bytes(b"not parsed by the repository")
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)


def test_parse_pbtxt_reads_nested_blocks_lists_and_comments() -> None:
    doc = parse_pbtxt(TRITON_CONFIG)

    assert doc["max_batch_size"] == [128]
    assert doc["name"] == ["digits"]
    assert doc["input"][0][0] == {"name": ["input"], "data_type": ["TYPE_FP32"], "dims": [[64]]}
    assert doc["dynamic_batching"][0]["preferred_batch_size"] == [[16, 32]]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("max_batch_size: 8\ndynamic_batching {\n  max_queue_delay_microseconds: 5\n", 3, "'}'"),
        ("max_batch_size: 8\nmax_batch_size 9\n", 2, "':'"),
        ("max_batch_size: 8\n\n  : 4\n", 3, "field name"),
        ("a: 1\nb: @\n", 2, "unexpected character"),
        ("dims: [1, 2\n", 1, "end of file"),
    ],
)
def test_malformed_pbtxt_names_file_and_line(text: str, line: int, what: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_pbtxt(text, source="m/config.pbtxt")

    assert f"m/config.pbtxt:{line}:" in str(e.value)
    assert what in str(e.value)


def test_config_sets_batching_and_unknown_keys_are_ignored(tmp_path: Path) -> None:
    _model(tmp_path, "digits", ["1"], TRITON_CONFIG)

    entry = Repository.load(tmp_path).entry("digits")

    assert entry.batching == BatchingConfig(128, 250, (16, 32), True)


def test_defaults_apply_without_a_config(tmp_path: Path) -> None:
    _model(tmp_path, "mlp", ["1"])

    batching = Repository.load(tmp_path).entry("mlp").batching

    assert batching.max_batch_size == DEFAULT_MAX_BATCH_SIZE == 64
    assert batching.max_queue_delay_us == DEFAULT_MAX_QUEUE_DELAY_US == 500
    assert batching.dynamic_batching


def test_cli_overrides_beat_the_config(tmp_path: Path) -> None:
    _model(tmp_path, "digits", ["1"], TRITON_CONFIG)

    repo = Repository.load(tmp_path, max_batch_size=8, max_queue_delay_us=0, dynamic_batching=False)

    assert repo.entry("digits").batching == BatchingConfig(8, 0, (16, 32), False)


def test_malformed_config_fails_the_load_with_its_path(tmp_path: Path) -> None:
    _model(tmp_path, "bad", ["1"], "max_batch_size: {\n")

    with pytest.raises(ConfigError, match=r"bad/config.pbtxt:1"):
        Repository.load(tmp_path)


def test_negative_batch_size_is_rejected(tmp_path: Path) -> None:
    _model(tmp_path, "bad", ["1"], "max_batch_size: -4\n")

    with pytest.raises(ConfigError, match="max_batch_size must be >= 0"):
        Repository.load(tmp_path)


def test_highest_numeric_version_is_served_by_default(tmp_path: Path) -> None:
    _model(tmp_path, "m", ["2", "10", "1"])
    (tmp_path / "m" / "notes").mkdir()  # non-numeric directories are not versions
    (tmp_path / "m" / "7").mkdir()  # a version directory without model.onnx is skipped

    entry = Repository.load(tmp_path).entry("m")

    assert list(entry.versions) == ["1", "2", "10"]
    assert entry.resolve(None) == "10"
    assert entry.resolve("2") == "2"
    assert entry.versions["2"] == tmp_path / "m" / "2" / "model.onnx"


def test_unknown_version_lists_the_available_ones(tmp_path: Path) -> None:
    _model(tmp_path, "m", ["1", "3"])

    with pytest.raises(NotFound, match=r"no version '2'; available: 1, 3"):
        Repository.load(tmp_path).entry("m").resolve("2")


def test_unknown_model_lists_the_available_ones(tmp_path: Path) -> None:
    _model(tmp_path, "a", ["1"])
    _model(tmp_path, "b", ["1"])

    with pytest.raises(NotFound, match=r"unknown model 'c'; available: a, b"):
        Repository.load(tmp_path).entry("c")


def test_missing_or_empty_repository_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Repository.load(tmp_path / "nope")
    (tmp_path / "empty_model" / "1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds no model"):
        Repository.load(tmp_path)
