"""The assembled cost model: prices from the snapshot, profiles, constraints, telemetry."""

from __future__ import annotations

import pytest

from core.config import Policy, Target
from core.errors import ConfigError, PriceNotFound
from core.planning.costmodel import DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR, CostModel, ModelFacts
from core.planning.estimate import Workload
from core.planning.limits import Origin
from core.planning.profile import ModelProfile
from core.pricing import load_snapshot

CNN = ModelFacts(
    "cnn", ModelProfile(139e6, 0, 49_152, 40, 0), Workload("cnn", 49_152, 40)
)  # fmt: skip


def target(name: str, **kw: object) -> Target:
    return Target(name=name, backend="http", endpoint=f"http://{name}", **kw)  # type: ignore[arg-type]


def model(*targets: Target, **policy: object) -> CostModel:
    return CostModel(
        [CNN], targets, Policy(**policy), Origin("aws", "us-east-1"), load_snapshot(),  # type: ignore[arg-type]
    )  # fmt: skip


def test_prices_come_from_the_snapshot_unless_given_explicitly() -> None:
    sku = target("t4", cloud="aws", region="us-east-1", accelerator="T4", pricing="spot",
                 sku="g4dn.xlarge")  # fmt: skip
    explicit = target("mine", cloud="aws", region="us-east-1", accelerator="T4", pricing="spot",
                      sku="g4dn.xlarge", usd_per_hour=0.1)  # fmt: skip
    m = model(sku, explicit)
    usd, source, as_of, stale = m.price_of(sku)
    assert usd == pytest.approx(0.2) and "skypilot" in source and as_of and not stale
    assert m.price_of(explicit)[:2] == (0.1, "config")
    facts = {f.target.name: f for f in m.target_facts("cnn")}
    assert facts["t4"].interruptions_per_hour == DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR
    # a T4 at 8.1 TFLOP/s x efficiency cannot run a 139 MFLOP model faster than its peak allows
    assert 0 < facts["t4"].items_per_s < 8.1e12 / 139e6


def test_an_unpriceable_target_fails_at_start_naming_it() -> None:
    bad = target("x", cloud="aws", region="mars-1", accelerator="T4", pricing="spot",
                 sku="g4dn.xlarge")  # fmt: skip
    with pytest.raises(PriceNotFound, match="mars-1"):
        model(bad)
    with pytest.raises(ConfigError, match="unknown accelerator 'Z80'"):
        model(target("y", accelerator="Z80"))


def test_the_placer_defaults_to_the_policy_constraints() -> None:
    m = model(target("a"), slo_ms=800, max_usd=1.0)
    assert m.defaults() == m.placer.defaults
    assert m.defaults().slo_ms == 800 and m.defaults().origin == Origin("aws", "us-east-1")


def test_measured_shards_correct_the_throughput_after_a_second() -> None:
    m = model(target("w", accelerator="cpu", max_concurrency=1))
    before = m.placer.tables["cnn"].items_per_s[0]
    for i in range(30):  # the worker is really 3x slower than its spec sheet
        m.observe("cnn", "w", 64, 3 * 64 / before, now=i / 100)
    assert m.placer.tables["cnn"].items_per_s[0] == before  # rebuilt at most once a second
    m.observe("cnn", "w", 64, 3 * 64 / before, now=2.0)
    after = m.placer.tables["cnn"].items_per_s[0]
    assert after == pytest.approx(before / 3, rel=0.05)


def test_a_configured_repository_without_the_model_is_an_error(tmp_path) -> None:
    from core.config import ModelSpec
    from core.frontdoor.runtime import model_facts

    with pytest.raises(ConfigError, match=r"models\[digits\].repository"):
        model_facts(ModelSpec(name="digits", repository=tmp_path))
