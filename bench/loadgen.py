"""A bounded closed-loop HTTP load generator (aiohttp: the fastest Python client measured here).

Each of ``concurrency`` coroutines sends the same pre-encoded request back to back until
``requests`` have been sent in total or ``time_limit_s`` has passed, whichever comes first.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    first_error: str | None
    latencies_s: tuple[float, ...] = ()  # of each successful request, in completion order

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1e3 if self.latencies_s else math.nan


async def drive(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    concurrency: int,
    requests: int,
    time_limit_s: float,
) -> LoadResult:
    """POST ``body`` to ``url`` under a closed loop; count successes and errors."""
    sent = 0
    errors = 0
    first_error: str | None = None
    latencies: list[float] = []
    deadline = time.perf_counter() + time_limit_s
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_client() -> None:
            nonlocal sent, errors, first_error
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                began = time.perf_counter()
                async with session.post(url, data=body, headers=dict(headers)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        first_error = first_error or f"{resp.status}: {(await resp.text())[:200]}"
                    else:
                        latencies.append(time.perf_counter() - began)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return LoadResult(sent - errors, errors, seconds, first_error, tuple(latencies))
