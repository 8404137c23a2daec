"""Live Google Cloud prices from the Cloud Billing Catalog API (``CloudCatalogClient.list_skus``).

The catalog prices parts (a GPU, a vCPU, a GiB of memory), so each gpufan SKU is a sum of parts,
each matched by description, ``category`` and ``service_regions`` (must list the key's region):

Cloud Run (``services/152E-C115-5142``, usage type OnDemand), ``serverless``:
    ``run-l4`` / ``run-l4-zonal`` = 1 L4 GPU + 4 vCPU + 16 GiB, per hour, where the GPU SKU's
    description has the word ``L4`` and ``GPU`` and says ``no``/``without zonal redundancy`` (for
    ``run-l4``) or does not (``run-l4-zonal``); CPU is ``Services CPU (Instance-based billing)...``
    and memory ``Services Memory (Instance-based billing)...``: GPU instances must use
    instance-based billing.
Compute Engine (``services/6F81-5844-456A``), ``on_demand`` (usage type OnDemand) and ``spot``
(usage type Preemptible), best effort:
    ``g2-standard-4`` = 4 x (resource group CPU, ``G2 Instance Core``) + 16 x (RAM,
    ``G2 Instance Ram``) + 1 x (GPU, ``L4 GPU``), skipping custom, premium, reserved, sole-tenancy
    and commitment SKUs (the same pruning as skypilot's ``fetch_gcp.py``).

A price is ``units`` + ``nanos``/1e9 per ``usage_unit``; divided by ``base_unit_conversion_factor``
it is per ``base_unit`` (``s`` or ``By.s``), which gives per unit-hour and per GiB-hour. The first
*paid* tier is used (free monthly allowances can't be known per request), and where several SKUs
match one part the dearest wins, so an estimate errs high. A key whose parts are not all found is
left out (the cache then uses the snapshot).

Credentials come from google-auth's standard chain (tests pass ``AnonymousCredentials``).
google-cloud-billing is imported on the first fetch; its blocking calls run in threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from core.errors import PriceSourceError
from core.pricing.model import Price, PriceKey, PricingModel

__all__ = ["CLOUD_RUN_SERVICE", "COMPUTE_SERVICE", "GcpPriceSource"]

CLOUD_RUN_SERVICE = "services/152E-C115-5142"
COMPUTE_SERVICE = "services/6F81-5844-456A"
_MAX_PAGES = 100  # Compute Engine lists tens of thousands of SKUs, 5,000 a page
_PAGE_SIZE = 5000
_PER_HOUR = {"s": 3600.0, "By.s": 3600.0 * 2**30}  # base unit -> (unit- or GiB-) hours
_PRUNED = ("custom", "premium", "reserved", "sole tenancy", "commitment")


@dataclass(frozen=True, slots=True)
class _Sku:
    """The fields matching needs, read off the catalog's proto at the boundary."""

    description: str
    resource_group: str
    usage_type: str
    regions: frozenset[str]
    usd_per_hour: float  # per unit-hour (GPU, vCPU) or per GiB-hour (memory)
    effective: str


Match = Callable[[_Sku], bool]


@dataclass(frozen=True, slots=True)
class _Shape:
    """A gpufan SKU as catalog parts (what, match, how many), and each pricing's usage type."""

    service: str
    gpu: str
    parts: tuple[tuple[str, Match, int], ...]
    usage_types: dict[PricingModel, str]


def _run_gpu(zonal: bool) -> Match:
    def match(s: _Sku) -> bool:
        d = s.description.lower()
        no_zonal = "no zonal redundancy" in d or "without zonal redundancy" in d
        return "l4" in d.split() and "gpu" in d.split() and no_zonal != zonal

    return match


def _run_part(prefix: str) -> Match:
    return lambda s: s.description.startswith(prefix)


def _compute_part(group: str, words: str) -> Match:
    def match(s: _Sku) -> bool:
        d = s.description.lower()
        return s.resource_group == group and words in d and not any(p in d for p in _PRUNED)

    return match


def _cloud_run(zonal: bool) -> _Shape:
    parts = (
        ("L4 GPU", _run_gpu(zonal), 1),
        ("vCPU", _run_part("Services CPU (Instance-based billing)"), 4),
        ("GiB", _run_part("Services Memory (Instance-based billing)"), 16),
    )
    return _Shape(CLOUD_RUN_SERVICE, "L4", parts, {"serverless": "OnDemand"})


_SHAPES = {
    "run-l4": _cloud_run(zonal=False),
    "run-l4-zonal": _cloud_run(zonal=True),
    "g2-standard-4": _Shape(
        COMPUTE_SERVICE,
        "L4",
        (
            ("vCPU", _compute_part("CPU", "g2 instance core"), 4),
            ("GiB", _compute_part("RAM", "g2 instance ram"), 16),
            ("L4 GPU", _compute_part("GPU", "l4 gpu"), 1),
        ),
        {"on_demand": "OnDemand", "spot": "Preemptible"},
    ),
}


def _price(key: PriceKey, skus: Sequence[_Sku]) -> Price | None:
    """The key's hourly price as the sum of its shape's parts; None if a part has no SKU."""
    shape = _SHAPES[key.sku]
    usage = shape.usage_types[key.pricing]
    total, used, dates = 0.0, [], []
    for what, match, count in shape.parts:
        found = [s for s in skus if s.usage_type == usage and key.region in s.regions and match(s)]
        if not found:
            return None
        best = max(found, key=lambda s: s.usd_per_hour)
        total += count * best.usd_per_hour
        used.append(f"{count} x {what} '{best.description}'")
        dates.append(best.effective)
    return Price(
        key=key,
        usd_per_hour=total,
        gpu=shape.gpu,
        gpu_count=1,
        source=f"Cloud Billing Catalog API ({shape.service})",
        as_of=min(dates),
        live=True,
        fetched_at=None,
        note="; ".join(used),
    )


def _read_sku(sku: Any) -> _Sku | None:
    """A catalog ``Sku`` proto as a ``_Sku``; None without a current price in a known unit."""
    if not sku.pricing_info:
        return None
    info = sku.pricing_info[0]
    expr = info.pricing_expression
    per_hour = _PER_HOUR.get(expr.base_unit)
    rates = list(expr.tiered_rates)
    if per_hour is None or not rates or not expr.base_unit_conversion_factor:
        return None
    usd = [r.unit_price.units + r.unit_price.nanos / 1e9 for r in rates]
    first_paid = next((u for u in usd if u > 0), usd[0])
    return _Sku(
        description=sku.description,
        resource_group=sku.category.resource_group,
        usage_type=sku.category.usage_type,
        regions=frozenset(sku.service_regions),
        usd_per_hour=first_paid / expr.base_unit_conversion_factor * per_hour,
        effective=info.effective_time.isoformat() if info.effective_time else "",
    )


@contextmanager
def _mapped(where: str) -> Iterator[None]:
    """google-api-core, google-auth and transport errors -> PriceSourceError naming the call."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from requests import RequestException

    try:
        yield
    except (GoogleAPIError, GoogleAuthError, RequestException, ValueError) as e:
        raise PriceSourceError(f"{where}: {type(e).__name__}: {e}") from e


class GcpPriceSource:
    """Cloud Run GPU and Compute Engine G2 prices (see the module docstring for what matches).

    Args:
        credentials: google-auth credentials; None uses the standard chain (ADC).
        api_endpoint: overrides ``cloudbilling.googleapis.com`` (tests: ``http://127.0.0.1:PORT``).
        timeout_s: the longest one page may take.
    """

    name = "gcp"

    def __init__(
        self,
        *,
        credentials: Any = None,
        api_endpoint: str | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        self._credentials = credentials
        self._endpoint = api_endpoint
        self._timeout_s = timeout_s
        self._client: Any = None

    async def fetch(self, keys: Sequence[PriceKey]) -> list[Price]:
        """Prices for the ``gcp`` keys of known shapes; other keys are left out.

        Raises:
            PriceSourceError: a catalog listing failed.
        """
        mine = [
            k
            for k in keys
            if k.cloud == "gcp" and k.sku in _SHAPES and k.pricing in _SHAPES[k.sku].usage_types
        ]
        services = sorted({_SHAPES[k.sku].service for k in mine})
        if not services:
            return []
        await asyncio.to_thread(self._make_client)
        listed = await asyncio.gather(*(asyncio.to_thread(self._list, s) for s in services))
        skus = dict(zip(services, listed, strict=True))
        prices = (_price(k, skus[_SHAPES[k.sku].service]) for k in mine)
        return [p for p in prices if p is not None]

    def _make_client(self) -> None:
        if self._client is not None:
            return
        from google.api_core.client_options import ClientOptions
        from google.cloud import billing_v1

        with _mapped("Cloud Billing client"):
            self._client = billing_v1.CloudCatalogClient(
                credentials=self._credentials,
                transport="rest",
                client_options=ClientOptions(api_endpoint=self._endpoint)
                if self._endpoint
                else None,
            )

    def _list(self, service: str) -> list[_Sku]:
        """Every SKU of ``service`` that has a usable price, over all pages."""
        request = {"parent": service, "currency_code": "USD", "page_size": _PAGE_SIZE}
        skus: list[_Sku] = []
        with _mapped(f"Cloud Billing list_skus {service}"):
            pager = self._client.list_skus(request=request, timeout=self._timeout_s)
            for n, page in enumerate(pager.pages):
                if n == _MAX_PAGES:
                    raise PriceSourceError(
                        f"Cloud Billing list_skus {service}: over {_MAX_PAGES} pages"
                    )
                skus += [s for s in map(_read_sku, page.skus) if s is not None]
        return skus
