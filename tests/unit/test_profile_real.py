"""The graph profile on real pretrained models, against an independent FLOP count.

GIVEN the ONNX graphs nudenet and rapidocr-onnxruntime ship (a YOLOv8 detector, PP-OCRv4
det/rec/cls) and all-MiniLM-L6-v2 as both torch exporters write it, at real input shapes,
WHEN ``profile_model`` counts them and ``bench.realmodels.independent_flops`` counts the same
contractions from the shapes onnxruntime produces running them,
THEN the two agree within [0.8, 1.25], input bytes are the real ones, and a profile that could
not count every op says so.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import onnx
import pytest

from bench.realmodels import REAL_MODELS, RealModel, profile_ratio
from core.planning.graphcost import profile_model


@pytest.mark.parametrize("real", REAL_MODELS, ids=lambda m: m.name)
def test_profile_agrees_with_an_independent_count(real: RealModel) -> None:
    path = real.path()
    if path is None:
        pytest.skip(f"{real.package} is not installed (the dev extra installs it)")
    ratio, p = profile_ratio(real, path)
    assert 0.8 <= ratio <= 1.25, ratio
    graph = onnx.load(str(path), load_external_data=False).graph
    dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
              for i in graph.input}  # fmt: skip
    itemsize = {name: np.dtype(dtype).itemsize for name, dtype in dtypes.items()}
    per_item = sum(math.prod(shape[1:]) * itemsize[name] for name, shape in real.shapes.items())
    assert p.input_bytes_per_item == per_item
    assert (p.confidence == "incomplete") == bool(p.unprofiled_ops)


def test_the_legacy_exporters_transformer_is_counted_whole() -> None:
    """The TorchScript export hides every MatMul's shape behind Shape/Gather/Slice arithmetic
    that ONNX's own inference gives up on; onnxruntime's symbolic inference follows it."""
    (real,) = [m for m in REAL_MODELS if "TorchScript" in m.name]
    path = real.path()
    assert path is not None
    _, p = profile_ratio(real, path)
    assert p.confidence == "exact"
    assert p.flops_by_op["MatMul"] > 2.5e9  # ~21 MFLOP a token, 128 tokens, per sentence
    assert p.param_bytes > 90e6  # 22.7 M float32 weights


def test_without_onnxruntime_the_lost_shapes_are_named_not_guessed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The front door's set has no onnxruntime: ONNX's inference alone loses the MatMuls, and
    the profile says which ops it could not count."""
    monkeypatch.setitem(sys.modules, "onnxruntime.tools.symbolic_shape_infer", None)
    (real,) = [m for m in REAL_MODELS if "TorchScript" in m.name]
    path = real.path()
    assert path is not None
    p = profile_model(path, input_shapes=real.shapes)
    assert p.confidence == "incomplete" and "MatMul" in p.unprofiled_ops
    assert any("MatMul" in note for note in p.notes)
