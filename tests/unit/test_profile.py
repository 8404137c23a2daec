"""profile: exact FLOPs of hand-built graphs, and the repository's real models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.models import build_cnn, build_mlp
from core.errors import ConfigError
from core.planning.graphcost import profile_model

DIGITS = Path(__file__).parents[2] / "gpu_containers/demo_models/digits/1/model.onnx"


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, list[int | str]],
    outputs: dict[str, list[int | str]],
    weights: dict[str, tuple[int, ...]] | None = None,
    ints: dict[str, list[int]] | None = None,
    domains: Sequence[str] = (),
) -> onnx.ModelProto:
    """A float32 model from nodes, named input/output shapes, zero weights and int64 constants."""
    inits = [
        numpy_helper.from_array(np.zeros(shape, np.float32), name)
        for name, shape in (weights or {}).items()
    ] + [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in (ints or {}).items()]
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    m = helper.make_model(graph, opset_imports=opsets)
    onnx.checker.check_model(m)
    return m


def gemm_784_512() -> onnx.ModelProto:
    return model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        {"x": ["batch", 784]},
        {"y": ["batch", 512]},
        {"w": (512, 784), "b": (512,)},
    )


@pytest.mark.parametrize("batch", [1, 4])
def test_gemm_counts_two_per_mac_plus_the_bias(batch: int) -> None:
    p = profile_model(gemm_784_512(), batch_axis_size=batch)
    assert p.flops_per_item == 2 * 784 * 512 + 512
    assert dict(p.flops_by_op) == {"Gemm": 2 * 784 * 512 + 512}
    assert p.param_bytes == (512 * 784 + 512) * 4
    assert (p.input_bytes_per_item, p.output_bytes_per_item) == (784 * 4, 512 * 4)
    assert p.batched and p.unprofiled_ops == () and p.assumed_unit_dims == ()


def test_gemm_with_transposed_a_reads_k_from_its_first_axis() -> None:
    m = model(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transA=1)],
        {"x": [6, 3]},
        {"y": [3, 5]},
        {"w": (6, 5)},
    )
    assert profile_model(m).flops_per_item == 2 * 3 * 5 * 6


def test_conv_with_stride_padding_and_groups() -> None:
    # [1,8,10,10] -> 16 channels, 3x3, groups=2, stride 2, pad 1 -> [1,16,5,5].
    conv = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4, group=2
    )
    m = model(
        [conv], {"x": ["n", 8, 10, 10]}, {"y": ["n", 16, 5, 5]}, {"w": (16, 4, 3, 3), "b": (16,)}
    )
    y = 16 * 5 * 5
    assert profile_model(m).flops_per_item == 2 * y * 4 * 3 * 3 + y


def test_conv_with_dilation_and_no_bias() -> None:
    # 5x5 input, 3x3 kernel dilated by 2 covers 5x5: one output position per channel.
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], dilations=[2, 2])
    m = model([conv], {"x": ["n", 2, 5, 5]}, {"y": ["n", 3, 1, 1]}, {"w": (3, 2, 3, 3)})
    assert profile_model(m).flops_per_item == 2 * 3 * 2 * 3 * 3


def test_conv_transpose_scatters_each_input_element() -> None:
    deconv = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2])
    m = model(
        [deconv], {"x": ["n", 4, 3, 3]}, {"y": ["n", 2, 7, 7]}, {"w": (4, 2, 3, 3), "b": (2,)}
    )
    assert profile_model(m).flops_per_item == 2 * (4 * 3 * 3) * (2 * 3 * 3) + 2 * 7 * 7


def attention(op: onnx.NodeProto) -> onnx.ModelProto:
    """Scores of 4 heads, length 16, head size 8: [B,4,16,8] x [B,4,8,16] -> [B,4,16,16]."""
    return model(
        [op, helper.make_node("Softmax", ["s"], ["p"], axis=-1)],
        {"q": ["batch", 4, 16, 8], "k": ["batch", 4, 8, 16]},
        {"p": ["batch", 4, 16, 16]},
    )


@pytest.mark.parametrize("batch", [1, 3])
def test_batched_attention_matmul_and_softmax(batch: int) -> None:
    p = profile_model(attention(helper.make_node("MatMul", ["q", "k"], ["s"])), batch)
    assert dict(p.flops_by_op) == {"MatMul": 2 * 4 * 16 * 16 * 8, "Softmax": 5 * 4 * 16 * 16}
    assert p.input_bytes_per_item == 2 * 4 * 16 * 8 * 4


def test_broadcast_matmul_counts_the_broadcast_batch() -> None:
    m = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        {"x": ["batch", 7, 16]},
        {"y": ["batch", 7, 32]},
        {"w": (16, 32)},
    )
    assert profile_model(m).flops_per_item == 2 * 7 * 32 * 16


def test_einsum_matches_the_equivalent_matmul() -> None:
    einsum = helper.make_node("Einsum", ["q", "k"], ["s"], equation="bhid,bhdj->bhij")
    ellipsis = helper.make_node("Einsum", ["q", "k"], ["s"], equation="...id,...dj->...ij")
    for node in (einsum, ellipsis):
        assert profile_model(attention(node)).flops_by_op["Einsum"] == 2 * 4 * 16 * 16 * 8


def test_pooling_counts_window_elements() -> None:
    nodes = [
        helper.make_node("MaxPool", ["x"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["x"], ["b"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("GlobalAveragePool", ["x"], ["c"]),
    ]
    shapes = {"a": ["n", 4, 4, 4], "b": ["n", 4, 8, 8], "c": ["n", 4, 1, 1]}
    p = profile_model(model(nodes, {"x": ["n", 4, 8, 8]}, shapes))
    assert dict(p.flops_by_op) == {
        "MaxPool": 4 * 4 * 4 * 4,
        "AveragePool": 4 * 8 * 8 * 9,
        "GlobalAveragePool": 4 * 8 * 8,
    }
    assert p.output_bytes_per_item == (64 + 256 + 4) * 4


def test_elementwise_and_normalisation_are_a_few_per_element() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"]),
        helper.make_node("LayerNormalization", ["y", "s2", "b2"], ["z"], axis=-1),
    ]
    weights = {"s": (3,), "b": (3,), "m": (3,), "v": (3,), "s2": (5,), "b2": (5,)}
    m = model(nodes, {"x": ["n", 3, 5]}, {"z": ["n", 3, 5]}, weights)
    assert dict(profile_model(m).flops_by_op) == {
        "BatchNormalization": 2 * 15,
        "LayerNormalization": 7 * 15,
        "Relu": 15,
    }


def test_unknown_ops_count_zero_and_are_named() -> None:
    custom = helper.make_node("FusedThing", ["x"], ["t"], domain="com.example")
    m = model(
        [custom, helper.make_node("Relu", ["t"], ["y"])],
        {"x": ["n", 4]},
        {"y": ["n", 4]},
        domains=["com.example"],
    )
    p = profile_model(m)
    assert p.unprofiled_ops == ("com.example:FusedThing",)
    assert dict(p.flops_by_op) == {"Relu": 4}  # sized by the graph's declared output shape


def test_a_known_op_without_shapes_is_unprofiled() -> None:
    custom = helper.make_node("FusedThing", ["x"], ["t"], domain="com.example")
    nodes = [
        custom,
        helper.make_node("Relu", ["t"], ["r"]),
        helper.make_node("Flatten", ["r"], ["y"]),
    ]
    m = model(nodes, {"x": ["n", 4]}, {"y": ["n", 4]}, domains=["com.example"])
    assert profile_model(m).unprofiled_ops == ("Relu", "com.example:FusedThing")


def test_data_movement_is_free_and_not_unprofiled() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Flatten", ["t"], ["y"]),
    ]
    p = profile_model(model(nodes, {"x": ["n", 2, 3]}, {"y": ["n", 6]}))
    assert (p.flops_per_item, p.unprofiled_ops) == (0, ())


def test_a_fixed_first_dim_is_one_item() -> None:
    m = model(
        [helper.make_node("Gemm", ["x", "w"], ["y"])], {"x": [8, 16]}, {"y": [8, 4]}, {"w": (16, 4)}
    )
    p = profile_model(m, batch_axis_size=32)
    assert not p.batched
    assert p.flops_per_item == 2 * 8 * 4 * 16
    assert p.input_bytes_per_item == 8 * 16 * 4


@pytest.mark.parametrize("first", ["batch", None, -1])
def test_every_spelling_of_a_dynamic_first_dim_is_the_batch_axis(first: str | int | None) -> None:
    m = gemm_784_512()
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [first, 784]))
    p = profile_model(m, batch_axis_size=8)
    assert p.batched and p.assumed_unit_dims == ()
    assert p.flops_per_item == 2 * 784 * 512 + 512


def test_the_batch_symbol_is_pinned_wherever_it_appears() -> None:
    # Two inputs share the batch symbol; the second carries it on its last axis.
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    m = model(nodes, {"x": [3, "batch"], "w": ["batch", 5]}, {"y": [3, 5]})
    p = profile_model(m, batch_axis_size=4)
    assert p.batched and p.assumed_unit_dims == ()
    assert p.flops_per_item == 2 * 3 * 5 * 4 / 4  # K is the batch: the cost is per item


def test_other_symbolic_dims_are_evaluated_at_one_and_named() -> None:
    m = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        {"x": ["batch", "seq", 16]},
        {"y": ["batch", "seq", 8]},
        {"w": (16, 8)},
    )
    p = profile_model(m)
    assert p.assumed_unit_dims == ("seq",)
    assert p.flops_per_item == 2 * 8 * 16


def test_peak_activation_is_the_largest_live_set() -> None:
    # x (4) -> a (8) -> b (2) -> y (1), plus x feeding the last node: x stays live to the end.
    nodes = [
        helper.make_node("Tile", ["x", "r2"], ["a"]),
        helper.make_node("Slice", ["a", "s0", "s2", "ax"], ["b"]),
        helper.make_node("Concat", ["b", "x"], ["y"], axis=1),
    ]
    ints = {"r2": [1, 2], "s0": [0], "s2": [2], "ax": [1]}
    m = model(nodes, {"x": ["n", 4]}, {"y": ["n", 6]}, ints=ints)
    p = profile_model(m)
    assert p.peak_activation_bytes_per_item == (4 + 8 + 2) * 4  # while Slice runs
    assert p.flops_per_item == 0


def test_string_tensors_count_a_guessed_size() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.STRING, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, ["n", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "s", [x], [y])
    p = profile_model(helper.make_model(graph))
    assert p.input_bytes_per_item == 3 * 64


def test_an_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read ONNX model"):
        profile_model(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00 not protobuf")
    with pytest.raises(ConfigError, match=r"junk\.onnx"):
        profile_model(tmp_path / "junk.onnx")


def test_batch_axis_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        profile_model(gemm_784_512(), batch_axis_size=0)


# ---- the repository's models -------------------------------------------------------------------


def stated_mflop(path: Path) -> float:
    """The figure ``bench/models.py`` wrote into the model's doc string."""
    match = re.search(r"([\d.]+) MFLOP/item", onnx.load(str(path)).doc_string)
    assert match, "bench/models.py no longer states its FLOPs"
    return float(match.group(1))


def test_bench_mlp_matches_its_stated_figure(tmp_path: Path) -> None:
    path = build_mlp(tmp_path / "mlp.onnx")
    p = profile_model(path)
    assert p.flops_per_item == pytest.approx(1.34e6, rel=0.01)
    assert p.flops_per_item == pytest.approx(stated_mflop(path) * 1e6, rel=0.01)
    weights = 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert p.param_bytes == weights * 4
    assert (p.input_bytes_per_item, p.output_bytes_per_item) == (784 * 4, 10 * 4)


def test_bench_cnn_matches_its_stated_figure(tmp_path: Path) -> None:
    path = build_cnn(tmp_path / "cnn.onnx")
    p = profile_model(path, batch_axis_size=2)
    assert p.flops_per_item == pytest.approx(139e6, rel=0.02)
    assert p.flops_per_item == pytest.approx(stated_mflop(path) * 1e6, rel=0.02)
    assert p.flops_by_op["Conv"] / p.flops_per_item > 0.99
    assert p.unprofiled_ops == ()
    assert p.input_bytes_per_item == 3 * 64 * 64 * 4
    # The stem's 32x32x32 output plus its input are live at once at least.
    assert p.peak_activation_bytes_per_item >= (3 * 64 * 64 + 32 * 32 * 32) * 4


def test_digits_demo_model_from_skl2onnx() -> None:
    p = profile_model(DIGITS)
    # MLPClassifier 64 -> 32 -> 10: two MatMuls, then adds, Relu, Softmax, ArgMax.
    assert p.flops_by_op["MatMul"] == 2 * 64 * 32 + 2 * 32 * 10
    assert 4_700 < p.flops_per_item < 5_500
    assert p.unprofiled_ops == ()
    assert p.input_bytes_per_item == 64 * 4
    assert p.output_bytes_per_item == 8 + 10 * 4  # int64 label + float32 probabilities
    assert p.param_bytes > (64 * 32 + 32 * 10) * 4


def test_zipmap_sequence_outputs_do_not_crash() -> None:
    # skl2onnx's default classifier output: ZipMap -> sequence(map(int64, float)).
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 3])
    out = helper.make_value_info(
        "out",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(1, []))
        ),
    )
    zipmap = helper.make_node(
        "ZipMap", ["probs"], ["out"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]
    )
    graph = helper.make_graph([zipmap], "z", [probs], [out])
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    )
    p = profile_model(m)
    assert p.unprofiled_ops == () and p.flops_per_item == 0
    assert p.output_bytes_per_item == 64


# ---- a profile at the request's shapes, control flow, Constant weights, and its confidence ----


def conv_dynamic_hw() -> onnx.ModelProto:
    return model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        {"x": ["batch", 3, "height", "width"]},
        {"y": ["batch", 16, "height", "width"]},
        {"w": (16, 3, 3, 3)},
    )


def test_dynamic_dims_at_the_request_shapes_count_exactly() -> None:
    assumed = profile_model(conv_dynamic_hw())
    assert assumed.confidence == "bounded"
    assert assumed.assumed_unit_dims == ("height", "width")
    assert any("dims assumed 1" in n for n in assumed.notes)
    real = profile_model(conv_dynamic_hw(), input_shapes={"x": [2, 3, 320, 240]})
    assert real.flops_per_item == 2 * 16 * 320 * 240 * 3 * 3 * 3
    assert real.input_bytes_per_item == 3 * 320 * 240 * 4
    assert real.output_bytes_per_item == 16 * 320 * 240 * 4
    assert (real.confidence, real.notes) == ("exact", ())


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"images": [1, 3, 8, 8]}, "no input \\['images'\\]"),
        ({"x": [1, 3, 8]}, "rank 4; given \\[1, 3, 8\\]"),
        ({"x": [1, 4, 8, 8]}, "dimension 1 is fixed at 3, given 4"),
    ],
)
def test_bad_request_shapes_are_named(shapes: dict[str, list[int]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        profile_model(conv_dynamic_hw(), input_shapes=shapes)


def test_weights_stored_as_constant_nodes_count_as_parameters() -> None:
    w = numpy_helper.from_array(np.zeros((8, 4), np.float32))
    m = model(
        [
            helper.make_node("Constant", [], ["w"], value=w),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        {"x": ["batch", 8]},
        {"y": ["batch", 4]},
    )
    p = profile_model(m)
    assert p.param_bytes == 8 * 4 * 4
    assert p.flops_per_item == 2 * 8 * 4


def _branch(name: str, k: int) -> onnx.GraphProto:
    w = numpy_helper.from_array(np.zeros((8, k), np.float32), f"w_{name}")
    return helper.make_graph(
        [helper.make_node("MatMul", ["x", f"w_{name}"], [f"y_{name}"])], name, [],
        [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, ["batch", k])],
        initializer=[w],
    )  # fmt: skip


def test_if_counts_the_costlier_branch_and_says_it_is_a_bound() -> None:
    graph = helper.make_graph(
        [helper.make_node(
            "If", ["c"], ["y"], then_branch=_branch("a", 4), else_branch=_branch("b", 16)
        )],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
    )  # fmt: skip
    p = profile_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert p.flops_per_item == 2 * 8 * 16
    assert p.confidence == "bounded" and p.bounded == ("If: the costlier branch counted",)


def _loop_model(trip: int | None) -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("MatMul", ["v", "w"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["batch", 8])],
    )  # fmt: skip
    inits = [numpy_helper.from_array(np.zeros((8, 8), np.float32), "w")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])]
    if trip is None:
        inputs.append(helper.make_tensor_value_info("m", TensorProto.INT64, []))
    else:
        inits.append(numpy_helper.from_array(np.array(trip, np.int64), "m"))
    graph = helper.make_graph(
        [helper.make_node("Loop", ["m", "", "x"], ["y"], body=body)], "g", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_loop_counts_its_body_times_a_constant_trip_count() -> None:
    assert profile_model(_loop_model(5)).flops_per_item == 5 * 2 * 8 * 8
    unknown = profile_model(_loop_model(None))
    assert unknown.confidence == "incomplete"
    assert "Loop (trip count known only at run time)" in unknown.unprofiled_ops


def test_lstm_counts_both_matrices_every_step_and_direction() -> None:
    hidden, inputs, seq = 16, 8, 10
    m = model(
        [
            helper.make_node(
                "LSTM", ["x", "w", "r"], ["y"], hidden_size=hidden, direction="bidirectional"
            )
        ],
        {"x": [seq, "batch", inputs]},
        {"y": [seq, 2, "batch", hidden]},
        {"w": (2, 4 * hidden, inputs), "r": (2, 4 * hidden, hidden)},
    )
    p = profile_model(m, input_shapes={"x": [seq, 3, inputs]})
    # X's first axis is the sequence (fixed): no batch axis, so the figure is per call, batch 3
    assert not p.batched
    assert p.flops_by_op["LSTM"] == 2 * seq * 3 * 2 * 4 * hidden * (inputs + hidden)
