"""IOBinding over preallocated buffers, on the CPU device here (the CUDA path is the same code).

GIVEN the bench CNN in a runner with IOBinding forced on,
WHEN it runs the same shape several times and then another shape,
THEN results equal a plain run, one buffer set serves each shape (no new one per call), an earlier
result is never overwritten by a later call, and a model with string tensors runs unbound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
