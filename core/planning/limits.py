"""One request's limits, parsed once at the edge from its ``parameters`` and the policy.

The front door (and ``gpufan plan``) calls ``request_limits`` before anything else runs; below it
nothing reads ``parameters`` again. Every request parameter the front door accepts is here:

- ``slo_ms``: latency target of the whole request, ms (a positive number);
- ``deadline_ms``: budget of the whole request, re-dispatches and waits included (positive);
- ``max_attempts``: tries per shard, the first included (a positive integer);
- ``max_usd``: refuse placements estimated to cost more (a positive number);
- ``origin``: where the caller is, ``"cloud:region"`` (egress and RTT are priced from there);
- ``clouds``, ``regions``: comma-separated allow-lists (case-insensitive);
- ``objective``: ``cost``, ``latency`` or ``weighted``.

Every problem is a ``BadRequest`` that names the key. Other parameters are left alone: OIP lets
clients send their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from core.config import Policy
from core.errors import BadRequest

__all__ = ["PARAMETERS", "Constraints", "Limits", "Objective", "Origin", "request_limits"]

Objective = Literal["cost", "latency", "weighted"]
PARAMETERS = (
    "slo_ms", "deadline_ms", "max_attempts", "max_usd", "origin", "clouds", "regions", "objective",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request comes from: ``cloud:region`` (``local:local`` for this machine)."""

    cloud: str
    region: str

    @classmethod
    def parse(cls, text: str) -> Origin:
        cloud, sep, region = text.partition(":")
        if not sep or not cloud or not region:
            raise BadRequest(f"origin must look like 'aws:us-east-1', got {text!r}")
        return cls(cloud.lower(), region.lower())

    def __str__(self) -> str:
        return f"{self.cloud}:{self.region}"


@dataclass(frozen=True, slots=True)
class Constraints:
    """A request's origin and limits; None means unconstrained."""

    slo_ms: float
    origin: Origin = Origin("local", "local")
    max_usd: float | None = None
    clouds: frozenset[str] | None = None
    regions: frozenset[str] | None = None
    objective: Objective = "cost"
    usd_per_latency_s: float = 0.0
    max_interruption_risk: float = 0.01


@dataclass(frozen=True, slots=True)
class Limits:
    """Everything a request may set, resolved against the policy: placement's ``constraints``
    and the retry budget (``deadline_ms`` for the whole request, ``max_attempts`` per shard)."""

    constraints: Constraints
    deadline_ms: float
    max_attempts: int


def request_limits(params: Mapping[str, Any], policy: Policy, origin: Origin) -> Limits:
    """The policy's defaults, tightened by a request's ``parameters`` (see the module docstring).

    Args:
        params: the request's ``parameters``; keys not listed in ``PARAMETERS`` are ignored.
        policy: the configured defaults.
        origin: where requests come from when ``parameters.origin`` does not say.

    Raises:
        BadRequest: a parameter has the wrong type or value; the message names it.
    """
    objective = params.get("objective", policy.objective)
    if objective not in get_args(Objective):
        raise BadRequest(
            f"parameters.objective must be cost, latency or weighted, got {objective!r}"
        )
    where = params.get("origin")
    if where is not None and not isinstance(where, str):
        raise BadRequest(f"parameters.origin must be a string like 'aws:us-east-1', got {where!r}")
    attempts = _positive(params, "max_attempts")
    if isinstance(attempts, float):
        raise BadRequest(f"parameters.max_attempts must be an integer, got {attempts!r}")
    slo_ms, deadline_ms, max_usd = (
        _positive(params, k) for k in ("slo_ms", "deadline_ms", "max_usd")
    )
    constraints = Constraints(
        slo_ms=float(policy.slo_ms if slo_ms is None else slo_ms),
        origin=_origin(where) if where else origin,
        max_usd=policy.max_usd if max_usd is None else float(max_usd),
        clouds=_names(params, "clouds"),
        regions=_names(params, "regions"),
        objective=cast(Objective, objective),
        usd_per_latency_s=policy.usd_per_latency_s,
        max_interruption_risk=policy.max_interruption_risk,
    )
    return Limits(
        constraints,
        deadline_ms=float(policy.deadline_ms if deadline_ms is None else deadline_ms),
        max_attempts=policy.max_attempts if attempts is None else int(attempts),
    )


def _positive(params: Mapping[str, Any], key: str) -> int | float | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequest(f"parameters.{key} must be a positive number, got {value!r}")
    return value


def _origin(text: str) -> Origin:
    try:
        return Origin.parse(text)
    except BadRequest as e:
        raise BadRequest(f"parameters.{e}") from None


def _names(params: Mapping[str, Any], key: str) -> frozenset[str] | None:
    if key not in params:
        return None
    value = params[key]
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"parameters.{key} must be a comma-separated string, got {value!r}")
    return frozenset(v.strip().lower() for v in value.split(",") if v.strip())
