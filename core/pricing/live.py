"""The live price cache for a set of targets: one source per cloud they use, over the snapshot.

Shared by the front door (which refreshes it every TTL in the background) and ``gpufan plan
--live``. Sources import their SDKs only when they fetch, and a cloud whose source fails is priced
from the snapshot, flagged stale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aiohttp

from core.config import Target
from core.pricing.cache import PriceCache
from core.pricing.model import PriceBook, PriceKey, PriceSource

__all__ = ["live_cache", "priced_keys"]


def priced_keys(targets: Sequence[Target]) -> list[PriceKey]:
    """The price-book keys of the targets priced by SKU (not by an explicit usd_per_hour)."""
    return sorted(
        {
            PriceKey(t.cloud, t.region, t.sku, t.pricing)
            for t in targets
            if t.sku and t.pricing != "owned" and "usd_per_hour" not in t.model_fields_set
        }
    )


def live_cache(
    targets: Sequence[Target], snapshot: PriceBook, session: aiohttp.ClientSession, ttl_s: float
) -> PriceCache:
    """A cache with a live source for each cloud that a priced target is on."""
    from core.pricing.aws import AwsPriceSource
    from core.pricing.azure import AzurePriceSource
    from core.pricing.gcp import GcpPriceSource

    clouds = {k.cloud for k in priced_keys(targets)}
    makers: dict[str, Callable[[], PriceSource]] = {
        "aws": lambda: AwsPriceSource(),
        "azure": lambda: AzurePriceSource(session),
        "gcp": lambda: GcpPriceSource(),
    }
    sources: dict[str, PriceSource] = {c: makers[c]() for c in clouds if c in makers}
    return PriceCache(sources, snapshot, ttl_s=ttl_s)
