"""Measured speed: a ``gpufan profile`` table, and the seconds a call takes according to it.

Pure, and on the wire's floor because both sides read it, as they read ``config.pbtxt``: the
worker cuts batches at the size measured fastest per item, the cost model prices with it.

The table is a CSV (``{repository}/{model}/profile.csv``, written by ``gpufan profile``), one row
per (accelerator, variant, batch size, concurrency) cell with the items/s and latency measured
there, the date, the target and the host. The cost model prefers it to the spec sheet for that
model on that accelerator: per-call seconds are interpolated linearly in the batch size between
measured sizes (from the lowest concurrency measured, the one that shows a call's own time
rather than queueing), and extended past the ends along the nearest segment, never below the
per-item time of the largest measured batch. The EWMA correction still applies on top, for drift.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.errors import ConfigError

__all__ = [
    "COLUMNS",
    "PROFILE_FILE",
    "MeasuredProfile",
    "MeasuredRow",
    "parse_profile_csv",
    "parse_profile_tables",
    "profile_csv",
    "read_rows",
]

PROFILE_FILE = "profile.csv"  # {repository}/{model}/profile.csv

COLUMNS = (
    "date", "model", "target", "host", "accelerator", "variant", "batch_size", "concurrency",
    "items_per_s", "p50_ms", "p99_ms", "gpu_memory_bytes",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MeasuredRow:
    """One cell of a sweep; ``gpu_memory_bytes`` None where NVML did not answer."""

    date: str
    model: str
    target: str
    host: str
    accelerator: str
    variant: str
    batch_size: int
    concurrency: int
    items_per_s: float
    p50_ms: float
    p99_ms: float
    gpu_memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class MeasuredProfile:
    """The rows for one model on one accelerator (one variant), as per-call seconds by batch."""

    accelerator: str
    variant: str
    date: str
    host: str
    points: tuple[tuple[int, float], ...]  # (batch size, seconds per call), sorted by batch

    @property
    def source(self) -> str:
        """What ``gpufan plan`` and the placement report print for the speed used."""
        return f"measured {self.date} on {self.host} ({self.accelerator}, {self.variant})"

    def fastest_batch(self, limit: int) -> int:
        """The measured batch size (at most ``limit``) with the most items per second: where a
        worker should cut its batches (on a CPU a batch of 32 can be slower per item than 8)."""
        fitting = [(b, s) for b, s in self.points if b <= limit] or [self.points[0]]
        return max(fitting, key=lambda p: p[0] / p[1])[0]

    def seconds(self, items: int) -> float:
        """Seconds one call of ``items`` items takes, interpolated between measured batches."""
        if items < 1:
            raise ValueError(f"items must be at least 1, got {items}")
        pts = self.points
        if len(pts) == 1:
            b, s = pts[0]
            return s * items / b
        lo = max((i for i, (b, _) in enumerate(pts) if b <= items), default=0)
        lo = min(lo, len(pts) - 2)
        (b0, s0), (b1, s1) = pts[lo], pts[lo + 1]
        seconds = s0 + (s1 - s0) * (items - b0) / (b1 - b0)
        floor = items * pts[-1][1] / pts[-1][0] if items > pts[-1][0] else 0.0
        return max(seconds, floor, 1e-9)


def _row(where: str, line: int, raw: Mapping[str, str]) -> MeasuredRow:
    try:
        memory = raw.get("gpu_memory_bytes") or ""
        row = MeasuredRow(
            raw["date"], raw["model"], raw["target"], raw["host"], raw["accelerator"],
            raw["variant"] or "fp32", int(raw["batch_size"]), int(raw["concurrency"]),
            float(raw["items_per_s"]), float(raw["p50_ms"]), float(raw["p99_ms"]),
            int(memory) if memory else None,
        )  # fmt: skip
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{where}:{line}: {type(e).__name__}: {e}") from None
    if (
        row.batch_size < 1
        or row.concurrency < 1
        or not (math.isfinite(row.items_per_s) and row.items_per_s > 0)
    ):
        raise ConfigError(f"{where}:{line}: batch_size, concurrency and items_per_s must be > 0")
    return row


def parse_profile_csv(text: str, where: str, variant: str = "fp32") -> dict[str, MeasuredProfile]:
    """accelerator -> its measured profile for ``variant``, from a ``gpufan profile`` CSV.

    Raises:
        ConfigError: a missing column or a bad value, naming the file and line.
    """
    return {acc: p for (acc, v), p in parse_profile_tables(text, where).items() if v == variant}


def read_rows(text: str, where: str) -> list[MeasuredRow]:
    """Every row of a ``gpufan profile`` CSV, checked.

    Raises:
        ConfigError: a missing column or a bad value, naming the file and line.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = sorted(set(COLUMNS) - set(reader.fieldnames or ()))
    if missing:
        raise ConfigError(f"{where}: missing columns {missing}")
    return [_row(where, i + 2, raw) for i, raw in enumerate(reader)]


def parse_profile_tables(text: str, where: str) -> dict[tuple[str, str], MeasuredProfile]:
    """(accelerator, variant) -> its measured profile, for every pair the CSV holds.

    Raises:
        ConfigError: a missing column or a bad value, naming the file and line.
    """
    rows = read_rows(text, where)
    out: dict[tuple[str, str], MeasuredProfile] = {}
    for acc, variant in sorted({(r.accelerator, r.variant) for r in rows}):
        mine = [r for r in rows if r.accelerator == acc and r.variant == variant]
        lowest = min(r.concurrency for r in mine)
        latest = max(r.date for r in mine)
        by_batch: dict[int, MeasuredRow] = {}
        for r in mine:
            if r.concurrency == lowest and r.date == latest:
                by_batch[r.batch_size] = r  # the last row of a repeated cell wins
        points = tuple((b, b / r.items_per_s) for b, r in sorted(by_batch.items()))
        host = next(iter(by_batch.values())).host
        out[acc, variant] = MeasuredProfile(acc, variant, latest, host, points)
    return out


def profile_csv(rows: Sequence[MeasuredRow]) -> str:
    """The CSV text of ``rows``, header first (``gpufan profile`` writes it)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([
            r.date, r.model, r.target, r.host, r.accelerator, r.variant, r.batch_size,
            r.concurrency, f"{r.items_per_s:.6g}", f"{r.p50_ms:.4g}", f"{r.p99_ms:.4g}",
            "" if r.gpu_memory_bytes is None else r.gpu_memory_bytes,
        ])  # fmt: skip
    return buf.getvalue()
