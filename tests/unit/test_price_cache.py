"""PriceCache with a fake clock and in-process sources: TTL, fallbacks, staleness, no waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date

import pytest

from core.errors import PriceNotFound, PriceSourceError
from core.pricing import Price, PriceCache, PriceKey, load_snapshot

TODAY = date(2026, 11, 25)
G4DN = PriceKey("aws", "us-east-1", "g4dn.xlarge", "on_demand")
G5 = PriceKey("aws", "us-east-1", "g5.xlarge", "on_demand")
AZURE = PriceKey("azure", "eastus", "Standard_NC4as_T4_v3", "on_demand")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """A ``PriceSource`` answering from a dict; ``fail`` makes it raise, ``hang`` never return."""

    name = "aws"

    def __init__(self, prices: dict[PriceKey, float]) -> None:
        self.prices = prices
        self.calls: list[list[PriceKey]] = []
        self.fail: Exception | None = None
        self.hang = False

    async def fetch(self, keys: Sequence[PriceKey]) -> list[Price]:
        self.calls.append(list(keys))
        await asyncio.sleep(0)
        if self.hang:
            await asyncio.sleep(60)
        if self.fail is not None:
            raise self.fail
        return [
            Price(k, self.prices[k], "", 0, "fake", "2026-11-25", live=True, fetched_at=None)
            for k in keys
            if k in self.prices
        ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source() -> FakeSource:
    return FakeSource({G4DN: 0.5, G5: 1.0})


@pytest.fixture
def cache(source: FakeSource, clock: Clock) -> PriceCache:
    return PriceCache(
        {"aws": source}, load_snapshot(), ttl_s=300, timeout_s=0.05, retry_after_s=30, clock=clock
    )


async def test_fresh_figures_are_not_fetched_again(
    cache: PriceCache, source: FakeSource, clock: Clock
) -> None:
    first = await cache.book([G4DN, G5])
    clock.now += 299
    second = await cache.book([G4DN])
    assert source.calls == [[G4DN, G5]]
    assert second.price(G4DN) == first.price(G4DN)
    price = first.price(G4DN)
    assert (price.usd_per_hour, price.live, price.fetched_at) == (0.5, True, 1_000.0)
    assert (price.gpu, price.gpu_count) == ("T4", 1)  # filled from the snapshot's row


async def test_expired_figures_are_fetched_again(
    cache: PriceCache, source: FakeSource, clock: Clock
) -> None:
    await cache.book([G4DN])
    clock.now += 300
    source.prices[G4DN] = 0.45
    book = await cache.book([G4DN, G5])
    assert source.calls == [[G4DN], [G4DN, G5]]
    assert book.price(G4DN).usd_per_hour == 0.45


async def test_a_failing_source_falls_back_to_the_stale_snapshot(
    cache: PriceCache, source: FakeSource, clock: Clock
) -> None:
    source.fail = PriceSourceError("GetProducts: 500")
    book = await cache.book([G4DN])
    assert book.price(G4DN) == load_snapshot().price(G4DN)
    [stale] = book.stale(TODAY)
    assert (stale.key, stale.as_of, stale.age_days) == (G4DN, "2026-09-06", 80)
    assert "GetProducts: 500" in stale.reason

    # the failure is remembered: no second try inside retry_after_s, a try after it
    clock.now += 29
    assert (await cache.book([G4DN])).stale(TODAY) != []
    assert len(source.calls) == 1
    source.fail = None
    clock.now += 1
    book = await cache.book([G4DN])
    assert len(source.calls) == 2 and book.stale(TODAY) == [] and book.price(G4DN).live


async def test_a_hanging_source_times_out_to_the_snapshot(
    cache: PriceCache, source: FakeSource
) -> None:
    source.hang = True
    book = await cache.book([G4DN])
    [stale] = book.stale(TODAY)
    assert "timed out after 0.05 s" in stale.reason
    assert not book.price(G4DN).live


async def test_an_unmapped_source_bug_never_fails_the_request(
    cache: PriceCache, source: FakeSource
) -> None:
    source.fail = KeyError("terms")
    book = await cache.book([G4DN])
    assert "KeyError" in book.stale(TODAY)[0].reason


async def test_a_key_the_source_does_not_offer_is_stale_too(cache: PriceCache) -> None:
    p3 = PriceKey("aws", "us-east-1", "p3.2xlarge", "on_demand")
    book = await cache.book([p3])
    assert book.price(p3).usd_per_hour == 3.06
    assert "offers no price" in book.stale(TODAY)[0].reason


async def test_a_cloud_without_a_source_uses_the_snapshot_without_flagging(
    cache: PriceCache,
) -> None:
    book = await cache.book([AZURE])
    assert book.price(AZURE).usd_per_hour == 0.526 and book.stale(TODAY) == []


async def test_a_key_found_nowhere_raises_price_not_found(
    cache: PriceCache, source: FakeSource
) -> None:
    source.fail = PriceSourceError("down")
    with pytest.raises(PriceNotFound, match="eu-west-2"):
        await cache.book([PriceKey("aws", "eu-west-2", "g4dn.xlarge", "on_demand")])


async def test_a_live_key_missing_from_the_snapshot_is_still_priced(
    cache: PriceCache, source: FakeSource
) -> None:
    g6e = PriceKey("aws", "us-west-2", "g6e.xlarge", "on_demand")
    source.prices[g6e] = 1.861
    book = await cache.book([g6e])
    assert book.price(g6e).usd_per_hour == 1.861
    assert (book.price(g6e).gpu, book.price(g6e).gpu_count) == ("", 0)  # nothing to fill from


async def test_concurrent_requests_share_one_fetch(cache: PriceCache, source: FakeSource) -> None:
    books = await asyncio.gather(*(cache.book([G4DN]) for _ in range(5)))
    assert len(source.calls) == 1
    assert {b.price(G4DN).usd_per_hour for b in books} == {0.5}
