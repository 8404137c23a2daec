"""Measured speed tables: parsed strictly, interpolated between batch sizes, preferred by the
cost model to the spec sheet and named where it is used.

GIVEN a ``gpufan profile`` CSV for a model on the CPU,
WHEN it is parsed and the cost model builds its facts with it,
THEN per-call seconds follow the measured points (linear between them, never faster per item
than the largest batch beyond them), the lowest concurrency and latest date are used, the CPU
target says "measured <date> on <host>", a target on another accelerator says "estimated", and
a bad row names its file and line.
"""

from __future__ import annotations

import pytest

from core.config import Policy, Target
from core.errors import ConfigError
from core.planning.costmodel import CostModel, ModelFacts
from core.planning.estimate import Workload
from core.planning.limits import Origin
from core.pricing.snapshot import load_snapshot
from core.wire.profiletable import (
    MeasuredRow,
    parse_profile_csv,
    parse_profile_tables,
    profile_csv,
)

ROWS = [
    MeasuredRow("2026-12-01", "cnn", "box", "host-a", "cpu", "fp32", b, c, ips, 1.0, 2.0)
    for b, c, ips in [(1, 1, 100.0), (8, 1, 400.0), (32, 1, 640.0), (8, 4, 900.0)]
]


def test_seconds_interpolate_between_and_extend_beyond_the_measured_batches() -> None:
    (cpu,) = parse_profile_csv(profile_csv(ROWS), "profile.csv").values()
    assert cpu.points == ((1, 0.01), (8, 0.02), (32, 0.05))  # concurrency 1 only
    assert cpu.seconds(1) == pytest.approx(0.01)
    assert cpu.seconds(8) == pytest.approx(0.02)
    assert cpu.seconds(20) == pytest.approx(0.02 + 0.03 * 12 / 24)
    assert cpu.seconds(64) == pytest.approx(0.1)  # the last segment's slope = its per-item floor
    assert cpu.source == "measured 2026-12-01 on host-a (cpu, fp32)"


def test_the_latest_sweep_wins() -> None:
    old = MeasuredRow("2026-11-01", "cnn", "box", "old", "cpu", "fp32", 1, 1, 10.0, 1.0, 2.0)
    (cpu,) = parse_profile_csv(profile_csv([old, *ROWS]), "p.csv").values()
    assert (cpu.date, cpu.host) == ("2026-12-01", "host-a")


def test_a_bad_row_names_the_file_and_line() -> None:
    text = profile_csv(ROWS).replace("640", "fast")
    with pytest.raises(ConfigError, match=r"p\.csv:4: ValueError"):
        parse_profile_csv(text, "p.csv")
    with pytest.raises(ConfigError, match="missing columns"):
        parse_profile_csv("date,model\n", "p.csv")


def _target(name: str, accelerator: str, variant: str = "fp32") -> Target:
    return Target(
        name=name, backend="http", endpoint="http://127.0.0.1:9", cloud="onprem", region="home",
        accelerator=accelerator, pricing="owned", usd_per_hour=0.0, variant=variant,
    )  # fmt: skip


def test_the_cost_model_prefers_the_measured_table_and_says_so() -> None:
    measured = parse_profile_tables(profile_csv(ROWS), "profile.csv")
    facts = ModelFacts("cnn", None, Workload("cnn", 100.0, 10.0), measured)  # no graph at all
    model = CostModel(
        [facts], [_target("box", "cpu"), _target("gpu", "t4")], Policy(max_shard_items=8),
        Origin.parse("onprem:home"), load_snapshot(),
    )  # fmt: skip
    box, gpu = model.target_facts("cnn")
    assert box.speed_source == "measured 2026-12-01 on host-a (cpu, fp32)"
    per_item = (0.02 - 0.01) / 7
    assert box.items_per_s == pytest.approx(1 / per_item)
    assert box.fixed_s == pytest.approx(0.01 - per_item)
    assert gpu.speed_source.startswith("unknown")  # no graph, no table for t4


def test_the_fastest_batch_per_item_within_a_limit() -> None:
    (cpu,) = parse_profile_csv(profile_csv(ROWS), "profile.csv").values()
    assert cpu.fastest_batch(64) == 32  # 640 items/s
    assert cpu.fastest_batch(16) == 8
    assert cpu.fastest_batch(0) == 1  # nothing fits: the smallest measured


def test_each_target_is_priced_at_the_variant_it_serves() -> None:
    int8 = [
        MeasuredRow("2026-12-01", "cnn", "box", "host-a", "cpu", "int8", b, 1, ips, 1.0, 2.0)
        for b, ips in [(1, 200.0), (8, 800.0)]
    ]
    measured = parse_profile_tables(profile_csv([*ROWS, *int8]), "profile.csv")
    facts = ModelFacts("cnn", None, Workload("cnn", 100.0, 10.0), measured)
    model = CostModel(
        [facts], [_target("fp", "cpu"), _target("q", "cpu", "int8")], Policy(max_shard_items=8),
        Origin.parse("onprem:home"), load_snapshot(),
    )  # fmt: skip
    fp, q = model.target_facts("cnn")
    assert fp.speed_source.endswith("(cpu, fp32)") and q.speed_source.endswith("(cpu, int8)")
    assert q.items_per_s == pytest.approx(2 * fp.items_per_s)  # (0.01-0.005)/7 vs (0.02-0.01)/7


def test_a_dynamic_graph_is_priced_per_request_shape_once_per_shape() -> None:
    from core.planning.profile import ModelProfile

    calls = []

    def reprofile(shapes: object) -> ModelProfile:
        calls.append(shapes)
        return ModelProfile(1e6, 0, 400, 40, 0)

    static = ModelProfile(1.0, 0, 4, 4, 0, assumed_unit_dims=("height",))
    facts = ModelFacts("cnn", static, Workload("cnn", 4.0, 4.0), reprofile=reprofile)
    model = CostModel(
        [facts], [_target("box", "cpu")], Policy(), Origin.parse("onprem:home"), load_snapshot()
    )
    first = model.at_shapes("cnn", {"x": [1, 3, 10]})
    again = model.at_shapes("cnn", {"x": [1, 3, 10]})
    assert first is not None and first is again and len(calls) == 1
    _, workload, report = first
    assert (workload.input_bytes_per_item, report["flops_per_item"]) == (400, 1e6)
    exact = ModelFacts("m", ModelProfile(1.0, 0, 4, 4, 0), Workload("m", 4.0, 4.0),
                       reprofile=reprofile)  # fmt: skip
    model = CostModel(
        [exact], [_target("box", "cpu")], Policy(), Origin.parse("onprem:home"), load_snapshot()
    )
    assert model.at_shapes("m", {"x": [1, 3]}) is None  # nothing assumed: nothing to redo


async def test_a_new_shape_is_profiled_off_the_event_loop_once() -> None:
    """The dispatcher runs ``CostModel.profiling``'s work in a thread before placing, so a large
    graph's profile at a new sequence length never stalls the loop serving every request."""
    import threading

    import numpy as np

    from core.dispatch.dispatcher import Dispatcher
    from core.planning.profile import ModelProfile
    from core.wire.tensors import InferRequest, Tensor
    from tests.unit.test_dispatch import Doubler

    threads: list[int] = []

    def reprofile(shapes: object) -> ModelProfile:
        threads.append(threading.get_ident())
        return ModelProfile(1e6, 0, 12, 12, 0)

    static = ModelProfile(1.0, 0, 4, 4, 0, assumed_unit_dims=("sequence",))
    facts = ModelFacts("m", static, Workload("m", 4.0, 4.0), reprofile=reprofile)
    box = Target(name="box", backend="double", cloud="onprem", region="home", pricing="owned",
                 usd_per_hour=0.0, accelerator="cpu")  # fmt: skip
    model = CostModel([facts], [box], Policy(), Origin.parse("onprem:home"), load_snapshot())
    dispatcher = Dispatcher([box], {"double": Doubler()}, Policy(), placer=model.placer)
    x = np.ones((2, 3), np.float32)
    for _ in range(3):  # one shape three times: profiled once
        result = await dispatcher.dispatch("m", None, InferRequest((Tensor("x", x),)))
        np.testing.assert_array_equal(result.outputs[0].data, x * 2)
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    assert result.placement is not None
    assert result.placement["model"]["flops_per_item"] == 1e6  # priced at the shape profiled
    await dispatcher.dispatch("m", None, InferRequest((Tensor("x", np.ones((2, 5), np.float32)),)))
    assert len(threads) == 2 and threads[1] != threading.get_ident()
    assert model.profiling("m", {"x": [1, 5]}) is None  # kept: nothing left to run ahead
