"""Egress rules over the bundled table: charged by the source, first paid tier, fallbacks noted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ConfigError
from core.pricing import load_snapshot
from core.pricing.egress import EgressRow, egress_rate

CLOUDS = ["aws", "gcp", "azure"]
REGIONS = ["us-east-1", "eu-west-1", "us-central1", "europe-west4", "eastus", "westeurope"]
SOURCES = st.sampled_from([*CLOUDS, "onprem", "local"])
ENDS = st.sampled_from([*CLOUDS, "onprem", "local", "internet"])


def rate(src: str, src_region: str, dst: str, dst_region: str) -> float:
    return load_snapshot().egress(src, src_region, dst, dst_region).usd_per_gb


@given(cloud=SOURCES, region=st.sampled_from(REGIONS))
def test_zero_within_one_region(cloud: str, region: str) -> None:
    assert rate(cloud, region, cloud, region) == 0.0


@given(
    src=SOURCES, src_region=st.sampled_from(REGIONS), dst=ENDS, dst_region=st.sampled_from(REGIONS)
)
def test_never_negative(src: str, src_region: str, dst: str, dst_region: str) -> None:
    assert rate(src, src_region, dst, dst_region) >= 0.0


@given(
    cloud=st.sampled_from(CLOUDS),
    region=st.sampled_from(REGIONS),
    other_region=st.sampled_from(REGIONS),
    other_cloud=st.sampled_from([*CLOUDS, "onprem", "internet"]),
)
def test_leaving_the_cloud_costs_at_least_changing_region(
    cloud: str, region: str, other_region: str, other_cloud: str
) -> None:
    if other_cloud == cloud or other_region == region:
        return
    cross_cloud = rate(cloud, region, other_cloud, other_region)
    cross_region = rate(cloud, region, cloud, other_region)
    assert cross_cloud >= cross_region > 0


@given(a=st.integers(0, 10**13), b=st.integers(0, 10**13), src=st.sampled_from(CLOUDS))
def test_cost_is_linear_in_bytes(a: int, b: int, src: str) -> None:
    egress = load_snapshot().egress(src, "x-region", "internet", "")
    assert egress.cost_usd(0) == 0.0
    assert egress.cost_usd(a + b) == pytest.approx(egress.cost_usd(a) + egress.cost_usd(b))


def test_first_paid_tier_not_the_free_allowance() -> None:
    assert rate("aws", "us-east-1", "gcp", "us-central1") == 0.09
    assert rate("azure", "eastus", "internet", "") == 0.087
    assert rate("gcp", "us-east1", "aws", "us-east-1") == 0.12
    assert rate("aws", "us-east-1", "aws", "eu-west-1") == 0.02
    assert load_snapshot().egress("aws", "us-east-1", "aws", "us-east-1").as_of == ""


def test_ingress_is_free_so_the_source_decides() -> None:
    assert rate("onprem", "local", "aws", "us-east-1") == 0.0
    assert rate("aws", "us-east-1", "onprem", "local") == 0.09


def test_an_unlisted_region_uses_the_clouds_row_and_says_so() -> None:
    egress = load_snapshot().egress("aws", "eu-west-1", "azure", "eastus")
    assert egress.usd_per_gb == 0.09 and egress.as_of == "2026-05-06"
    assert "no aws figure for eu-west-1; used us-east-1's" in egress.note
    assert "no aws figure" not in load_snapshot().egress("aws", "us-east-1", "gcp", "x").note


def test_gcp_same_region_comes_from_its_row_with_a_source() -> None:
    egress = load_snapshot().egress("gcp", "europe-west4", "gcp", "europe-west4")
    assert (egress.usd_per_gb, egress.source) == (0.0, "cloud.google.com/run/pricing")


def test_unknown_cloud_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"'ibm'.*aws, azure, gcp"):
        load_snapshot().egress("ibm", "us-south", "aws", "us-east-1")


def test_missing_destination_kind_is_a_config_error() -> None:
    rows = [EgressRow("aws", "us-east-1", "internet", 0.09, "t", "s", "2026-05-06")]
    with pytest.raises(ConfigError, match="inter_region"):
        egress_rate(rows, "aws", "us-east-1", "aws", "eu-west-1")
