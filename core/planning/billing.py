"""How each backend bills compute: the increment a run is rounded up to, and its minimum.

The figures are data, not code: ``core/data/billing.csv`` has one row per backend with its source
and date; the ``*`` row (an assumption, marked so) is for every backend the table does not name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from core.errors import ConfigError
from core.planning.tables import load_table

__all__ = ["DEFAULT", "Billing", "billing", "billing_table"]

DEFAULT = "*"


@dataclass(frozen=True, slots=True)
class Billing:
    """A backend's billing rule: a run of ``s`` seconds is billed
    ``max(minimum_s, ceil(s / increment_s) * increment_s)``."""

    backend: str
    increment_s: float
    minimum_s: float
    source: str
    as_of: date
    note: str


def _parse(where: str, row: Mapping[str, str]) -> Billing:
    rule = Billing(
        backend=row["backend"].strip(),
        increment_s=float(row["increment_s"]),
        minimum_s=float(row["minimum_s"]),
        source=row["source"].strip(),
        as_of=date.fromisoformat(row["as_of"]),
        note=row["note"].strip(),
    )
    if not (rule.backend and rule.source and rule.note):
        raise ConfigError(f"{where}: every row needs a backend, a source and a note")
    if not (math.isfinite(rule.increment_s) and rule.increment_s > 0 and rule.minimum_s >= 0):
        raise ConfigError(f"{where}: {rule.backend!r} needs increment_s > 0 and minimum_s >= 0")
    return rule


@functools.cache
def billing_table() -> Mapping[str, Billing]:
    """Every row by backend name, parsed once; it must have the ``*`` row."""
    table = load_table("billing.csv", _parse, column="backend", what="backend")
    if DEFAULT not in table:
        raise ConfigError(f"billing.csv has no {DEFAULT!r} row for the backends it does not name")
    return table


def billing(backend: str) -> Billing:
    """The backend's rule, or the ``*`` row's for a backend the table does not name."""
    table = billing_table()
    return table.get(backend, table[DEFAULT])
