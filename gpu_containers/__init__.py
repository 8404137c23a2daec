"""The GPU worker: ONNX Runtime (CUDA provider, CPU fallback) behind the Open Inference Protocol.

``python -m gpu_containers.worker --model-repo DIR`` (or ``gpufan worker``) serves a Triton-style
model repository; ``DEMO_REPOSITORY`` is the bundled one (an MLP on scikit-learn's digits), and
``DEMO_TEST_SET`` its held-out ``x``/``y`` arrays, written by ``scripts/make_demo_models.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from core.errors import ConfigError

__all__ = ["DEMO_REPOSITORY", "DEMO_TEST_SET", "require_onnxruntime"]

DEMO_REPOSITORY = Path(__file__).resolve().parent / "demo_models"
DEMO_TEST_SET = DEMO_REPOSITORY / "digits_test.npz"


def require_onnxruntime(what: str) -> None:
    """Fail with the install to run when ONNX Runtime is absent (the front door's set lacks it).

    Raises:
        ConfigError: ``onnxruntime`` cannot be imported here.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError(
            f"{what} runs models with ONNX Runtime, which is not installed here: "
            "pip install 'gpufan[cpu]' (or 'gpufan[gpu]' for CUDA)"
        )
