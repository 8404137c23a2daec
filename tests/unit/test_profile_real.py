"""The graph profile on real pretrained models, against an independent FLOP count.

GIVEN the ONNX graphs nudenet and rapidocr-onnxruntime ship (a YOLOv8 detector, PP-OCRv4
det/rec/cls), at real input shapes,
WHEN ``profile_model`` counts them and ``bench.realmodels.independent_flops`` counts the same
contractions from the shapes onnxruntime produces running them,
THEN the two agree within [0.8, 1.25], input bytes are the real ones, and a profile that could
not count every op says so.
"""

from __future__ import annotations

import math

import pytest

from bench.realmodels import REAL_MODELS, RealModel, profile_ratio


@pytest.mark.parametrize("real", REAL_MODELS, ids=lambda m: m.name)
def test_profile_agrees_with_an_independent_count(real: RealModel) -> None:
    path = real.path()
    if path is None:
        pytest.skip(f"{real.package} is not installed (the dev extra installs it)")
    ratio, p = profile_ratio(real, path)
    assert 0.8 <= ratio <= 1.25, ratio
    (shape,) = real.shapes.values()
    assert p.input_bytes_per_item == math.prod(shape[1:]) * 4  # float32, per item
    assert (p.confidence == "incomplete") == bool(p.unprofiled_ops)
