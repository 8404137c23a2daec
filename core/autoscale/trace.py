"""Request traces for the simulator: a seeded synthetic diurnal day with bursts, or a user CSV.

Pure: text in, arrays out; the seed is the only source of randomness.

A ``Trace`` holds the mean request rate (requests/s) of each interval to replay, plus the
intervals before it (``history``) that the forecaster may learn from, as the autoscaler's store
would hold them in production.

Synthetic trace (``synthetic_trace``): one-minute intervals; a daily shape
``1 + 0.55 sin(2 pi (d - 0.375)) + 0.15 sin(4 pi (d - 0.1))`` of the day fraction ``d`` (a trough
near 03:00, a peak in the early afternoon, about 0.3x to 1.7x the mean), a per-day level drawn
within +-5%, 3% log-normal noise per minute, and about four unforecastable bursts a day (start
uniform, 5-30 minutes long, +30-80% of the mean, two-minute ramps). Two days precede the replayed
hours as history, drawn from the same process.

CSV traces (``parse_trace_csv``), with a header naming one of two layouts:

- ``timestamp,requests``: requests counted at each timestamp (ISO 8601 or Unix seconds), summed
  into intervals counted from the first timestamp;
- ``minute,items``: items in each minute (minute index from 0); requests = items /
  ``items_per_request``.

A CSV brings no history: its forecasts start from the EWMA fallback.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

__all__ = ["Trace", "parse_trace_csv", "synthetic_trace"]

MINUTE_S = 60.0


@dataclass(frozen=True)
class Trace:
    """Mean requests/s per interval to replay (``rate``) and before it (``history``)."""

    rate: np.ndarray
    history: np.ndarray
    interval_s: float
    source: str

    @property
    def hours(self) -> float:
        return len(self.rate) * self.interval_s / 3600


def synthetic_trace(
    hours: float = 24.0, seed: int = 0, *, mean_rps: float = 4000.0, warmup_days: int = 2
) -> Trace:
    """A seeded diurnal trace with bursts (module docstring), in one-minute intervals.

    Raises:
        ValueError: ``hours`` is not positive.
    """
    if hours <= 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    rng = np.random.default_rng(seed)
    per_day = 1440
    n_hist, n = warmup_days * per_day, math.ceil(hours * 60)
    t = np.arange(n_hist + n)
    d = (t % per_day) / per_day
    shape = 1 + 0.55 * np.sin(2 * np.pi * (d - 0.375)) + 0.15 * np.sin(4 * np.pi * (d - 0.1))
    days = t // per_day
    level = 1 + 0.05 * rng.uniform(-1, 1, days.max() + 1)[days]
    noise = rng.lognormal(0.0, 0.03, t.size)
    rate = mean_rps * shape * level * noise
    for _ in range(rng.poisson(4 * (t.size / per_day))):
        start = int(rng.integers(0, t.size))
        length = int(rng.integers(5, 31))
        height = mean_rps * rng.uniform(0.3, 0.8)
        ramp = np.minimum(1.0, np.minimum(np.arange(length) + 1, length - np.arange(length)) / 2)
        stop = min(start + length, t.size)
        rate[start:stop] += height * ramp[: stop - start]
    return Trace(rate[n_hist:], rate[:n_hist], MINUTE_S, f"synthetic diurnal, seed {seed}")


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_trace_csv(text: str, *, items_per_request: int = 8, where: str = "trace") -> Trace:
    """A trace from CSV text (layouts in the module docstring), in one-minute intervals.

    Raises:
        ValueError: an unknown header, a row that does not parse, or no rows; names the line.
    """
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if header not in (["timestamp", "requests"], ["minute", "items"]):
        raise ValueError(f"{where}: header must be 'timestamp,requests' or 'minute,items'")
    points: list[tuple[float, float]] = []
    for line, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            key, value = _seconds(row[0].strip()), float(row[1])
        except (ValueError, IndexError):
            raise ValueError(f"{where} line {line}: cannot read {row!r}") from None
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{where} line {line}: counts must be finite and >= 0")
        points.append((key, value))
    if not points:
        raise ValueError(f"{where}: no rows")
    keys = np.array([p[0] for p in points])
    values = np.array([p[1] for p in points])
    if header[0] == "timestamp":
        index = ((keys - keys.min()) // MINUTE_S).astype(int)
        requests = values
    else:
        index = keys.astype(int) - int(keys.min())
        requests = values / items_per_request
    per_interval = np.bincount(index, weights=requests)
    return Trace(per_interval / MINUTE_S, np.zeros(0), MINUTE_S, where)
