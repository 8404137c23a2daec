#!/bin/sh
# The worker image's Python layer: gpu_containers/Dockerfile runs it in the image's venv, and
# .ci/worker-image runs the same file in a venv on a machine without Docker, so what CI checks is
# what the image installs.
#
#   sh gpu_containers/python-layer.sh SOURCE_DIR
#
# `gpu` brings onnxruntime-gpu (its range is kept to the base image's CUDA major) and nothing
# brings the CPU `onnxruntime`, which shares its import name: the base dependencies hold no
# inference runtime. `aws` is for `gpufan worker --batch` (S3 staging), `grpc` for `--grpc-port`.
set -eu
src="${1:?usage: python-layer.sh SOURCE_DIR}"
pip install "${src}[gpu,aws,grpc]"
python - <<'PY'
from importlib.metadata import PackageNotFoundError, version

import onnxruntime

try:
    cpu = version("onnxruntime")
except PackageNotFoundError:
    cpu = None
assert cpu is None, f"the CPU onnxruntime {cpu} is installed beside onnxruntime-gpu"
providers = onnxruntime.get_available_providers()
assert "CUDAExecutionProvider" in providers, providers
print("onnxruntime-gpu", version("onnxruntime-gpu"), providers)
PY
