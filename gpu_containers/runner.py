"""One onnxruntime session per model version, and what it tells OIP clients about its tensors.

The CUDA execution provider is asked for first whenever this onnxruntime build has it, so the same
code runs in the GPU image and on a laptop; the provider that actually won is recorded because
onnxruntime silently falls back to CPU when CUDA cannot initialise, and the router must know.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.errors import ConfigError
from core.wire.tensors import dtype_of

__all__ = ["ModelRunner", "TensorSpec", "available_providers"]

# onnxruntime's NodeArg.type strings -> OIP datatypes (ONNX TensorProto element types).
_OIP_OF_ORT = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint64)": "UINT64",
    "tensor(uint32)": "UINT32",
    "tensor(uint16)": "UINT16",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output: OIP datatype and shape with dynamic dimensions as -1."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def available_providers() -> list[str]:
    """CUDA first when this onnxruntime build offers it, CPU always as the fallback."""
    offered = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in offered] or ["CPUExecutionProvider"]


def _spec(arg: ort.NodeArg, where: str) -> TensorSpec:
    try:
        datatype = _OIP_OF_ORT[arg.type]
    except KeyError:
        raise ConfigError(
            f"{where}: tensor {arg.name!r} has type {arg.type}, which the Open Inference "
            f"Protocol cannot carry"
        ) from None
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


class ModelRunner:
    """A loaded model version; ``run`` is synchronous and meant for one dedicated thread.

    onnxruntime releases the GIL inside ``InferenceSession.run``, so running it in a thread keeps
    the event loop free to decode the next requests while a batch computes.
    """

    def __init__(self, path: Path, *, intra_op_threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        # Spinning intra-op threads busy-wait for work and steal the cores the HTTP server and the
        # other workers share (../shared/reference/perf-anchors.md): park them instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=opts, providers=available_providers()
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConfigError(f"{path}: onnxruntime cannot load the model: {e}") from e
        self.path = path
        self.provider: str = self._session.get_providers()[0]
        self.inputs = tuple(_spec(a, str(path)) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a, str(path)) for a in self._session.get_outputs())

    def warm_up(self, batch: int = 1) -> float:
        """Run once on zeros, every dynamic dimension ``batch`` (the batch axis) or 1; seconds.

        The first run of a session at a shape allocates its arena and (on a GPU) builds kernels
        or engines: done before the worker reports ready, no user request pays for it.
        """
        feeds = {}
        for spec in self.inputs:
            dims = [d if d >= 0 else (batch if i == 0 else 1) for i, d in enumerate(spec.shape)]
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(dims, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(dims, dtype_of(spec.datatype))
        started = time.perf_counter()
        self.run(feeds, ())
        return time.perf_counter() - started

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run the session; ``output_names`` empty means every output."""
        names = list(output_names) or list(self.output_names)
        results = self._session.run(names, dict(inputs))
        return dict(zip(names, results, strict=True))
