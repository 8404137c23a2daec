"""The billing table: one sourced row per cloud backend, an explicit default for the rest."""

from __future__ import annotations

import pytest

from core.backends import backend_names
from core.planning.billing import DEFAULT, billing, billing_table


def test_every_row_is_sourced_and_every_named_backend_exists() -> None:
    table = billing_table()
    assert set(table) - {DEFAULT} <= set(backend_names())
    assert all(rule.source and rule.note and rule.as_of for rule in table.values())
    assert "ASSUMPTION" in table[DEFAULT].note  # a guess says it is one


@pytest.mark.parametrize(
    ("backend", "increment_s", "minimum_s"),
    [("cloudrun", 0.1, 0.0), ("batch", 1.0, 60.0), ("aca", 1.0, 0.0), ("aci", 1.0, 0.0)],
)
def test_cloud_backends_bill_as_their_pricing_pages_say(
    backend: str, increment_s: float, minimum_s: float
) -> None:
    rule = billing(backend)
    assert (rule.backend, rule.increment_s, rule.minimum_s) == (backend, increment_s, minimum_s)


def test_a_backend_the_table_does_not_name_takes_the_default_row() -> None:
    assert billing("http") is billing_table()[DEFAULT] and billing("local").increment_s == 1.0
