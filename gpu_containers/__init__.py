"""The GPU worker: ONNX Runtime (CUDA provider, CPU fallback) behind the Open Inference Protocol.

``python -m gpu_containers.worker --model-repo DIR`` (or ``gpufan worker``) serves a Triton-style
model repository; ``DEMO_REPOSITORY`` is the bundled one (an MLP on scikit-learn's digits), and
``DEMO_TEST_SET`` its held-out ``x``/``y`` arrays, written by ``scripts/make_demo_models.py``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_REPOSITORY", "DEMO_TEST_SET"]

DEMO_REPOSITORY = Path(__file__).resolve().parent / "demo_models"
DEMO_TEST_SET = DEMO_REPOSITORY / "digits_test.npz"
