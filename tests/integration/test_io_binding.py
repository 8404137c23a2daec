"""IOBinding over preallocated buffers, on the CPU device here (the CUDA path is the same code).

GIVEN the bench CNN in a runner with IOBinding forced on,
WHEN it runs the same shape several times and then another shape,
THEN results equal a plain run, one buffer set serves each shape (no new one per call), an earlier
result is never overwritten by a later call, and a model with string tensors runs unbound; with
CUDA graphs each signature gets its own graph id, never reused, at most one per buffer set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from core.wire.modelconfig import ModelConfig
from gpu_containers.binding import DeviceBuffers
from gpu_containers.providers import CPU, CUDA, plan_session
from gpu_containers.runner import ModelRunner
from tests.integration.conftest import build_types_model


def test_bound_runs_equal_plain_runs_and_reuse_one_buffer_set_per_shape(bench_repo: Path) -> None:
    model = bench_repo / "cnn" / "1" / "model.onnx"
    bound, plain = ModelRunner(model, io_binding=True), ModelRunner(model, io_binding=False)
    assert bound.buffers is not None and plain.buffers is None
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((4, 3, 64, 64), dtype=np.float32) for _ in range(3)]
    first = bound.run({"input": xs[0]}, ())
    kept = {k: v.copy() for k, v in first.items()}
    for x in xs:
        got, want = bound.run({"input": x}, ()), plain.run({"input": x}, ())
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert bound.buffers.signatures == 1
    for name in kept:  # the caller's arrays are its own, not views of the reused buffers
        np.testing.assert_array_equal(first[name], kept[name])
    bound.run({"input": xs[0][:2]}, ())
    assert bound.buffers.signatures == 2


def test_string_tensors_run_unbound(tmp_path: Path) -> None:
    runner = ModelRunner(
        build_types_model(tmp_path / "types" / "1" / "model.onnx"), io_binding=True
    )
    assert runner.buffers is None


def test_cuda_graph_ids_one_per_signature_never_reused_and_bounded(bench_repo: Path) -> None:
    """The id bookkeeping runs on the CPU device too (its EP ignores ``gpu_graph_id``)."""
    model = bench_repo / "cnn" / "1" / "model.onnx"
    plain = ModelRunner(model, io_binding=False)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    buffers = DeviceBuffers(session, "cpu", max_signatures=2, cuda_graphs=True)
    rng = np.random.default_rng(7)
    for batch in (1, 2, 3, 1):  # 3 drops 1's set, so 1 comes back as a new signature
        x = rng.standard_normal((batch, 3, 64, 64), dtype=np.float32)
        got, want = buffers.run({"input": x}, ["logits"]), plain.run({"input": x}, ())
        np.testing.assert_array_equal(got["logits"], want["logits"])
    assert buffers.signatures == 2
    assert buffers.graph_ids == 2  # 1 and 2 got ids; 3 and the returning 1 run without a graph


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_cuda_graphs_asked_where_cuda_cannot_start_are_reported_off(bench_repo: Path) -> None:
    model = bench_repo / "cnn" / "1" / "model.onnx"
    plan = plan_session(ModelConfig(cuda_graphs=True), (CUDA, CPU), cache_dir=bench_repo)
    assert plan.cuda_graphs
    runner = ModelRunner(model, plan=plan)  # this build has no CUDA EP: onnxruntime falls back
    assert runner.provider == CPU and not runner.cuda_graphs
    assert any("could not start CUDAExecutionProvider" in n for n in runner.notes)
