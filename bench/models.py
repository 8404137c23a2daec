"""The benchmark models, built from seeded numpy weights with the ``onnx.helper`` API.

They match the models of ``../shared/reference/perf-anchors.md`` so measured ratios compare
with the anchors there:

- ``mlp``: float32 ``[N, 784]`` -> Gemm 784->512 -> Relu -> Gemm 512->512 -> Relu -> Gemm 512->10,
  about 1.34 MFLOP per item: small enough that per-request overhead dominates.
- ``cnn``: float32 ``[N, 3, 64, 64]`` -> a small ResNet (3x3 conv stem, residual blocks, global
  average pool, Gemm to 10), about 139 MFLOP per item: compute dominates, as on a real GPU model.

FLOPs count a multiply-add as two, the convention of the anchors. Both models have a dynamic batch
axis and are written Triton-style as ``{repo}/{name}/1/model.onnx`` (no config.pbtxt: the worker's
defaults apply).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["MODELS", "build_cnn", "build_mlp", "build_repo"]

# Opset 17 loads on every onnxruntime this project supports (1.18+).
_OPSET = 17
_IR_VERSION = 8


class _Graph:
    """Accumulates nodes, seeded initialisers and a FLOP count while a model is assembled."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.flops = 0
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def weight(self, shape: tuple[int, ...], fan_in: int, scale: float = 1.0) -> str:
        # He initialisation keeps activations O(1) through the Relu stack, so outputs stay finite.
        w = self.rng.standard_normal(shape).astype(np.float32) * np.float32(
            scale * np.sqrt(2.0 / fan_in)
        )
        return self._init(w)

    def zeros(self, n: int) -> str:
        return self._init(np.zeros(n, dtype=np.float32))

    def _init(self, arr: np.ndarray) -> str:
        name = self.name("w")
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def gemm(self, x: str, n_in: int, n_out: int, out: str | None = None) -> str:
        self.flops += 2 * n_in * n_out
        w, b = self.weight((n_out, n_in), n_in), self.zeros(n_out)
        return self.node("Gemm", [x, w, b], out, transB=1)

    def conv(
        self, x: str, c_in: int, c_out: int, k: int, stride: int, hw_out: int, scale: float = 1.0
    ) -> str:
        self.flops += 2 * c_in * c_out * k * k * hw_out * hw_out
        w = self.weight((c_out, c_in, k, k), c_in * k * k, scale)
        pad = k // 2
        return self.node(
            "Conv", [x, w, self.zeros(c_out)],
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
        )  # fmt: skip

    def save(self, path: Path, name: str, x: onnx.ValueInfoProto, y: onnx.ValueInfoProto) -> Path:
        graph = helper.make_graph(self.nodes, name, [x], [y], initializer=self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="gpufan-bench"
        )
        model.ir_version = _IR_VERSION
        model.doc_string = f"{name}: {self.flops / 1e6:.2f} MFLOP/item (bench/models.py)"
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        return path


def build_mlp(path: str | Path, seed: int = 0) -> Path:
    """Write the ``mlp`` model (float32 [N,784] -> logits [N,10], ~1.34 MFLOP/item) to ``path``."""
    g = _Graph(seed)
    h = g.node("Relu", [g.gemm("input", 784, 512)])
    h = g.node("Relu", [g.gemm(h, 512, 512)])
    g.gemm(h, 512, 10, out="logits")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    return g.save(Path(path), "mlp", x, y)


def _block(g: _Graph, x: str, c_in: int, c_out: int, stride: int, hw_out: int) -> str:
    """A ResNet basic block; the residual branch's last conv is scaled down so sums stay O(1)."""
    h = g.node("Relu", [g.conv(x, c_in, c_out, 3, stride, hw_out)])
    h = g.conv(h, c_out, c_out, 3, 1, hw_out, scale=0.5)
    skip = x if stride == 1 and c_in == c_out else g.conv(x, c_in, c_out, 1, stride, hw_out)
    return g.node("Relu", [g.node("Add", [h, skip])])


def build_cnn(path: str | Path, seed: int = 0) -> Path:
    """Write the ``cnn`` model (float32 [N,3,64,64] -> logits [N,10], ~139 MFLOP/item)."""
    g = _Graph(seed)
    h = g.node("Relu", [g.conv("input", 3, 32, 3, 2, 32)])  # stem: 64x64 -> 32x32
    h = _block(g, h, 32, 32, 1, 32)
    h = _block(g, h, 32, 32, 1, 32)
    h = _block(g, h, 32, 61, 2, 16)  # 32x32 -> 16x16; 61 channels tunes the total to ~139 MFLOP
    h = _block(g, h, 61, 61, 1, 16)
    h = g.node("Flatten", [g.node("GlobalAveragePool", [h])], axis=1)
    g.gemm(h, 61, 10, out="logits")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    return g.save(Path(path), "cnn", x, y)


MODELS: dict[str, Callable[[Path], Path]] = {"mlp": build_mlp, "cnn": build_cnn}


def build_repo(root: str | Path, names: Iterable[str] = ("mlp", "cnn")) -> Path:
    """Write ``{root}/{name}/1/model.onnx`` for each named model; unknown names list the valid."""
    root = Path(root)
    for name in names:
        try:
            builder = MODELS[name]
        except KeyError:
            valid = ", ".join(MODELS)
            raise ValueError(f"unknown benchmark model {name!r}; valid: {valid}") from None
        builder(root / name / "1" / "model.onnx")
    return root
