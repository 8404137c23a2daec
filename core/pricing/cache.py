"""Live prices with a TTL, and the snapshot whenever a source cannot answer.

``PriceCache.book(keys)`` fetches the keys it has no fresh figure for, one call per cloud, all
clouds at once, each bounded by ``timeout_s``. A source that fails or times out never fails the
request: its keys get the snapshot's figure, and the returned book's ``stale()`` names each one,
its date and why. A failure is remembered for ``retry_after_s`` so a dead API costs one timeout
per interval, not one per request. Only a key that neither a source nor the snapshot prices raises.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from core.errors import PriceSourceError
from core.pricing.model import Price, PriceBook, PriceKey, PriceSource

__all__ = ["PriceCache"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Entry:
    price: Price | None  # None: the last fetch did not price this key
    reason: str  # why not, when price is None
    expires: float


class PriceCache:
    """Per-key live prices over a snapshot.

    Args:
        sources: the live source of each cloud (``{"aws": AwsPriceSource(), ...}``); clouds
            without one are priced from the snapshot, and those figures are not stale.
        snapshot: the fallback book (``load_snapshot()``).
        ttl_s: how long a live figure is reused.
        timeout_s: the longest one source's fetch may take before its keys fall back.
        retry_after_s: how long a failed key is served from the snapshot before the next try.
        clock: seconds, wall-clock time (it stamps ``Price.fetched_at``); injected for tests.
    """

    def __init__(
        self,
        sources: Mapping[str, PriceSource],
        snapshot: PriceBook,
        *,
        ttl_s: float = 3600.0,
        timeout_s: float = 10.0,
        retry_after_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sources = dict(sources)
        self._snapshot = snapshot
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._entries: dict[PriceKey, _Entry] = {}
        # One fetch per cloud at a time: concurrent requests wait for it, then find it cached.
        self._locks = {cloud: asyncio.Lock() for cloud in self._sources}
        self._gpus = {
            (p.key.cloud, p.key.sku): (p.gpu, p.gpu_count) for p in snapshot.prices.values()
        }

    async def book(self, keys: Iterable[PriceKey]) -> PriceBook:
        """A book with a figure for every key: live when fresh or fetched now, else the snapshot.

        Raises:
            PriceNotFound: a key that no live source and not the snapshot prices.
        """
        wanted = list(dict.fromkeys(keys))
        by_cloud: dict[str, list[PriceKey]] = {}
        for key in wanted:
            if key.cloud in self._sources:
                by_cloud.setdefault(key.cloud, []).append(key)
        await asyncio.gather(*(self._refresh(cloud, ks) for cloud, ks in by_cloud.items()))
        live: list[Price] = []
        fallbacks: dict[PriceKey, str] = {}
        for key in wanted:
            entry = self._entries.get(key)
            if entry is not None and entry.price is not None:
                live.append(entry.price)
                continue
            self._snapshot.price(key)  # raises PriceNotFound, listing the alternatives
            if entry is not None:
                fallbacks[key] = entry.reason
        return self._snapshot.overlay(live, fallbacks)

    async def _refresh(self, cloud: str, keys: Sequence[PriceKey]) -> None:
        """Fetch the keys of one cloud that have no fresh entry; record prices or the failure."""
        async with self._locks[cloud]:
            now = self._clock()
            due = [k for k in keys if k not in self._entries or self._entries[k].expires <= now]
            if not due:
                return
            got, reason = await self._fetch(cloud, due)
            now = self._clock()
            for key in due:
                price = got.get(key)
                if price is None:
                    entry = _Entry(
                        None, reason or f"{cloud} source offers no price", now + self._retry_after_s
                    )
                else:
                    entry = _Entry(self._stamped(price, now), "", now + self._ttl_s)
                self._entries[key] = entry

    async def _fetch(
        self, cloud: str, keys: Sequence[PriceKey]
    ) -> tuple[dict[PriceKey, Price], str]:
        """The live prices of ``keys``, or none and the reason the source failed."""
        source = self._sources[cloud]
        try:
            async with asyncio.timeout(self._timeout_s):
                prices = await source.fetch(keys)
        except TimeoutError:
            return {}, f"{source.name} source timed out after {self._timeout_s:g} s"
        except PriceSourceError as e:
            return {}, f"{source.name} source failed: {e}"
        except Exception as e:  # a source bug must not fail requests either; log it loudly
            log.exception("price source %s raised an unmapped error", source.name)
            return {}, f"{source.name} source failed: {type(e).__name__}: {e}"
        wanted = set(keys)
        return {p.key: p for p in prices if p.key in wanted}, ""

    def _stamped(self, price: Price, now: float) -> Price:
        """A live price with its fetch time, and the snapshot's GPU where the API had none."""
        gpu, count = price.gpu, price.gpu_count
        if not gpu or not count:
            snap_gpu, snap_count = self._gpus.get((price.key.cloud, price.key.sku), ("", 0))
            gpu, count = gpu or snap_gpu, count or snap_count
        return dataclasses.replace(price, gpu=gpu, gpu_count=count, live=True, fetched_at=now)
