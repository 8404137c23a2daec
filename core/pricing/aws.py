"""Live EC2 prices: on-demand from the AWS Price List Query API, spot from the spot price history.

- On-demand: ``pricing.get_products`` (ServiceCode ``AmazonEC2``) with TERM_MATCH filters on
  instanceType, regionCode, operatingSystem Linux, tenancy Shared, preInstalledSw NA and
  capacitystatus Used, following ``NextToken``. Each ``PriceList`` item is a JSON *string*; the
  hourly USD figures are read from every ``terms.OnDemand.*.priceDimensions.*`` (the term and
  dimension codes are not hard-coded). If the filters still leave several, the dearest is taken:
  an estimate should err high rather than pick a price that may not apply.
- Spot: ``ec2.describe_spot_price_history`` in the key's region (ProductDescriptions
  ``Linux/UNIX``, StartTime one hour before ``now``, following ``NextToken``). The newest record
  of each AZ is its current price, and the lowest current price over the AZs is taken, since
  gpufan's spot capacity may launch in any AZ of the region (AWS Batch's price-capacity strategy).

Credentials come from boto3's standard chain. boto3 is imported on the first fetch, never at
module import; its blocking calls run in threads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from core.errors import PriceSourceError
from core.pricing.model import Price, PriceKey

if TYPE_CHECKING:
    import boto3

__all__ = ["AwsPriceSource"]

_MAX_PAGES = 20  # a few instance types need one or two pages; more means a runaway loop
_SPOT_WINDOW = timedelta(hours=1)
_FILTERS = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
}


@contextmanager
def _mapped(where: str) -> Iterator[None]:
    """botocore's errors and unreadable replies -> PriceSourceError naming the call."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError, KeyError, TypeError, ValueError) as e:
        raise PriceSourceError(f"{where}: {type(e).__name__}: {e}") from e


def _on_demand_usd(price_list: Sequence[str]) -> tuple[float, str, dict[str, str]] | None:
    """The hourly on-demand USD price in ``get_products`` items, its effective date and the
    product's attributes; None when no item has one."""
    best: tuple[float, str, dict[str, str]] | None = None
    for text in price_list:
        item = json.loads(text)
        for term in item.get("terms", {}).get("OnDemand", {}).values():
            for dim in term["priceDimensions"].values():
                usd = dim["pricePerUnit"].get("USD")
                if dim["unit"] != "Hrs" or usd is None:
                    continue
                if best is None or float(usd) > best[0]:
                    best = (float(usd), term["effectiveDate"], item["product"]["attributes"])
    return best


def _lowest_spot(history: Sequence[dict[str, Any]]) -> tuple[float, str, str] | None:
    """(price, timestamp, AZ) of the lowest current spot price: the newest record per AZ, then
    the cheapest AZ. None for an empty history."""
    newest: dict[str, dict[str, Any]] = {}
    for rec in history:
        az = rec["AvailabilityZone"]
        if az not in newest or rec["Timestamp"] > newest[az]["Timestamp"]:
            newest[az] = rec
    if not newest:
        return None
    best = min(newest.values(), key=lambda r: float(r["SpotPrice"]))
    return float(best["SpotPrice"]), best["Timestamp"].isoformat(), best["AvailabilityZone"]


class AwsPriceSource:
    """EC2 on-demand and spot prices for ``PriceKey("aws", region, instance_type, ...)``.

    Args:
        session: a ``boto3.Session``; a default one (the standard credential chain) if None.
        pricing_region: where the Price List API is called: us-east-1, eu-central-1 or ap-south-1.
        pricing_endpoint_url: overrides the Price List endpoint (tests: a loopback server).
        ec2_endpoint_url: overrides the EC2 endpoint of every region (tests).
        timeout_s: connect and read timeout of each call.
        max_attempts: botocore's attempts per call, the first included.
        now: the wall clock the spot window is counted back from.
    """

    name = "aws"

    def __init__(
        self,
        *,
        session: boto3.Session | None = None,
        pricing_region: str = "us-east-1",
        pricing_endpoint_url: str | None = None,
        ec2_endpoint_url: str | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 3,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._session = session
        self._pricing_region = pricing_region
        self._pricing_url = pricing_endpoint_url
        self._ec2_url = ec2_endpoint_url
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._now = now
        self._clients: dict[tuple[str, str], Any] = {}

    async def fetch(self, keys: Sequence[PriceKey]) -> list[Price]:
        """Prices for the ``aws`` on-demand and spot keys; other keys are left out.

        Raises:
            PriceSourceError: an API call failed or answered something unreadable.
        """
        on_demand = [k for k in keys if k.cloud == "aws" and k.pricing == "on_demand"]
        spot: dict[str, list[PriceKey]] = {}
        for k in keys:
            if k.cloud == "aws" and k.pricing == "spot":
                spot.setdefault(k.region, []).append(k)
        if not on_demand and not spot:
            return []
        await asyncio.to_thread(self._make_clients, sorted(spot))
        results = await asyncio.gather(
            *(asyncio.to_thread(self._on_demand, k) for k in on_demand),
            *(asyncio.to_thread(self._spot, region, ks) for region, ks in spot.items()),
        )
        return [p for group in results for p in group]

    def _make_clients(self, spot_regions: Sequence[str]) -> None:
        """Create the clients once, in one thread: a boto3 Session is not thread-safe."""
        import boto3
        from botocore.config import Config

        session = self._session or boto3.session.Session()
        config = Config(
            connect_timeout=self._timeout_s,
            read_timeout=self._timeout_s,
            retries={"total_max_attempts": self._max_attempts, "mode": "standard"},
        )
        wanted = [("pricing", self._pricing_region, self._pricing_url)]
        wanted += [("ec2", region, self._ec2_url) for region in spot_regions]
        for service, region, url in wanted:
            if (service, region) not in self._clients:
                self._clients[service, region] = session.client(
                    service, region_name=region, endpoint_url=url, config=config
                )

    def _on_demand(self, key: PriceKey) -> list[Price]:
        client = self._clients["pricing", self._pricing_region]
        filters = [
            {"Type": "TERM_MATCH", "Field": field, "Value": value}
            for field, value in {
                "instanceType": key.sku,
                "regionCode": key.region,
                **_FILTERS,
            }.items()
        ]
        items: list[str] = []
        token: str | None = None
        with _mapped(f"AWS pricing GetProducts {key.sku} {key.region}"):
            for _ in range(_MAX_PAGES):
                extra = {"NextToken": token} if token else {}
                page = client.get_products(
                    ServiceCode="AmazonEC2", FormatVersion="aws_v1", Filters=filters, **extra
                )
                items += page["PriceList"]
                token = page.get("NextToken")
                if not token:
                    break
            else:
                raise PriceSourceError(f"AWS pricing GetProducts: over {_MAX_PAGES} pages")
            found = _on_demand_usd(items)
        if found is None:
            return []
        usd, effective, attributes = found
        return [
            Price(
                key=key,
                usd_per_hour=usd,
                gpu="",
                gpu_count=int(attributes.get("gpu", "0") or 0),
                source=f"AWS Price List Query API (GetProducts via {self._pricing_region})",
                as_of=effective,
                live=True,
                fetched_at=None,
                note="Linux, shared tenancy",
            )
        ]

    def _spot(self, region: str, keys: Sequence[PriceKey]) -> list[Price]:
        client = self._clients["ec2", region]
        history: list[dict[str, Any]] = []
        token: str | None = None
        start = self._now() - _SPOT_WINDOW  # one window for every page
        with _mapped(f"EC2 DescribeSpotPriceHistory {region}"):
            for _ in range(_MAX_PAGES):
                extra = {"NextToken": token} if token else {}
                page = client.describe_spot_price_history(
                    InstanceTypes=sorted({k.sku for k in keys}),
                    ProductDescriptions=["Linux/UNIX"],
                    StartTime=start,
                    **extra,
                )
                history += page["SpotPriceHistory"]
                token = page.get("NextToken")
                if not token:
                    break
            else:
                raise PriceSourceError(
                    f"EC2 DescribeSpotPriceHistory {region}: over {_MAX_PAGES} pages"
                )
        prices = []
        for key in keys:
            found = _lowest_spot([r for r in history if r["InstanceType"] == key.sku])
            if found is None:
                continue
            usd, stamp, az = found
            prices.append(
                Price(
                    key=key,
                    usd_per_hour=usd,
                    gpu="",
                    gpu_count=0,
                    source=f"EC2 DescribeSpotPriceHistory ({region}, Linux/UNIX)",
                    as_of=stamp,
                    live=True,
                    fetched_at=None,
                    note=f"lowest current price over the region's AZs ({az})",
                )
            )
        return prices
