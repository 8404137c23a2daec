"""Request limits: every parameter parsed once, each problem named, the policy as the default."""

from __future__ import annotations

from typing import Any

import pytest

import core.frontdoor.service
from core.config import Policy
from core.errors import BadRequest
from core.planning import limits as limits_module
from core.planning.limits import PARAMETERS, Origin, request_limits

HERE = Origin("aws", "us-east-1")


def test_the_policy_is_the_default_for_every_limit() -> None:
    policy = Policy(slo_ms=800, max_usd=1.0, deadline_ms=9000, max_attempts=4, objective="latency")
    limits = request_limits({}, policy, HERE)
    c = limits.constraints
    assert (c.slo_ms, c.max_usd, c.origin, c.objective) == (800, 1.0, HERE, "latency")
    assert c.clouds is None and c.regions is None
    assert (limits.deadline_ms, limits.max_attempts) == (9000, 4)


def test_request_parameters_tighten_the_policy() -> None:
    params = {
        "slo_ms": 250, "deadline_ms": 1500, "max_attempts": 2, "max_usd": 0.5,
        "origin": "GCP:Europe-West4", "clouds": "aws, GCP", "regions": "us-east-1,",
        "objective": "weighted", "binary_data_output": True,  # OIP's own: left alone
    }  # fmt: skip
    limits = request_limits(params, Policy(), HERE)
    c = limits.constraints
    assert (c.slo_ms, c.max_usd, c.objective) == (250, 0.5, "weighted")
    assert c.origin == Origin("gcp", "europe-west4")
    assert c.clouds == frozenset({"aws", "gcp"}) and c.regions == frozenset({"us-east-1"})
    assert (limits.deadline_ms, limits.max_attempts) == (1500, 2)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"slo_ms": 0}, "parameters.slo_ms must be a positive number"),
        ({"slo_ms": "fast"}, "parameters.slo_ms must be a positive number"),
        ({"deadline_ms": -1}, "parameters.deadline_ms must be a positive number"),
        ({"max_attempts": True}, "parameters.max_attempts must be a positive number"),
        ({"max_attempts": 2.5}, "parameters.max_attempts must be an integer"),
        ({"max_usd": None, "slo_ms": [1]}, "parameters.slo_ms"),
        ({"objective": "fast"}, "parameters.objective must be cost, latency or weighted"),
        ({"origin": "nowhere"}, "parameters.origin must look like"),
        ({"origin": 5}, "parameters.origin must be a string"),
        ({"regions": ""}, "parameters.regions must be a comma-separated string"),
        ({"clouds": 3}, "parameters.clouds must be a comma-separated string"),
    ],
)
def test_a_bad_parameter_is_a_bad_request_naming_it(params: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        request_limits(params, Policy(), HERE)


@pytest.mark.parametrize("module", [core.frontdoor.service, limits_module])
def test_the_docstrings_list_every_parameter_the_code_accepts(module: Any) -> None:
    doc = module.__doc__
    assert all(f"``{name}``" in doc for name in PARAMETERS), doc
