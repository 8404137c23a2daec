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

CSV traces (``parse_trace_csv``), recognised by their header:

- ``timestamp,requests``: requests counted at each timestamp (ISO 8601 or Unix seconds), summed
  into intervals counted from the first timestamp;
- ``timestamp`` alone, or with columns other than ``requests`` (the Azure LLM inference traces'
  ``TIMESTAMP,ContextTokens,GeneratedTokens``): one request per row, at its timestamp;
- ``minute,items``: items in each minute (minute index from 0); requests = items /
  ``items_per_request``;
- ``HashOwner,HashApp,HashFunction,Trigger,1,2,...``: the Azure Functions 2019 per-function
  invocation counts, one column per minute of the day, summed over the functions (rows); each
  invocation is one item.

``scale`` multiplies the load of any of them (a small trace made GPU-sized), and is named in
the trace's source.

A CSV brings no history: its forecasts start from the EWMA fallback.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
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


def parse_trace_csv(
    text: str, *, items_per_request: int = 8, where: str = "trace", scale: float = 1.0
) -> Trace:
    """A trace from CSV text (layouts in the module docstring), in one-minute intervals.

    Raises:
        ValueError: an unknown header, a row that does not parse, or no rows; names the file,
            the line and the problem.
    """
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"{where}: the scale must be a finite number > 0, got {scale}")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    requests: np.ndarray
    if header[:4] == _AZURE_FUNCTIONS:
        items = _per_function_minutes(reader, len(header) - 4, where)
        requests = items / items_per_request
    elif header == ["minute", "items"] or header[:1] == ["timestamp"]:
        per_request = header[0] == "timestamp" and header[1:2] != ["requests"]
        points = _points(reader, per_request=per_request, where=where)
        keys = np.array([p[0] for p in points])
        values = np.array([p[1] for p in points])
        if header[0] == "timestamp":
            index = ((keys - keys.min()) // MINUTE_S).astype(int)
            requests = np.bincount(index, weights=values)
        else:
            index = keys.astype(int) - int(keys.min())
            requests = np.bincount(index, weights=values / items_per_request)
    else:
        raise ValueError(
            f"{where}: header must be 'timestamp,requests', 'timestamp[,...]' (one request per "
            "row), 'minute,items' or 'HashOwner,HashApp,HashFunction,Trigger,1,2,...'"
        )
    source = where if scale == 1 else f"{where} x {scale:g}"
    return Trace(requests * scale / MINUTE_S, np.zeros(0), MINUTE_S, source)


_AZURE_FUNCTIONS = ["hashowner", "hashapp", "hashfunction", "trigger"]


def _points(
    rows: Iterable[list[str]], *, per_request: bool, where: str
) -> list[tuple[float, float]]:
    """(time or minute, count) of each row; with ``per_request`` every row counts one."""
    points: list[tuple[float, float]] = []
    for line, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            key = _seconds(row[0].strip())
            value = 1.0 if per_request else float(row[1])
        except (ValueError, IndexError):
            raise ValueError(f"{where} line {line}: cannot read {row!r:.80}") from None
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{where} line {line}: counts must be finite and >= 0")
        points.append((key, value))
    if not points:
        raise ValueError(f"{where}: no rows")
    return points


def _per_function_minutes(rows: Iterable[list[str]], minutes: int, where: str) -> np.ndarray:
    """Invocations per minute summed over the functions (one row each)."""
    if minutes < 1:
        raise ValueError(f"{where}: the per-function layout needs minute columns 1, 2, ...")
    total = np.zeros(minutes)
    count = 0
    for line, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != minutes + 4:
            raise ValueError(
                f"{where} line {line}: {len(row)} columns, the header has {minutes + 4}"
            )
        try:
            values = np.array(row[4:], dtype=float)
        except ValueError:
            bad = next(i for i, v in enumerate(row[4:]) if not _is_number(v))
            raise ValueError(
                f"{where} line {line}, minute {bad + 1}: cannot read {row[4 + bad]!r:.40}"
            ) from None
        if (values < 0).any() or not np.isfinite(values).all():
            bad = int(np.argmax((values < 0) | ~np.isfinite(values)))
            raise ValueError(
                f"{where} line {line}, minute {bad + 1}: counts must be finite and >= 0"
            )
        total += values
        count += 1
    if not count:
        raise ValueError(f"{where}: no rows")
    return total


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
