"""The bundled price snapshot: ``data/gpu_prices.csv`` and ``data/egress_prices.csv``.

The figures the cache falls back to when a live source fails, and the only prices gpufan has
without any cloud credentials. Every row keeps its source and date; the tables were normalised from
``shared/reference/gpu_prices.csv`` and ``egress_prices.csv``:

- ``pricing`` is ``on_demand``, ``spot`` (AWS rows: the lowest AZ's price) or ``serverless``
  (Cloud Run, billed per second, still quoted per hour);
- ``sku`` follows ``PriceKey``'s convention. Cloud Run rows are whole minimum configurations:
  ``run-l4`` is the reference's derived L4 + 4 vCPU + 16 GiB row (1.04652 $/h) and
  ``run-l4-zonal`` the same with the zonal-redundancy GPU rate (0.0002909 x 3600 + 4 x 0.000018 x
  3600 + 16 x 0.000002 x 3600 = 1.42164 $/h); both say DERIVED in their notes;
- GPU-only parts are left out, so none can pass for an instance price: the Compute Engine T4 rows
  (no N1 VM part to add to them), the bare Cloud Run L4 GPU rates (folded into ``run-l4*``) and the
  Preview RTX PRO 6000 rate;
- ``p4d.24xlarge`` is priced per 8-GPU instance (``gpu_count`` 8).

Egress rows name their destination kind (``internet``, ``inter_region``, ``same_region``) and keep
their tiers in file order; GCP's North America Premium Tier rows sit under ``us-east1``, the region
one of their sources quotes, with the scope in the note.
"""

from __future__ import annotations

import csv
import functools
import io
from importlib import resources

from core.pricing.egress import EgressRow
from core.pricing.model import PRICING_MODELS, Price, PriceBook, PriceKey, as_of_date

__all__ = ["load_snapshot"]

_DESTINATIONS = ("same_region", "inter_region", "internet")


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _checked(row: dict[str, str], where: str) -> None:
    """Every bundled figure has a source and a dated ``as_of``; one without is a packaging bug."""
    if not row["source"] or as_of_date(row["as_of"]) is None:
        raise ValueError(f"{where}: every figure needs a source and a dated as_of, got {row}")


def _price(row: dict[str, str], where: str) -> Price:
    _checked(row, where)
    if row["pricing"] not in PRICING_MODELS:
        raise ValueError(f"{where}: pricing {row['pricing']!r} not in {PRICING_MODELS}")
    key = PriceKey(row["cloud"], row["region"], row["sku"], row["pricing"])  # type: ignore[arg-type]
    return Price(
        key=key,
        usd_per_hour=float(row["usd_per_hour"]),
        gpu=row["gpu"],
        gpu_count=int(row["gpu_count"]),
        source=row["source"],
        as_of=row["as_of"],
        live=False,
        fetched_at=None,
        note=row["note"],
    )


def _egress(row: dict[str, str], where: str) -> EgressRow:
    _checked(row, where)
    if row["destination"] not in _DESTINATIONS:
        raise ValueError(f"{where}: destination {row['destination']!r} not in {_DESTINATIONS}")
    return EgressRow(
        cloud=row["cloud"],
        region=row["region"],
        destination=row["destination"],  # type: ignore[arg-type]
        usd_per_gb=float(row["usd_per_gb"]),
        tier_note=row["tier_note"],
        source=row["source"],
        as_of=row["as_of"],
        note=row["note"],
    )


@functools.cache
def load_snapshot() -> PriceBook:
    """The bundled snapshot as a ``PriceBook``, parsed once per process.

    Its ``as_of`` is the newest figure's date; each figure keeps its own.

    Raises:
        ValueError: a bundled row is malformed (a packaging bug, not a user error).
    """
    prices = [
        _price(r, f"gpu_prices.csv line {i}")
        for i, r in enumerate(_rows("gpu_prices.csv"), start=2)
    ]
    egress = [
        _egress(r, f"egress_prices.csv line {i}")
        for i, r in enumerate(_rows("egress_prices.csv"), start=2)
    ]
    newest = max((p.as_of for p in prices), key=lambda s: (as_of_date(s), s))
    return PriceBook.of(prices, egress, newest)
