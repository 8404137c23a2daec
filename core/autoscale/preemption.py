"""Observed spot lifetimes, so the simulator can reclaim spot instances as a real record did.

A constant rate hides how uneven spot lifetimes are: in the bundled record half the p3.2xlarge
spot instances were reclaimed within 40 minutes, and the longest lived 22 hours.
``core/data/spot_preemptions.csv`` holds, per probed zone, the lifetime of every spot instance a
single-node preemption trace of skypilot-org/spot-traces saw (launch to preemption, to the
trace's tick), derived by ``scripts/spot_preemptions.py``; ``core/data/README.md`` says what it
holds and lacks, the source's format and its (missing) licence.

What is there (commit 221da1a): AWS ``p3.2xlarge`` (one V100) in us-east-1c/1f and us-west-2b/2c
over 7 days from 2023-04-22, and GCP ``c3-highcpu-88`` (CPU only) in us-central1-a/b/c and
us-east1-b over 2 days from 2023-04-30. There is no T4/g4dn, L4/g2, A100 or Azure record: for
those ``record_for`` answers None, and using another kind as a proxy is the caller's explicit
choice, never made here.

Pure; the survival curve is statsmodels' (imported on the first draw), and the one I/O is the
bundled table, read once (``core.planning.tables``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from core.errors import ConfigError
from core.planning.tables import load_table

__all__ = [
    "PreemptionRecord",
    "draw_lifetimes",
    "kaplan_meier",
    "load_preemptions",
    "record_for",
    "zone_records",
]

FILENAME = "spot_preemptions.csv"


def kaplan_meier(
    lifetimes_s: NDArray[np.float64], preempted: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The Kaplan-Meier survival curve (statsmodels' ``SurvfuncRight``; ``gpufan[forecast]``):
    each distinct preemption time and S just after it.

    A censored lifetime (``preempted`` False: still running when the trace ended) counts as at
    risk up to its time and is never a preemption. S stays at its last value beyond the last
    preemption: the record cannot say when the instances that outlived it were reclaimed.
    """
    if not preempted.any():
        return np.zeros(0), np.zeros(0)
    from statsmodels.duration.survfunc import SurvfuncRight

    curve = SurvfuncRight(lifetimes_s, preempted.astype(np.float64))
    times: NDArray[np.float64] = np.asarray(curve.surv_times, dtype=np.float64)
    survival: NDArray[np.float64] = np.asarray(curve.surv_prob, dtype=np.float64)
    return times, survival


@dataclass(frozen=True, eq=False)
class PreemptionRecord:
    """One spot kind's observed lifetimes (seconds, launch to preemption) in some zones.

    ``zones[i]`` is where ``lifetimes_s[i]`` was seen; ``preempted[i]`` False means the instance
    was still running when its trace ended (right-censored: it lived at least that long). Each
    lifetime is good to ``resolution_s`` (the coarsest trace tick).
    """

    kind: str  # "<cloud>:<sku>"
    accelerator: str  # "V100"; "none" for a CPU-only kind
    zones: tuple[str, ...]
    lifetimes_s: NDArray[np.float64]
    preempted: NDArray[np.bool_]
    resolution_s: float
    source: str
    as_of: date

    def __post_init__(self) -> None:
        life = np.array(self.lifetimes_s, dtype=np.float64)
        hit = np.array(self.preempted, dtype=np.bool_)
        if not (len(life) == len(hit) == len(self.zones) > 0):
            raise ValueError(f"{self.kind}: one zone and one flag per lifetime, at least one")
        if not (np.all(np.isfinite(life)) and np.all(life > 0)):
            raise ValueError(f"{self.kind}: lifetimes are finite and positive")
        life.flags.writeable = hit.flags.writeable = False
        object.__setattr__(self, "lifetimes_s", life)
        object.__setattr__(self, "preempted", hit)

    @functools.cached_property
    def curve(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``kaplan_meier`` of the lifetimes, worked out on the first draw."""
        return kaplan_meier(self.lifetimes_s, self.preempted)

    @property
    def events(self) -> int:
        """Preemptions seen."""
        return int(self.preempted.sum())

    @property
    def exposure_h(self) -> float:
        """Instance-hours observed running, censored lifetimes included."""
        return float(self.lifetimes_s.sum()) / 3600.0

    @property
    def hazard_per_hour(self) -> float:
        """Preemptions per instance-hour: the constant rate that best fits the record (its MLE
        under censoring). Zero events give 0.0, which means "none seen", not "never"."""
        return self.events / self.exposure_h

    def in_region(self, region: str) -> PreemptionRecord | None:
        """The lifetimes seen in ``region``'s zones ("us-east-1" -> us-east-1c; "us-central1" ->
        us-central1-a), or None where the record has no zone there."""
        pattern = re.compile(re.escape(region.strip().lower()) + r"-?[a-z]")
        keep = np.array([pattern.fullmatch(z) is not None for z in self.zones])
        if not keep.any():
            return None
        zones = tuple(z for z, k in zip(self.zones, keep, strict=True) if k)
        sources = [s for s in self.source.split("; ") if any(f"/{z}_" in s for z in zones)]
        return PreemptionRecord(
            kind=self.kind,
            accelerator=self.accelerator,
            zones=zones,
            lifetimes_s=self.lifetimes_s[keep],
            preempted=self.preempted[keep],
            resolution_s=self.resolution_s,
            source="; ".join(sources) or self.source,  # a source path names its zone
            as_of=self.as_of,
        )


def draw_lifetimes(
    record: PreemptionRecord, n: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Lifetimes (seconds) for ``n`` newly launched instances, drawn from the record.

    Resampling the observed lifetimes would be biased short by the censored ones (they lived
    longer than they show), so a draw is taken from the Kaplan-Meier estimate instead: the same
    resampling with each censored lifetime's share handed on to the longer ones (Efron's
    redistribute-to-the-right). A draw is therefore always an observed preemption time, or
    ``inf`` with the probability that survival outlasts every preemption seen: "not reclaimed
    within what the record can tell". Past the record's longest lifetime (``lifetimes_s.max()``)
    the record says nothing, so a simulation that long is extrapolating.
    """
    times, survival = record.curve
    # inverse transform: the first time at which S <= u (survival is non-increasing)
    at = np.searchsorted(-survival, -rng.random(n), side="left")
    return np.append(times, math.inf)[at]


def _parse(where: str, row: Mapping[str, str]) -> PreemptionRecord:
    cloud, sku, zone = (row[c].strip().lower() for c in ("cloud", "sku", "zone"))
    items = row["lifetimes_s"].split()
    if row["trace"].strip().lower() != f"{cloud}:{sku}:{zone}" or not items:
        raise ConfigError(f"{where}: trace must be <cloud>:<sku>:<zone> and have lifetimes")
    source = [row[c].strip() for c in ("source_repo", "source_commit", "source_path")]
    if not all(source) or not row["accelerator"].strip():
        raise ConfigError(f"{where}: every row needs an accelerator and its source")
    life = np.array([float(s.removesuffix("+")) for s in items])
    gap_s = float(row["gap_s"])
    if not gap_s > 0 or life.sum() > float(row["span_s"]):
        raise ConfigError(f"{where}: gap_s must be > 0 and the lifetimes fit in span_s")
    return PreemptionRecord(  # its ValueError becomes load_table's ConfigError
        kind=f"{cloud}:{sku}",
        accelerator=row["accelerator"].strip(),
        zones=(zone,) * len(items),
        lifetimes_s=life,
        preempted=np.array([not s.endswith("+") for s in items]),
        resolution_s=gap_s,
        source="{}@{}:{}".format(*source),
        as_of=date.fromisoformat(row["as_of"]),
    )


@functools.cache
def zone_records() -> Mapping[str, PreemptionRecord]:
    """Every bundled trace by ``"<cloud>:<sku>:<zone>"``, parsed once.

    Raises:
        ConfigError: a row does not parse, or two rows name one trace.
    """
    return load_table(FILENAME, _parse, column="trace", what="trace", key=str.lower)


def _pool(records: Sequence[PreemptionRecord]) -> PreemptionRecord:
    return PreemptionRecord(
        kind=records[0].kind,
        accelerator=records[0].accelerator,
        zones=tuple(z for r in records for z in r.zones),
        lifetimes_s=np.concatenate([r.lifetimes_s for r in records]),
        preempted=np.concatenate([r.preempted for r in records]),
        resolution_s=max(r.resolution_s for r in records),
        source="; ".join(r.source for r in records),
        as_of=max(r.as_of for r in records),
    )


@functools.cache
def load_preemptions() -> Mapping[str, PreemptionRecord]:
    """Each bundled spot kind (``"aws:p3.2xlarge"``), its zones' lifetimes pooled."""
    kinds: dict[str, list[PreemptionRecord]] = {}
    for record in zone_records().values():
        kinds.setdefault(record.kind, []).append(record)
    return MappingProxyType({kind: _pool(rs) for kind, rs in kinds.items()})


def record_for(cloud: str, sku: str, region: str | None = None) -> PreemptionRecord | None:
    """The record of exactly this cloud and SKU (in ``region``'s zones, if given), or None.

    None is the answer for every kind the traces do not hold (g4dn.xlarge, g2-standard-4, any
    Azure size): another kind's record is not substituted.
    """
    record = load_preemptions().get(f"{cloud.strip().lower()}:{sku.strip().lower()}")
    if record is None or region is None:
        return record
    return record.in_region(region)
