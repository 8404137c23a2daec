"""The shapes of gpufan's prices, and ``PriceBook``: one pure lookup over them.

A ``PriceKey`` names what a user writes in ``gpufan.yaml`` (cloud, region, SKU, pricing model); a
``Price`` is one hourly figure for it with its source and date. A ``PriceBook`` is an immutable set
of prices plus the egress table; the ``PriceCache`` builds one per request from live sources and
the bundled snapshot, and remembers which figures had to come from the snapshot although a live
source was asked (``stale()``). No clock here: ages are counted from a ``now`` passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Literal, Protocol, get_args

from core.errors import ConfigError, PriceNotFound
from core.pricing.egress import EgressRate, EgressRow, egress_rate

__all__ = [
    "PRICING_MODELS",
    "Price",
    "PriceBook",
    "PriceKey",
    "PriceSource",
    "PricingModel",
    "StaleFigure",
    "as_of_date",
]

# Owned hardware has no market price: its hourly cost comes from the target's config.
PricingModel = Literal["on_demand", "spot", "serverless"]
PRICING_MODELS: tuple[str, ...] = get_args(PricingModel)

_AS_OF = re.compile(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?")


@dataclass(frozen=True, slots=True, order=True)
class PriceKey:
    """What is priced: ``sku`` as a user writes it in ``gpufan.yaml``.

    SKUs: an AWS instance type (``g4dn.xlarge``), an Azure ARM SKU (``Standard_NC4as_T4_v3``), a
    GCP Compute Engine machine type (``g2-standard-4``), or a Cloud Run GPU configuration:
    ``run-l4`` (one L4 with the mandatory minimum 4 vCPU and 16 GiB, zonal redundancy off) and
    ``run-l4-zonal`` (the same with zonal redundancy on).
    """

    cloud: str
    region: str
    sku: str
    pricing: PricingModel

    def __post_init__(self) -> None:
        if self.pricing not in PRICING_MODELS:
            raise ConfigError(
                f"pricing model {self.pricing!r} of {self.cloud} {self.sku} has no market price; "
                f"expected one of {', '.join(PRICING_MODELS)} (owned hardware is priced by config)"
            )

    def __str__(self) -> str:
        return f"{self.cloud} {self.region} {self.sku} ({self.pricing})"


@dataclass(frozen=True, slots=True)
class Price:
    """One hourly figure and where it comes from.

    Per-second products (Cloud Run) still carry ``usd_per_hour``; billing granularity is the
    scorer's business. ``gpu_count`` is per priced unit (8 for ``p4d.24xlarge``). A live source
    that cannot tell the GPU leaves ``gpu`` empty and ``gpu_count`` 0, and the cache fills them from
    the snapshot's row for the same SKU.

    Attributes:
        live: False for snapshot figures.
        fetched_at: when the cache received a live figure (its clock); None for snapshot figures.
    """

    key: PriceKey
    usd_per_hour: float
    gpu: str
    gpu_count: int
    source: str
    as_of: str
    live: bool
    fetched_at: float | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class StaleFigure:
    """A snapshot figure used where a live price was asked for.

    Attributes:
        age_days: days from the earliest day ``as_of`` can mean (``2026-08`` is 2026-08-01) to the
            ``now`` given to ``PriceBook.stale``: an upper bound. None if ``as_of`` has no date.
        reason: why the live source did not price it (error, timeout, not offered).
    """

    key: PriceKey
    as_of: str
    age_days: int | None
    reason: str


class PriceSource(Protocol):
    """A live price API, one per cloud (``core.pricing.aws``, ``.azure``, ``.gcp``)."""

    name: str

    async def fetch(self, keys: Sequence[PriceKey]) -> list[Price]:
        """Live prices for whichever of ``keys`` the API offers; the rest are left out.

        Raises:
            PriceSourceError: the API failed; nothing was priced.
        """
        ...


def as_of_date(as_of: str) -> date | None:
    """The earliest day an ``as_of`` text can mean: ``2026-09-06``, ``2026-08`` -> 08-01,
    ``2026 (snapshot date not exposed)`` -> 01-01, an ISO timestamp -> its day; None if no year."""
    m = _AS_OF.match(as_of)
    if m is None:
        return None
    year, month, day = (int(g) if g else 1 for g in m.groups())
    return date(year, month, day)


@dataclass(frozen=True)
class PriceBook:
    """An immutable lookup over prices and the egress table.

    Attributes:
        prices: one ``Price`` per key.
        egress_rows: the egress table (``core.pricing.egress``).
        as_of: the snapshot's date (its newest figure's); every figure carries its own.
        fallbacks: keys a live source was asked for but could not price, each with the reason;
            their figures come from the snapshot.
    """

    prices: Mapping[PriceKey, Price]
    egress_rows: tuple[EgressRow, ...]
    as_of: str
    fallbacks: Mapping[PriceKey, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))
        object.__setattr__(self, "fallbacks", MappingProxyType(dict(self.fallbacks)))

    @classmethod
    def of(cls, prices: Iterable[Price], egress_rows: Iterable[EgressRow], as_of: str) -> PriceBook:
        """A book from price rows; a key given twice is a data error.

        Raises:
            ValueError: two rows for one key.
        """
        by_key: dict[PriceKey, Price] = {}
        for p in prices:
            if p.key in by_key:
                raise ValueError(f"two prices for {p.key}")
            by_key[p.key] = p
        return cls(by_key, tuple(egress_rows), as_of)

    def price(self, key: PriceKey) -> Price:
        """The figure for ``key``.

        Raises:
            PriceNotFound: no figure; the message lists what the book has for the key's cloud and
                region, or the cloud's regions when it has nothing there.
        """
        try:
            return self.prices[key]
        except KeyError:
            pass
        same_place = sorted(
            k for k in self.prices if (k.cloud, k.region) == (key.cloud, key.region)
        )
        regions = sorted({k.region for k in self.prices if k.cloud == key.cloud})
        raise _not_found(key, same_place, regions) from None

    def egress(
        self, src_cloud: str, src_region: str, dst_cloud: str, dst_region: str
    ) -> EgressRate:
        """The per-GB rate of a transfer (rules in ``core.pricing.egress``)."""
        return egress_rate(self.egress_rows, src_cloud, src_region, dst_cloud, dst_region)

    def stale(self, now: date) -> list[StaleFigure]:
        """The snapshot figures used in place of live ones, with their age on day ``now``."""
        figures = []
        for key, reason in sorted(self.fallbacks.items()):
            as_of = self.prices[key].as_of
            day = as_of_date(as_of)
            age = None if day is None else max((now - day).days, 0)
            figures.append(StaleFigure(key, as_of, age, reason))
        return figures

    def overlay(self, prices: Iterable[Price], fallbacks: Mapping[PriceKey, str]) -> PriceBook:
        """This book with ``prices`` put over its own and ``fallbacks`` recorded.

        Raises:
            ValueError: a fallback key the result has no figure for.
        """
        merged = {**self.prices, **{p.key: p for p in prices}}
        missing = [str(k) for k in fallbacks if k not in merged]
        if missing:
            raise ValueError(f"fallbacks without a figure: {', '.join(missing)}")
        return PriceBook(merged, self.egress_rows, self.as_of, fallbacks)


def _not_found(
    key: PriceKey, alternatives: Sequence[PriceKey], regions: Sequence[str]
) -> PriceNotFound:
    """Name the key, and list what there is for its cloud and region."""
    if alternatives:
        have = ", ".join(f"{k.sku} {k.pricing}" for k in alternatives)
        detail = f"{key.cloud} {key.region} has: {have}"
    else:
        detail = (
            f"there are no {key.cloud} prices in {key.region} "
            f"({key.cloud} regions priced: {', '.join(regions) or 'none'})"
        )
    return PriceNotFound(f"no price for {key}: {detail}", key, alternatives)
