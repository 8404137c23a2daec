"""Prices: the bundled snapshot, live sources (one module per cloud) and the cache between them.

``import core.pricing`` needs no cloud SDK: ``core.pricing.aws`` and ``core.pricing.gcp`` import
boto3 and google-cloud-billing only when they fetch. Typical use::

    cache = PriceCache({"aws": AwsPriceSource(), "azure": AzurePriceSource(session)},
                       load_snapshot())
    book = await cache.book(keys)           # never fails because a source did
    book.price(PriceKey("aws", "us-east-1", "g4dn.xlarge", "spot")).usd_per_hour
    book.stale(date.today())                # the snapshot figures standing in for live ones
"""

from core.pricing.cache import PriceCache
from core.pricing.egress import EgressRate, EgressRow
from core.pricing.model import (
    PRICING_MODELS,
    Price,
    PriceBook,
    PriceKey,
    PriceSource,
    PricingModel,
    StaleFigure,
)
from core.pricing.snapshot import load_snapshot

__all__ = [
    "PRICING_MODELS",
    "EgressRate",
    "EgressRow",
    "Price",
    "PriceBook",
    "PriceCache",
    "PriceKey",
    "PriceSource",
    "PricingModel",
    "StaleFigure",
    "load_snapshot",
]
