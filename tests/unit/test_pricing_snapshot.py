"""The bundled price snapshot and PriceBook lookups: pure, no network."""

from __future__ import annotations

import subprocess
import sys
from datetime import date

import pytest

from core.errors import ConfigError, PriceNotFound
from core.pricing import PRICING_MODELS, Price, PriceBook, PriceKey, load_snapshot
from core.pricing.model import as_of_date

# Cloud Run per-second rates (cloud.google.com/run/pricing; gpu_prices.csv rows).
L4_NO_ZONAL_S, L4_ZONAL_S, VCPU_S, GIB_S = 0.0001867, 0.0002909, 0.000018, 0.000002


def test_every_row_has_a_source_a_date_and_a_known_pricing_model() -> None:
    book = load_snapshot()
    assert len(book.prices) == 30
    for key, price in book.prices.items():
        assert price.key == key
        assert price.source and as_of_date(price.as_of) is not None, key
        assert key.pricing in PRICING_MODELS
        assert not price.live and price.fetched_at is None
        assert price.usd_per_hour > 0 and price.gpu and price.gpu_count >= 1
    assert book.as_of == "2026-09-06"
    assert load_snapshot() is book  # parsed once


def test_cloud_run_rows_are_whole_derived_configs_that_add_up() -> None:
    book = load_snapshot()
    run = book.price(PriceKey("gcp", "us-central1", "run-l4", "serverless"))
    zonal = book.price(PriceKey("gcp", "us-central1", "run-l4-zonal", "serverless"))
    cpu_mem = 4 * VCPU_S * 3600 + 16 * GIB_S * 3600
    assert run.usd_per_hour == pytest.approx(L4_NO_ZONAL_S * 3600 + cpu_mem)
    assert run.usd_per_hour == pytest.approx(1.04652)
    assert zonal.usd_per_hour == pytest.approx(L4_ZONAL_S * 3600 + cpu_mem)
    assert zonal.usd_per_hour == pytest.approx(1.42164)
    assert "DERIVED" in run.note and "DERIVED" in zonal.note


def test_no_gpu_only_part_passes_for_an_instance_price() -> None:
    book = load_snapshot()
    gcp_skus = {k.sku for k in book.prices if k.cloud == "gcp"}
    assert gcp_skus == {"run-l4", "run-l4-zonal", "g2-standard-4"}  # no bare T4 or L4 GPU rows
    assert not any("GPU only" in p.note for p in book.prices.values())


def test_p4d_is_priced_per_eight_gpu_instance() -> None:
    p4d = load_snapshot().price(PriceKey("aws", "us-east-1", "p4d.24xlarge", "on_demand"))
    assert (p4d.gpu, p4d.gpu_count, p4d.usd_per_hour) == ("A100-40GB", 8, 21.957642)


def test_snapshot_normalises_the_reference_pricing_models() -> None:
    book = load_snapshot()
    azure = book.price(PriceKey("azure", "eastus", "Standard_NC4as_T4_v3", "on_demand"))
    aws_spot = book.price(PriceKey("aws", "us-east-1", "g4dn.xlarge", "spot"))
    assert azure.usd_per_hour == 0.526  # pay_as_you_go -> on_demand
    assert aws_spot.usd_per_hour == 0.2 and aws_spot.note.startswith("lowest AZ price")


def test_missing_region_names_it_and_lists_the_clouds_regions() -> None:
    key = PriceKey("aws", "eu-west-2", "g4dn.xlarge", "spot")
    with pytest.raises(PriceNotFound) as info:
        load_snapshot().price(key)
    text = str(info.value)
    assert "eu-west-2" in text and "g4dn.xlarge" in text and "spot" in text
    assert "eu-central-1, eu-west-1, us-east-1" in text
    assert isinstance(info.value, ConfigError) and info.value.key == key


def test_missing_sku_lists_what_the_region_has() -> None:
    with pytest.raises(PriceNotFound) as info:
        load_snapshot().price(PriceKey("azure", "eastus", "Standard_NC6s_v3", "on_demand"))
    text = str(info.value)
    assert "Standard_NC6s_v3" in text and "on_demand" in text
    assert "Standard_NC4as_T4_v3 spot" in text and "Standard_NC24ads_A100_v4 on_demand" in text
    assert len(info.value.alternatives) == 4


def test_owned_has_no_price_key() -> None:
    with pytest.raises(ConfigError, match="owned hardware is priced by config"):
        PriceKey("onprem", "local", "rtx4090", "owned")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("2026-09-06", date(2026, 9, 6)),
        ("2026-08", date(2026, 8, 1)),
        ("2026 (snapshot date not exposed)", date(2026, 1, 1)),
        ("2026-11-25T11:40:00+00:00", date(2026, 11, 25)),
        ("unknown", None),
    ],
)
def test_as_of_date_takes_the_earliest_day_the_text_can_mean(text: str, day: date | None) -> None:
    assert as_of_date(text) == day


def test_stale_names_each_fallback_with_its_age() -> None:
    snapshot = load_snapshot()
    od = PriceKey("aws", "us-east-1", "g4dn.xlarge", "on_demand")
    spot = PriceKey("aws", "us-east-1", "g4dn.xlarge", "spot")
    book = snapshot.overlay([], {od: "aws timed out", spot: "aws timed out"})
    figures = book.stale(date(2026, 11, 25))
    assert [(f.key, f.as_of, f.age_days) for f in figures] == [
        (od, "2026-09-06", 80),
        (spot, "2026 (snapshot date not exposed)", 328),
    ]
    assert snapshot.stale(date(2026, 11, 25)) == []  # the snapshot alone is not stale


def test_overlay_puts_live_figures_over_the_snapshot() -> None:
    snapshot = load_snapshot()
    key = PriceKey("aws", "us-east-1", "g4dn.xlarge", "on_demand")
    live = Price(key, 0.5, "T4", 1, "test", "2026-11-25", live=True, fetched_at=1.0)
    book = snapshot.overlay([live], {})
    assert book.price(key) is live and snapshot.price(key).usd_per_hour == 0.526
    with pytest.raises(ValueError, match="without a figure"):
        snapshot.overlay([], {PriceKey("aws", "mars-1", "x", "spot"): "down"})


def test_book_rejects_two_rows_for_one_key() -> None:
    price = load_snapshot().price(PriceKey("aws", "us-east-1", "g4dn.xlarge", "on_demand"))
    with pytest.raises(ValueError, match="two prices"):
        PriceBook.of([price, price], [], "2026-09-06")


def test_importing_the_sources_needs_no_cloud_sdk() -> None:
    code = (
        "import sys\n"
        "for m in ('boto3', 'botocore', 'google.cloud.billing_v1', 'google.api_core'):\n"
        "    sys.modules[m] = None\n"
        "import core.pricing, core.pricing.aws, core.pricing.gcp, core.pricing.azure\n"
        "core.pricing.load_snapshot()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
