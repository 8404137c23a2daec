"""Live Azure VM prices from the public Retail Prices API (no credentials).

One ``GET https://prices.azure.com/api/retail/prices`` per (region, ARM SKU) with the OData
``$filter`` ``serviceName eq 'Virtual Machines' and armRegionName eq '<region>' and armSkuName eq
'<sku>' and priceType eq 'Consumption'``, following ``NextPageLink`` until it is null. The API has
no Spot price type, so the rows are sorted by name:

- ``productName`` ending in `` Windows``: skipped (the price includes a Windows licence);
- ``skuName``/``meterName`` ending in `` Low Priority``: skipped (Batch's low-priority meter);
- ``skuName``/``meterName`` ending in `` Spot``: the spot price;
- any other ``1 Hour`` row: the Linux pay-as-you-go (on-demand) price.

Where several rows remain for one pricing model, the dearest is taken, so an estimate errs high.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiohttp

from core.errors import PriceSourceError
from core.pricing.model import Price, PriceKey, PricingModel

__all__ = ["RETAIL_PRICES_URL", "AzurePriceSource"]

RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
_MAX_PAGES = 10  # one VM SKU in one region is a handful of rows: one page, rarely two


def _filter(region: str, sku: str) -> str:
    """The OData ``$filter`` selecting one VM SKU's pay-as-you-go rows in one region."""
    return (
        f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' "
        f"and armSkuName eq '{sku}' and priceType eq 'Consumption'"
    )


def _pricing_of(item: Mapping[str, Any]) -> PricingModel | None:
    """on_demand, spot, or None for a row to skip (see the module docstring)."""
    names = (item.get("skuName", ""), item.get("meterName", ""))
    if item.get("productName", "").endswith(" Windows") or item.get("unitOfMeasure") != "1 Hour":
        return None
    if any(n.endswith(" Low Priority") for n in names):
        return None
    if any(n.endswith(" Spot") for n in names):
        return "spot"
    return "on_demand"


def _prices(region: str, sku: str, items: Iterable[Mapping[str, Any]]) -> list[Price]:
    best: dict[PricingModel, Mapping[str, Any]] = {}
    for item in items:
        pricing = _pricing_of(item)
        if pricing is not None and (
            pricing not in best or item["retailPrice"] > best[pricing]["retailPrice"]
        ):
            best[pricing] = item
    return [
        Price(
            key=PriceKey("azure", region, sku, pricing),
            usd_per_hour=float(item["retailPrice"]),
            gpu="",
            gpu_count=0,
            source="Azure Retail Prices API",
            as_of=item.get("effectiveStartDate", ""),
            live=True,
            fetched_at=None,
            note=f"{item.get('productName', '')}: {item.get('meterName', '')}, Linux",
        )
        for pricing, item in sorted(best.items())
    ]


class AzurePriceSource:
    """Azure VM on-demand and spot prices for ``PriceKey("azure", region, arm_sku, ...)``.

    Args:
        session: the shared ``aiohttp.ClientSession`` (``core.wire.session.make_session``).
        base_url: the Retail Prices endpoint (tests: a loopback server).
        timeout_s: the longest one page may take.
    """

    name = "azure"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str = RETAIL_PRICES_URL,
        timeout_s: float = 10.0,
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def fetch(self, keys: Sequence[PriceKey]) -> list[Price]:
        """Prices for the ``azure`` on-demand and spot keys; other keys are left out.

        Raises:
            PriceSourceError: a page failed, answered non-200, or was not the expected JSON.
        """
        wanted = {k for k in keys if k.cloud == "azure" and k.pricing in ("on_demand", "spot")}
        pairs = sorted({(k.region, k.sku) for k in wanted})
        pages = await asyncio.gather(*(self._items(region, sku) for region, sku in pairs))
        try:
            found = [
                price
                for (region, sku), items in zip(pairs, pages, strict=True)
                for price in _prices(region, sku, items)
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise PriceSourceError(f"Azure Retail Prices: unreadable row: {e!r}") from e
        return [p for p in found if p.key in wanted]

    async def _items(self, region: str, sku: str) -> list[Mapping[str, Any]]:
        """Every row the filter selects, over all pages."""
        url: str | None = self._base_url
        params: dict[str, str] | None = {"$filter": _filter(region, sku)}
        items: list[Mapping[str, Any]] = []
        for _ in range(_MAX_PAGES):
            if url is None:
                return items
            page = await self._get(url, params)
            items += page["Items"]
            url, params = page.get("NextPageLink"), None  # the link carries the filter and $skip
        raise PriceSourceError(f"Azure Retail Prices {region} {sku}: over {_MAX_PAGES} pages")

    async def _get(self, url: str, params: Mapping[str, str] | None) -> dict[str, Any]:
        try:
            async with self._session.get(url, params=params, timeout=self._timeout) as resp:
                body = await resp.read()
                if resp.status != 200:
                    text = body[:200].decode("utf-8", "replace")
                    raise PriceSourceError(f"Azure Retail Prices answered {resp.status}: {text}")
                page = await resp.json(content_type=None)
        except TimeoutError as e:
            raise PriceSourceError(f"Azure Retail Prices timed out: {url}") from e
        except (aiohttp.ClientError, ValueError) as e:
            raise PriceSourceError(f"Azure Retail Prices: {type(e).__name__}: {e}") from e
        if not isinstance(page, dict) or not isinstance(page.get("Items"), list):
            raise PriceSourceError("Azure Retail Prices: reply has no Items list")
        return page
