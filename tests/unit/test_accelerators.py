"""accelerators: the bundled table, name lookup, and the telemetry-corrected throughput model."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ConfigError
from core.planning.accelerators import ThroughputModel, accelerator, accelerator_names
from core.planning.profile import ModelProfile

ROOT = Path(__file__).parents[2]
PRICES = ROOT / "core" / "pricing" / "data" / "gpu_prices.csv"  # the bundled snapshot
PRICED = ("T4", "L4", "A10G", "V100", "A100-40GB", "A100-80GB", "RTX PRO 6000")
MLP = 1.34e6  # FLOP per item of bench/models.py's mlp
CNN = 139e6


def profile(flops: float) -> ModelProfile:
    return ModelProfile(flops, 0, 0, 0, 0)


def test_the_priced_gpus_plus_h100_and_cpu_are_listed() -> None:
    assert set(accelerator_names()) == {*PRICED, "H100", "cpu"}


def test_every_gpu_of_the_price_reference_resolves() -> None:
    with PRICES.open() as f:
        for row in csv.DictReader(f):
            assert accelerator(row["gpu"]).name == row["gpu"]


def test_every_row_has_a_source_a_date_and_sane_figures() -> None:
    for name in accelerator_names():
        acc = accelerator(name)
        assert acc.source and acc.note, name
        assert date(2026, 1, 1) <= acc.as_of <= date.today(), name
        assert acc.fp16_tflops >= acc.fp32_tflops > 0, name
        assert 0 < acc.efficiency <= 1 and acc.call_overhead_us > 0, name
        assert acc.effective_flops == pytest.approx(acc.fp32_tflops * 1e12 * acc.efficiency)


def test_gpu_rows_cite_nvidia_or_say_why_not() -> None:
    for name in accelerator_names():
        if name != "cpu":
            source = accelerator(name).source
            assert "nvidia.com" in source, (name, source)
            assert "ASSUMPTION" in accelerator(name).note  # efficiency is not a datasheet figure


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("T4", "T4"),
        ("t4", "T4"),
        ("nvidia-tesla-t4", "T4"),
        ("nvidia-l4", "L4"),
        ("NVIDIA L4", "L4"),
        ("a10g", "A10G"),
        ("nvidia-tesla-v100", "V100"),
        ("nvidia-tesla-a100", "A100-40GB"),
        ("a100_40gb", "A100-40GB"),
        ("nvidia-a100-80gb", "A100-80GB"),
        ("nvidia-h100-80gb", "H100"),
        ("rtx-pro-6000", "RTX PRO 6000"),
        ("nvidia-rtx-pro-6000", "RTX PRO 6000"),
        ("CPU", "cpu"),
    ],
)
def test_lookup_ignores_case_punctuation_and_cloud_prefixes(spelling: str, name: str) -> None:
    assert accelerator(spelling).name == name


def test_an_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown accelerator 'B200'") as err:
        accelerator("B200")
    for name in accelerator_names():
        assert name in str(err.value)


def test_the_cpu_row_reproduces_the_perf_anchors() -> None:
    # perf-anchors.md, raw ORT with one intra-op thread: cnn batch 64 782 items/s, mlp batch 1
    # 23,578 items/s, mlp batch 64 83,111 items/s. The cpu row is fitted to these.
    model = ThroughputModel()
    assert model.predict_items_per_s(profile(CNN), "cpu", 64) == pytest.approx(782, rel=0.05)
    assert model.predict_items_per_s(profile(MLP), "cpu", 1) == pytest.approx(23_578, rel=0.05)
    assert model.predict_items_per_s(profile(MLP), "cpu", 64) == pytest.approx(83_111, rel=0.1)


# ---- predictions --------------------------------------------------------------------------------

flops = st.floats(min_value=1e3, max_value=1e12)
batches = st.integers(min_value=1, max_value=4096)
names = st.sampled_from(("cpu", "T4", "L4", "A10G", "V100", "A100-40GB", "H100", "RTX PRO 6000"))


@given(flops, flops, batches, names)
def test_heavier_models_take_longer(a: float, b: float, items: int, name: str) -> None:
    light, heavy = sorted((a, b))
    model = ThroughputModel()
    assert model.predict_seconds(profile(light), None, name, items) <= model.predict_seconds(
        profile(heavy), None, name, items
    )
    if heavy > light * 1.01:
        assert model.predict_items_per_s(profile(heavy), name, items) < model.predict_items_per_s(
            profile(light), name, items
        )


@given(flops, batches, batches, names)
def test_more_items_take_longer_but_batch_better(f: float, a: int, b: int, name: str) -> None:
    small, big = sorted((a, b))
    model = ThroughputModel()
    assert model.predict_seconds(profile(f), None, name, small) <= model.predict_seconds(
        profile(f), None, name, big
    )
    # The per-call overhead is shared by a batch: bigger calls never lower the rate.
    assert model.predict_items_per_s(profile(f), name, small) <= model.predict_items_per_s(
        profile(f), name, big
    )


def test_tiny_batches_are_bounded_by_the_call_overhead() -> None:
    rate = ThroughputModel().predict_items_per_s(profile(MLP), "H100", 1)
    assert rate <= 1 / (accelerator("H100").call_overhead_us * 1e-6)


@pytest.mark.parametrize("flop", [MLP, CNN, 4e9])
def test_h100_is_faster_than_t4(flop: float) -> None:
    model = ThroughputModel()
    assert model.predict_seconds(profile(flop), None, "H100", 64) < model.predict_seconds(
        profile(flop), None, "T4", 64
    )


def test_a_model_with_no_counted_flops_costs_the_call_only() -> None:
    assert ThroughputModel().predict_seconds(profile(0), None, "L4", 100) == pytest.approx(
        accelerator("L4").call_overhead_us * 1e-6
    )


def test_bad_arguments_are_refused() -> None:
    model = ThroughputModel()
    with pytest.raises(ValueError, match="items"):
        model.predict_seconds(profile(MLP), None, "T4", 0)
    with pytest.raises(ValueError, match="positive"):
        model.observe("t", "T4", profile(MLP), 0.0, batch_items=8)
    with pytest.raises(ValueError, match="alpha"):
        ThroughputModel(alpha=0)
    with pytest.raises(ConfigError, match="valid"):
        model.predict_seconds(profile(MLP), None, "TPU", 1)


# ---- telemetry correction ------------------------------------------------------------------------


@given(
    f=flops,
    batch=batches,
    name=names,
    factor=st.floats(min_value=0.01, max_value=100),
)
def test_many_identical_observations_converge_on_the_measurement(
    f: float, batch: int, name: str, factor: float
) -> None:
    model = ThroughputModel()
    measured = model.predict_items_per_s(profile(f), name, batch) * factor
    for _ in range(80):
        model = model.observe("gcp-l4", name, profile(f), measured, batch_items=batch)
    corrected = model.predict_items_per_s(profile(f), name, batch, target_name="gcp-l4")
    assert corrected == pytest.approx(measured, rel=0.01)


def test_each_observation_moves_alpha_of_the_way() -> None:
    spec = ThroughputModel().predict_items_per_s(profile(CNN), "L4", 32)
    model = ThroughputModel(alpha=0.25).observe("a", "L4", profile(CNN), spec / 2, batch_items=32)
    assert model.ratios["a"] == pytest.approx(1 - 0.25 * 0.5)
    assert model.predict_items_per_s(profile(CNN), "L4", 32, "a") == pytest.approx(spec * 0.875)


def test_observations_of_one_target_leave_the_others_alone() -> None:
    before = ThroughputModel()
    after = before.observe("slow-t4", "T4", profile(CNN), 10.0, batch_items=64)
    assert before.ratios == {}  # a value: the original is unchanged
    for target in ("fast-t4", None):
        assert after.predict_seconds(profile(CNN), target, "T4", 64) == before.predict_seconds(
            profile(CNN), target, "T4", 64
        )
    assert after.predict_seconds(profile(CNN), "slow-t4", "T4", 64) > before.predict_seconds(
        profile(CNN), "slow-t4", "T4", 64
    )


def test_the_csv_header_is_the_documented_one() -> None:
    header = (ROOT / "core/data/accelerators.csv").read_text().splitlines()[0]
    assert header == (
        "name,fp32_tflops,fp16_tflops,memory_gb,memory_gbps,efficiency,call_overhead_us,"
        "source,as_of,note"
    )
