"""Model cost from the ONNX graph alone: FLOPs and bytes per item (a ``ModelProfile``).

Pure: the graph is read, never run — no session, no clock. Scoring needs a model's cost before any
target has served it, so the only evidence is the graph and the shapes shape inference derives
(ONNX's own; onnxruntime's symbolic inference too where that leaves ops unshaped and onnxruntime
is installed).

Conventions, those of ``bench/models.py`` and the perf anchors:

- A multiply-add counts as two FLOPs (Conv, ConvTranspose, Gemm, MatMul, Einsum); a bias add, an
  activation or any other elementwise op counts one per output element — a small term next to the
  contractions, kept so that elementwise-only graphs do not profile as free.
- The batch axis is the first axis of every graph input whose first dim is dynamic (a symbol, -1 or
  unset). It is pinned to ``batch_axis_size`` and every total divided by it. A model whose inputs
  all have a fixed first dim is taken as one item (``batched`` is False): its cost does not scale
  with the request, so "per item" means "per call". Other symbolic dims (a sequence length, say) are
  evaluated at 1 and named in ``assumed_unit_dims`` so a report can say the figure is a lower bound.
- ``If`` counts its costlier branch, ``Loop`` its body times a constant trip count, ``Scan`` its
  body once per scan step; what that leaves uncertain is named in ``bounded`` (an upper bound) or,
  when not even that is known (a run-time trip count), in ``unprofiled_ops``.
- Ops whose cost is not modelled (custom domains, tree ensembles) count 0 and are named in
  ``unprofiled_ops``; data-movement ops (Reshape, Transpose, Cast, ZipMap, ...) cost 0 FLOPs by
  design and are not listed.
- Weights count in ``param_bytes`` whether stored as initialisers or as ``Constant`` nodes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from core.errors import ConfigError
from core.planning.profile import ModelProfile

__all__ = ["profile_model", "read_model"]

# A string element, or a value with no static size (a sequence or map, such as skl2onnx's ZipMap
# output, or a tensor whose shape inference could not fix): 64 bytes is a guess, sized for a short
# class label or one small dict per item. It only matters for transfer estimates of such models.
_GUESS_BYTES = 64
# Initialisers above this size travel to shape inference as typed inputs, not bytes: inference needs
# the values of small shape tensors (Reshape targets) only, and copying weights would cost memory.
_INLINE_INITIALIZER_BYTES = 1024

_ML = "ai.onnx.ml"

# FLOPs per output element. Normalisations and Softmax are "a few per element": BatchNormalization
# at inference is one multiply-add once folded; a layer/group/instance norm takes a mean (1), a
# centred square-sum (3) and a normalise, scale and shift (3); Softmax takes max, subtract, exp, sum
# and divide.
_ELEMENTWISE = (
    "Abs", "Add", "And", "BitShift", "Ceil", "Celu", "Clip", "Cos", "Div", "Elu", "Equal", "Erf",
    "Exp", "Floor", "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish", "IsInf",
    "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Mean", "Min", "Mish", "Mod", "Mul",
    "Neg", "Not", "Or", "PRelu", "Pow", "Reciprocal", "Relu", "Resize", "Round", "Selu", "Sigmoid",
    "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tanh", "ThresholdedRelu",
    "Upsample", "Where", "Xor",
)  # fmt: skip
_PER_OUTPUT_ELEMENT: dict[str, float] = dict.fromkeys(_ELEMENTWISE, 1.0) | {
    "BatchNormalization": 2.0,
    "GroupNormalization": 7.0,
    "InstanceNormalization": 7.0,
    "LayerNormalization": 7.0,
    "LogSoftmax": 5.0,
    "Softmax": 5.0,
}
# One FLOP per *input* element: reductions read everything and write little.
_PER_INPUT_ELEMENT = frozenset((
    "ArgMax", "ArgMin", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "ReduceL1",
    "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
))  # fmt: skip
# Data movement and metadata: memory traffic, no arithmetic.
_FREE = frozenset((
    "Cast", "CastLike", "Compress", "Concat", "Constant", "ConstantOfShape", "DepthToSpace",
    "Dropout", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND", "Identity",
    "NonZero", "OneHot", "Pad", "Range", "Reshape", "ScatterElements", "ScatterND", "Shape", "Size",
    "Slice", "SpaceToDepth", "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze",
    f"{_ML}:ArrayFeatureExtractor", f"{_ML}:CastMap", f"{_ML}:DictVectorizer",
    f"{_ML}:FeatureVectorizer", f"{_ML}:LabelEncoder", f"{_ML}:ZipMap",
))  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Value:
    """A value's static type: ``shape`` None when unknown; ``elem_type`` None when not a tensor."""

    shape: tuple[int, ...] | None
    elem_type: int | None

    @property
    def nbytes(self) -> float:
        if self.elem_type is None or self.shape is None:
            return _GUESS_BYTES
        return math.prod(self.shape) * _elem_bytes(self.elem_type)


_Vals = Sequence[_Value | None]  # a node's inputs or outputs; None where an optional one is absent


def read_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The graph at ``path``, its external weights left on disk (sizes are all a profile needs).

    Raises:
        ConfigError: the file cannot be read or is not an ONNX model.
    """
    try:
        return onnx.load(os.fspath(path), load_external_data=False)
    except (OSError, DecodeError) as e:
        raise ConfigError(f"cannot read ONNX model {os.fspath(path)}: {e}") from None


def profile_model(
    model: onnx.ModelProto | str | os.PathLike[str],
    batch_axis_size: int = 1,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> ModelProfile:
    """Profile a model (or the ``.onnx`` file at a path) per item of its batch axis.

    ``batch_axis_size`` is the batch the graph is evaluated at before dividing; costs are linear
    in it for ordinary models, so the default of 1 suffices unless a graph's cost is not.
    ``input_shapes`` pins named inputs to a request's real shapes (batch axis first): an image's
    height and width, a sequence length; a dimension neither pinned nor fixed is evaluated at 1
    and named in ``assumed_unit_dims``.

    Raises:
        ConfigError: the path cannot be read or is not an ONNX model, or ``input_shapes`` names
            an input the model lacks or gives it the wrong rank.
        ValueError: ``batch_axis_size`` is below 1.
    """
    if batch_axis_size < 1:
        raise ValueError(f"batch_axis_size must be at least 1, got {batch_axis_size}")
    if not isinstance(model, onnx.ModelProto):
        model = read_model(model)
    graph = model.graph
    static = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    skeleton = _skeleton(model)
    shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    if shapes:
        batch_axis_size = _pin_given(skeleton.graph, static, shapes)
    batched, assumed = _pin_batch(skeleton.graph, static, batch_axis_size)
    items = batch_axis_size if batched else 1
    values, counter = _counted(skeleton, items)
    io_bytes = [
        sum(values[v.name].nbytes for v in vs if v.name not in static)
        for vs in (graph.input, graph.output)
    ]
    return ModelProfile(
        flops_per_item=sum(counter.by_op.values()),
        param_bytes=sum(_initializer_bytes(t) for t in graph.initializer)
        + sum(_initializer_bytes(t) for t in _constant_tensors(graph)),
        input_bytes_per_item=round(io_bytes[0] / items),
        output_bytes_per_item=round(io_bytes[1] / items),
        peak_activation_bytes_per_item=round(_peak_live_bytes(graph, values, static) / items),
        flops_by_op=MappingProxyType(dict(sorted(counter.by_op.items()))),
        unprofiled_ops=tuple(sorted(counter.unprofiled)),
        bounded=tuple(sorted(counter.bounded)),
        assumed_unit_dims=tuple(sorted(assumed)),
        batched=batched,
    )


class _Counter:
    """FLOPs by op over a graph and, recursively, the bodies of its ``If``/``Loop``/``Scan``."""

    def __init__(self, constants: Mapping[str, np.ndarray]) -> None:
        self.constants = constants
        self.by_op: dict[str, float] = {}
        self.unprofiled: set[str] = set()
        self.bounded: set[str] = set()

    def count(self, graph: onnx.GraphProto, values: Mapping[str, _Value], items: int) -> None:
        for node in graph.node:
            key = (
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
            )
            if key in _FREE:
                continue
            if key in _CONTROL:
                self._control(key, node, values, items)
                continue
            ins = [values.get(n) if n else None for n in node.input]
            outs = [values.get(n) if n else None for n in node.output]
            flops = _flops(key, node, ins, outs)
            if math.isnan(flops):
                self.unprofiled.add(key)
            elif flops:
                self.by_op[key] = self.by_op.get(key, 0.0) + flops / items

    def _body(self, body: onnx.GraphProto, values: Mapping[str, _Value], items: int) -> _Counter:
        inner = _Counter({**self.constants, **_constants(body)})
        inner.count(body, {**values, **_values(body)}, items)
        return inner

    def _merge(self, other: _Counter, times: float) -> None:
        for key, flops in other.by_op.items():
            self.by_op[key] = self.by_op.get(key, 0.0) + flops * times
        self.unprofiled |= other.unprofiled
        self.bounded |= other.bounded

    def _control(
        self, key: str, node: onnx.NodeProto, values: Mapping[str, _Value], items: int
    ) -> None:
        if key == "If":  # the branch taken is known only at run time: count the costlier one
            branches = [self._body(_attr(node, b, None), values, items)
                        for b in ("then_branch", "else_branch")]  # fmt: skip
            self._merge(max(branches, key=lambda c: sum(c.by_op.values())), 1.0)
            self.bounded.add("If: the costlier branch counted")
            return
        body = self._body(_attr(node, "body", None), values, items)
        if key == "Loop":
            trip = self.constants.get(node.input[0]) if node.input and node.input[0] else None
            if trip is None or trip.size != 1:
                self._merge(body, 0.0)
                self.unprofiled.add("Loop (trip count known only at run time)")
                return
            self._merge(body, float(trip.reshape(-1)[0]))
            if len(node.input) > 1 and node.input[1]:  # a condition may end it sooner
                self.bounded.add("Loop: at most its trip count")
            return
        scans = int(_attr(node, "num_scan_inputs", 0))  # Scan: the body once per scan step
        first = values.get(node.input[len(node.input) - scans]) if scans else None
        if first is None or first.shape is None:
            self._merge(body, 0.0)
            self.unprofiled.add("Scan (scan length unknown)")
            return
        axes = list(_attr(node, "scan_input_axes", []) or [0])
        self._merge(body, float(first.shape[axes[0]]))


def _constant_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The tensors of ``Constant`` nodes: weights some exporters keep there, not as initialisers."""
    return [
        a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Small constant values (a Loop's trip count): inline initialisers and Constant nodes."""
    found = {
        t.name: numpy_helper.to_array(t)
        for t in graph.initializer
        if t.data_location != TensorProto.EXTERNAL
        and _initializer_bytes(t) <= _INLINE_INITIALIZER_BYTES
    }
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and _initializer_bytes(a.t) <= _INLINE_INITIALIZER_BYTES:
                    found[n.output[0]] = numpy_helper.to_array(a.t)
    return found


def _value_infos(graph: onnx.GraphProto, *, top: bool) -> Iterator[onnx.ValueInfoProto]:
    """The graph's outputs and value infos (its inputs too when ``top``), then every subgraph's
    inputs, outputs and value infos, recursively."""
    yield from (*(graph.input if top else ()), *graph.output, *graph.value_info)
    for node in graph.node:
        for a in node.attribute:
            for sub in (a.g,) if a.type == onnx.AttributeProto.GRAPH else a.graphs:
                yield from sub.input
                yield from _value_infos(sub, top=False)


def _pin_given(
    graph: onnx.GraphProto, static: set[str], shapes: Mapping[str, tuple[int, ...]]
) -> int:
    """Pin the named inputs to the given shapes, and every other use of their symbols; returns
    the batch (the first dim given to an input whose first dim is dynamic).

    Raises:
        ConfigError: an unknown input, a wrong rank, a fixed dim given otherwise, or two batches.
    """
    inputs = {i.name: i for i in graph.input if i.name not in static}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise ConfigError(f"the model has no input {unknown}; its inputs: {sorted(inputs)}")
    symbols: dict[str, int] = {}
    batches = set()
    for name, shape in shapes.items():
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ConfigError(f"input {name!r} has rank {len(dims)}; given {list(shape)}")
        for axis, (d, size) in enumerate(zip(dims, shape, strict=True)):
            if size < 0:
                raise ConfigError(f"input {name!r}: dimension {axis} must be >= 0, got {size}")
            if d.HasField("dim_value") and d.dim_value >= 0:
                if d.dim_value != size:
                    raise ConfigError(
                        f"input {name!r}: dimension {axis} is fixed at {d.dim_value}, given {size}"
                    )
                continue
            if axis == 0:
                batches.add(size)
            if d.dim_param:
                symbols[d.dim_param] = size
            if axis:  # the batch axis is pinned by _pin_batch, which divides by it
                d.dim_value = size
    if len(batches) > 1:
        raise ConfigError(f"inputs disagree on the batch size: {sorted(batches)}")
    for vi in _value_infos(graph, top=True):
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if axis and d.dim_param in symbols:
                d.dim_value = symbols[d.dim_param]
    return max(batches.pop() if batches else 1, 1)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model for shape inference, its large initialisers replaced by typed inputs."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    src, dst = model.graph, skeleton.graph
    dst.name = src.name
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(dst, part).extend(getattr(src, part))
    declared = {i.name for i in src.input}
    for t in src.initializer:
        inline = t.data_location != TensorProto.EXTERNAL
        if inline and _initializer_bytes(t) <= _INLINE_INITIALIZER_BYTES:
            dst.initializer.append(t)
        elif t.name not in declared:
            dst.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return skeleton


def _counted(skeleton: onnx.ModelProto, items: int) -> tuple[dict[str, _Value], _Counter]:
    """The skeleton's values with the shapes inference gives them, and its FLOPs counted.

    ONNX's own inference (with data propagation) first: it is fast. When it leaves ops without
    shapes and onnxruntime is installed (workers, ``gpufan optimize``; the front door's set has
    no runtime), onnxruntime's symbolic inference is tried too and kept if it counts more: it
    follows shapes through the ``Shape`` -> ``Gather`` -> ``Slice`` arithmetic ONNX's gives up on
    (the legacy torch exporter's transformers lose every MatMul's shape there), at 2-10x the
    time. What neither can shape is reported as unprofiled.
    """
    with contextlib.suppress(onnx.shape_inference.InferenceError):  # else: the declared shapes
        skeleton = onnx.shape_inference.infer_shapes(
            skeleton, check_type=False, strict_mode=False, data_prop=True
        )
    best = _count(skeleton, items)
    if best[1].unprofiled:
        with contextlib.suppress(Exception):  # ImportError; a bare Exception on an op it can't do
            symbolic = _count(_symbolic_shapes(skeleton), items)
            if len(symbolic[1].unprofiled) < len(best[1].unprofiled):
                best = symbolic
    return best


def _count(skeleton: onnx.ModelProto, items: int) -> tuple[dict[str, _Value], _Counter]:
    values = _values(skeleton.graph)
    counter = _Counter(_constants(skeleton.graph))
    counter.count(skeleton.graph, values, items)
    return values, counter


def _symbolic_shapes(skeleton: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic inference, kept when it stops short of some shapes.

    Its ``infer_shapes`` then raises and writes the partial model to ``sym_shape_infer_temp.onnx``
    in the working directory; a profile is pure, so this runs the same three steps and keeps
    the partial result (what is left without a shape is reported as unprofiled, as always).
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(2**31 - 1, auto_merge=True, guess_output_rank=False,
                                       verbose=0)  # fmt: skip
    inference._preprocess(skeleton)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    inferred: onnx.ModelProto = inference.out_mp_
    return inferred


def _pin_batch(graph: onnx.GraphProto, static: set[str], batch: int) -> tuple[bool, set[str]]:
    """Fix the batch axis at ``batch`` and other symbolic input dims at 1, in place.

    Returns whether any input has a dynamic first dim, and the other symbols that were set to 1.
    """
    inputs = [i for i in graph.input if i.name not in static and i.type.HasField("tensor_type")]
    batch_symbols: set[str] = set()
    batched = False
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value > 0:  # a symbol, -1 or unset
            batched = True
            batch_symbols.add(dims[0].dim_param)
            dims[0].dim_value = batch
    batch_symbols.discard("")  # an unnamed dim is no symbol
    assumed: set[str] = set()
    for d in (d for vi in inputs for d in vi.type.tensor_type.shape.dim):
        if d.dim_param in batch_symbols:
            d.dim_value = batch
        elif not (d.HasField("dim_value") and d.dim_value >= 0):
            assumed.add(d.dim_param or "(unnamed)")
            d.dim_value = 1
    # Outputs and annotations that name the batch symbol must agree with the pinned inputs; an
    # output's unnamed first dim (skl2onnx leaves them blank) is the batch axis too, so that an
    # output inference cannot follow (past ai.onnx.ml ops) still has a size.
    for vi in _value_infos(graph, top=False):  # subgraph bodies too: a Loop carries the batch
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in batch_symbols:
                d.dim_value = batch
    for vi in graph.output if batched else ():
        first = vi.type.tensor_type.shape.dim[:1]
        if first and first[0].WhichOneof("value") is None:
            first[0].dim_value = batch
    return batched, assumed


def _values(graph: onnx.GraphProto) -> dict[str, _Value]:
    """Every value's static type, from initialisers and the (inferred) value infos."""
    values = {t.name: _Value(tuple(t.dims), t.data_type) for t in graph.initializer}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        known = tt.HasField("shape") and min(dims, default=0) >= 0
        tensor = vi.type.HasField("tensor_type")
        values[vi.name] = _Value(dims if known else None, tt.elem_type if tensor else None)
    return values


def _elem_bytes(elem_type: int) -> float:
    """Bytes per element; strings are a guess, sub-byte types count one byte (their numpy size)."""
    if elem_type == TensorProto.STRING:
        return _GUESS_BYTES
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except KeyError:  # UNDEFINED: nothing is known about the value
        return 0


def _initializer_bytes(t: onnx.TensorProto) -> int:
    """Exact stored size: elements x element size, or the string bytes themselves."""
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    return int(math.prod(t.dims) * _elem_bytes(t.data_type))


def _peak_live_bytes(
    graph: onnx.GraphProto, values: Mapping[str, _Value], static: set[str]
) -> float:
    """The largest sum of live non-constant tensors while the nodes run in graph order."""
    end = len(graph.node)
    born = {i.name: 0 for i in graph.input if i.name not in static}
    last_read: dict[str, int] = {}
    for step, node in enumerate(graph.node):
        born.update((o, step) for o in node.output if o and o not in static)
        last_read.update((i, step) for i in node.input if i)
    last_read.update((o.name, end) for o in graph.output)
    live = [0.0] * (end + 2)
    for name, start in born.items():
        size = values[name].nbytes if name in values else _GUESS_BYTES
        live[start] += size
        live[max(last_read.get(name, start), start) + 1] -= size
    return max(itertools.accumulate(live))


# ---- per-op FLOP counts; NaN says "this op's cost could not be counted" ----------------------


def _shape(vals: _Vals, i: int) -> tuple[int, ...] | None:
    value = vals[i] if i < len(vals) else None
    return None if value is None else value.shape


def _numel(vals: _Vals, i: int) -> float:
    shape = _shape(vals, i)
    return math.nan if shape is None else float(math.prod(shape))


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _conv(node: onnx.NodeProto, ins: _Vals, outs: _Vals) -> float:
    # W is [Cout, Cin/groups, k...]: each output element is a (Cin/groups x k...) dot product, so
    # groups, strides, pads and dilations all act through the output shape and W's shape.
    w = _shape(ins, 1)
    if w is None:
        return math.nan
    y = _numel(outs, 0)
    return 2 * y * math.prod(w[1:]) + (y if _shape(ins, 2) is not None else 0)


def _conv_transpose(node: onnx.NodeProto, ins: _Vals, outs: _Vals) -> float:
    # W is [Cin, Cout/groups, k...]: each input element scatters into Cout/groups x k... outputs.
    w = _shape(ins, 1)
    if w is None:
        return math.nan
    return 2 * _numel(ins, 0) * math.prod(w[1:]) + (
        _numel(outs, 0) if _shape(ins, 2) is not None else 0
    )


def _matmul(node: onnx.NodeProto, ins: _Vals, outs: _Vals) -> float:
    # Broadcast batch dims ([B,h,L,d] x [B,h,d,L]) are already in the output: 2 x |Y| x K.
    a = _shape(ins, 0)
    return math.nan if not a else 2 * _numel(outs, 0) * a[-1]


def _gemm(node: onnx.NodeProto, ins: _Vals, outs: _Vals) -> float:
    a = _shape(ins, 0)
    if a is None or len(a) != 2:
        return math.nan
    k = a[0] if _attr(node, "transA", 0) else a[1]
    y = _numel(outs, 0)
    return 2 * y * k + (y if _shape(ins, 2) is not None else 0)


def _einsum(node: onnx.NodeProto, ins: _Vals, outs: _Vals) -> float:
    """Best effort: every index's size from the operands; n operands cost n-1 naive contractions."""
    equation = _attr(node, "equation", b"")
    lhs = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    terms = lhs.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    broadcast = 1
    for i, term in enumerate(terms):
        shape = _shape(ins, i)
        letters = term.replace("...", "")
        if shape is None or len(shape) < len(letters):
            return math.nan
        if "..." in term:
            at, width = term.index("..."), len(shape) - len(letters)
            broadcast = max(broadcast, math.prod(shape[at : at + width]))
            shape = shape[:at] + shape[at + width :]
        if len(shape) != len(letters):
            return math.nan
        for letter, size in zip(letters, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)
    space = float(math.prod(sizes.values()) * broadcast)
    return 2 * (len(terms) - 1) * space if len(terms) > 1 else space


def _pool(node: onnx.NodeProto, ins: _Vals, outs: _Vals) -> float:
    # One comparison or add per window element of each output.
    return _numel(outs, 0) * float(math.prod(_attr(node, "kernel_shape", [])))


def _recurrent(node: onnx.NodeProto, ins: _Vals, outs: _Vals) -> float:
    # W [dirs, gates*H, I], R [dirs, gates*H, H]: each step and direction multiplies the input by
    # W and the state by R; X is [seq, batch, I] (or [batch, seq, I] with layout 1).
    x, w, r = _shape(ins, 0), _shape(ins, 1), _shape(ins, 2)
    if x is None or w is None or r is None or len(x) != 3 or len(w) != 3 or len(r) != 3:
        return math.nan
    return 2.0 * x[0] * x[1] * w[0] * w[1] * (w[2] + r[2])


_CONTROL = frozenset(("If", "Loop", "Scan"))

_CONTRACTIONS: dict[str, Callable[[onnx.NodeProto, _Vals, _Vals], float]] = {
    "AveragePool": _pool,
    "GRU": _recurrent,
    "LSTM": _recurrent,
    "RNN": _recurrent,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Einsum": _einsum,
    "Gemm": _gemm,
    "LpPool": _pool,
    "MatMul": _matmul,
    "MaxPool": _pool,
}


def _flops(key: str, node: onnx.NodeProto, ins: _Vals, outs: _Vals) -> float:
    """FLOPs of one node over the whole (pinned) batch; NaN when they cannot be counted."""
    if key in _CONTRACTIONS:
        return _CONTRACTIONS[key](node, ins, outs)
    if key in _PER_OUTPUT_ELEMENT:
        return _PER_OUTPUT_ELEMENT[key] * _numel(outs, 0)
    if key in _PER_INPUT_ELEMENT:
        return _numel(ins, 0)
    return math.nan
