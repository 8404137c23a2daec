"""Accelerators, and how fast one runs a profiled model.

The figures are data, not code: ``core/data/accelerators.csv`` holds one row per accelerator with
its spec-sheet peaks, an assumed efficiency and per-call overhead, a source and a date. One loader
parses it once; one lookup, ``accelerator(name)``, accepts the names of the price tables
(``T4``, ``A100-40GB``, ``RTX PRO 6000``) and the clouds' spellings of them (``nvidia-l4``,
``nvidia-tesla-t4``), and names the valid ones when given anything else.

The throughput model is deliberately simple — a spec sheet is a prior, not a measurement::

    seconds(batch) = call_overhead + batch x flops_per_item / (fp32_peak x efficiency)

and every target's measured rate pulls its predictions toward what it really does.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from types import MappingProxyType

from core.errors import ConfigError
from core.planning.profile import ModelProfile
from core.planning.tables import load_table
from core.wire.profiletable import MeasuredProfile

__all__ = ["Accelerator", "ThroughputModel", "accelerator", "accelerator_names"]

# Cloud spellings that normalising (lower case, no punctuation, no "nvidia"/"tesla") cannot reach:
# GCP's accelerator type "nvidia-tesla-a100" is the 40 GB part; "nvidia-h100-80gb" is the H100.
_ALIASES = {"a100": "a10040gb", "h10080gb": "h100"}


@dataclass(frozen=True, slots=True)
class Accelerator:
    """A row of ``accelerators.csv``: peaks from the spec sheet, assumptions marked in ``note``."""

    name: str
    fp32_tflops: float
    fp16_tflops: float  # tensor-core dense peak where the part has one
    memory_gb: float
    memory_gbps: float
    efficiency: float  # share of the FP32 peak an ORT session sustains: an assumption
    call_overhead_us: float  # fixed cost of one session call: an assumption (fitted for cpu)
    source: str
    as_of: date
    note: str

    @property
    def effective_flops(self) -> float:
        """FP32 FLOP/s an ONNX Runtime session is assumed to sustain: peak x efficiency."""
        return self.fp32_tflops * 1e12 * self.efficiency

    def seconds(self, profile: ModelProfile, items: int) -> float:
        """Spec-sheet time of one call over ``items`` items, before any telemetry correction."""
        return self.call_overhead_us * 1e-6 + items * profile.flops_per_item / self.effective_flops


def _key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower()).removeprefix("nvidia").removeprefix("tesla")
    return _ALIASES.get(key, key)


def _parse(where: str, row: Mapping[str, str]) -> Accelerator:
    acc = Accelerator(
        name=row["name"].strip(),
        fp32_tflops=float(row["fp32_tflops"]),
        fp16_tflops=float(row["fp16_tflops"]),
        memory_gb=float(row["memory_gb"]),
        memory_gbps=float(row["memory_gbps"]),
        efficiency=float(row["efficiency"]),
        call_overhead_us=float(row["call_overhead_us"]),
        source=row["source"].strip(),
        as_of=date.fromisoformat(row["as_of"]),
        note=row["note"].strip(),
    )
    if not (acc.source and acc.note):
        raise ConfigError(f"{where}: {acc.name!r} needs a source and a note")
    if not 0 < acc.efficiency <= 1 or not all(
        math.isfinite(v) and v > 0 for v in (acc.fp32_tflops, acc.fp16_tflops)
    ):
        raise ConfigError(f"{where}: {acc.name!r} needs peaks > 0 and an efficiency in (0, 1]")
    return acc


@functools.cache
def _table() -> Mapping[str, Accelerator]:
    """Every bundled accelerator by normalised name, parsed once."""
    return load_table("accelerators.csv", _parse, column="name", what="accelerator", key=_key)


def accelerator_names() -> tuple[str, ...]:
    """The canonical names, as the price tables spell them."""
    return tuple(a.name for a in _table().values())


def accelerator(name: str) -> Accelerator:
    """Look an accelerator up by name, ignoring case, punctuation and an ``nvidia-`` prefix.

    Raises:
        ConfigError: the name is unknown; the message lists the valid names.
    """
    try:
        return _table()[_key(name)]
    except KeyError:
        valid = ", ".join(accelerator_names())
        raise ConfigError(f"unknown accelerator {name!r}; valid: {valid}") from None


@dataclass(frozen=True, slots=True)
class ThroughputModel:
    """Predicted items per second per target, corrected by what each target was measured doing.

    A value: ``observe`` returns a new model, so a caller swaps it in whole and tests need no
    clock. Per target it keeps an EWMA of measured / predicted rate, starting at 1 (the spec sheet
    is the prior), and multiplies that target's predictions by it. The ratio is kept per target,
    not per accelerator, because what differs in practice is the host around the card: its CPU,
    its PCIe link, its neighbours.

    ``alpha`` is the weight of each new observation: 0.2 moves a fifth of the way per observation,
    so one cold-start outlier shifts a target by at most 20%, and ten observations leave about
    a tenth (0.8^10) of the spec sheet's error.
    """

    alpha: float = 0.2
    ratios: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")

    def predict_items_per_s(
        self,
        profile: ModelProfile | None,
        accelerator_name: str,
        batch_items: int,
        target_name: str | None = None,
        measured: MeasuredProfile | None = None,
    ) -> float:
        """Items per second in calls of ``batch_items`` items; corrected if a target is named."""
        return batch_items / self.predict_seconds(
            profile, target_name, accelerator_name, batch_items, measured
        )

    def predict_seconds(
        self,
        profile: ModelProfile | None,
        target_name: str | None,
        accelerator_name: str,
        items: int,
        measured: MeasuredProfile | None = None,
    ) -> float:
        """Seconds one call of ``items`` items takes on the target: from ``measured`` (a
        ``gpufan profile`` table for this model and accelerator) when given, else the
        accelerator's spec sheet; corrected by the target's observations if it has any.

        Raises:
            ValueError: ``items`` below 1, or neither a profile nor a measured table.
        """
        if items < 1:
            raise ValueError(f"items must be at least 1, got {items}")
        if measured is not None:
            seconds = measured.seconds(items)
        elif profile is not None:
            seconds = accelerator(accelerator_name).seconds(profile, items)
        else:
            raise ValueError("no profile and no measured table: the speed is unknown")
        return seconds / self.ratios.get(target_name, 1.0) if target_name else seconds

    def observe(
        self,
        target_name: str,
        accelerator_name: str,
        profile: ModelProfile | None,
        measured_items_per_s: float,
        *,
        batch_items: int,
        measured: MeasuredProfile | None = None,
    ) -> ThroughputModel:
        """Fold one measurement into the target's correction; returns the updated model.

        ``batch_items`` is the size of the calls measured: the spec-sheet rate it is compared
        with depends on it through the per-call overhead.
        """
        if not (math.isfinite(measured_items_per_s) and measured_items_per_s > 0):
            raise ValueError(f"measured rate must be positive, got {measured_items_per_s}")
        predicted = self.predict_items_per_s(
            profile, accelerator_name, batch_items, measured=measured
        )
        prior = self.ratios.get(target_name, 1.0)
        ratio = prior + self.alpha * (measured_items_per_s / predicted - prior)
        return replace(self, ratios=MappingProxyType({**self.ratios, target_name: ratio}))
