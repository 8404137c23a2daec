"""The cost model assembled: model profiles + prices + throughput -> score tables and a placer.

Built once at start (and again when prices refresh), shared by the front door's placement and by
``gpufan plan``, so what the CLI explains is exactly what the front door does. Throughput
predictions start from the accelerator's spec sheet and are pulled toward what each target is
measured doing (``observe``); a model's table is rebuilt at most once a second from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import ModelSpec, Policy, Target
from core.errors import BadRequest, ConfigError
from core.planning.accelerators import ThroughputModel, accelerator
from core.planning.costplacer import CostPlacer
from core.planning.estimate import ScoreTable, TargetFacts, Workload
from core.planning.limits import Constraints, Origin
from core.planning.profile import ModelProfile, profile_model
from core.pricing import PriceBook, PriceKey

__all__ = ["CostModel", "ModelFacts", "model_facts"]

# Billing granularity by backend: (increment_s, minimum_s).
_BILLING = {
    "cloudrun": (0.1, 0.0),  # Cloud Run bills to the 100 ms (clouds.md 1.6)
    "batch": (1.0, 60.0),  # EC2 Linux per-second billing, 60 s minimum per launch (AWS EC2 pricing)
    "aca": (1.0, 0.0),  # Container Apps: per-second (clouds.md 2.3)
    "aci": (1.0, 0.0),  # Container Instances: per-second
}
_DEFAULT_BILLING = (1.0, 0.0)  # an instance behind an OIP endpoint: its busy seconds
# Spot reclaims per hour when a target doesn't say. An assumption: GCP documented preemptible VMs
# as preempted "generally" under 15% a day (~0.6%/h) and AWS Spot Advisor's GPU buckets run to
# >20% a month; 1%/h errs high, so spot is never chosen on a too-rosy view of its risk.
DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR = 0.01
_REBUILD_S = 1.0  # a table is rebuilt from new measurements at most this often


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the cost model knows about one model."""

    name: str
    profile: ModelProfile | None  # None: no graph to read; compute time is then unknown
    workload: Workload


def _model_file(repository: Path, name: str) -> Path | None:
    versions = [p for p in (repository / name).glob("*/model.onnx") if p.parent.name.isdigit()]
    return max(versions, key=lambda p: int(p.parent.name), default=None)


def model_facts(spec: ModelSpec) -> ModelFacts:
    """Profile the model's latest version in its repository (or take ``flops_per_item``)."""
    profile = None
    if spec.repository is not None:
        path = _model_file(spec.repository, spec.name)
        if path is None:
            raise ConfigError(
                f"models[{spec.name}].repository: no {spec.name}/<version>/model.onnx "
                f"under {spec.repository}"
            )
        profile = profile_model(path)
    if spec.flops_per_item is not None:
        base = profile or ModelProfile(spec.flops_per_item, 0, 0, 0, 0)
        profile = ModelProfile(
            spec.flops_per_item, base.param_bytes, base.input_bytes_per_item,
            base.output_bytes_per_item, base.peak_activation_bytes_per_item,
        )  # fmt: skip
    workload = Workload(
        spec.name,
        profile.input_bytes_per_item if profile else 0.0,
        profile.output_bytes_per_item if profile else 0.0,
    )
    return ModelFacts(spec.name, profile, workload)


def _split_list(value: Any, key: str) -> frozenset[str]:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"parameters.{key} must be a comma-separated string, got {value!r}")
    return frozenset(v.strip().lower() for v in value.split(",") if v.strip())


class CostModel:
    """Per-model score tables over the configured targets, and the placer that reads them."""

    def __init__(
        self,
        models: Sequence[ModelFacts],
        targets: Sequence[Target],
        policy: Policy,
        origin: Origin,
        book: PriceBook,
        *,
        throughput: ThroughputModel | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.models = {m.name: m for m in models}
        self.targets = tuple(targets)
        self.policy = policy
        self.origin = origin
        self.book = book
        self.throughput = throughput or ThroughputModel()
        self._clock = clock
        for t in self.targets:
            accelerator(t.accelerator)  # an unknown accelerator fails at start, not per request
        self.placer = CostPlacer(
            {name: self.table(name) for name in self.models},
            {name: m.workload for name, m in self.models.items()},
            self.constraints(),
        )
        self._dirty: set[str] = set()
        self._built_at = clock()

    # ---------------------------------------------------------------------------- facts

    def price_of(self, t: Target) -> tuple[float, str, str | None, bool]:
        """(usd/h, source, as_of, stale): an explicit ``usd_per_hour`` wins over the book."""
        if t.sku is None or t.pricing == "owned" or "usd_per_hour" in t.model_fields_set:
            return t.usd_per_hour, "config", None, False
        price = self.book.price(PriceKey(t.cloud, t.region, t.sku, t.pricing))
        return price.usd_per_hour, price.source, price.as_of, price.key in self.book.fallbacks

    def target_facts(self, model: str) -> list[TargetFacts]:
        facts = []
        profile = self.models[model].profile
        for t in self.targets:
            usd, source, as_of, stale = self.price_of(t)
            if profile is None:
                per_item, fixed = 0.0, 0.0
            else:
                key, acc, batch = f"{t.name}/{model}", t.accelerator, self.policy.max_shard_items
                one = self.throughput.predict_seconds(profile, key, acc, 1)
                many = self.throughput.predict_seconds(profile, key, acc, batch)
                per_item = (many - one) / (batch - 1) if batch > 1 else one
                fixed = one - per_item
            increment, minimum = _BILLING.get(t.backend, _DEFAULT_BILLING)
            interruptions = t.interruption_per_hour
            if interruptions is None:
                interruptions = DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR if t.pricing == "spot" else 0.0
            facts.append(
                TargetFacts(
                    t, usd, source, as_of, stale,
                    items_per_s=t.gpus / per_item if per_item > 0 else float("inf"),
                    fixed_s=fixed, billing_increment_s=increment, billing_minimum_s=minimum,
                    interruptions_per_hour=interruptions,
                )
            )  # fmt: skip
        return facts

    def table(self, model: str) -> ScoreTable:
        return ScoreTable(self.target_facts(model), self._egress)

    def _egress(self, src_cloud: str, src_region: str, dst_cloud: str, dst_region: str) -> float:
        return self.book.egress(src_cloud, src_region, dst_cloud, dst_region).usd_per_gb

    # ---------------------------------------------------------------------------- requests

    def constraints(self, params: Mapping[str, Any] | None = None) -> Constraints:
        """The policy's defaults, tightened by a request's ``parameters`` (BadRequest names the
        key): ``slo_ms``, ``max_usd`` (numbers), ``origin`` ("cloud:region"), ``clouds`` and
        ``regions`` (comma-separated), ``objective`` (cost | latency | weighted)."""
        params = params or {}
        p = self.policy
        objective = params.get("objective", p.objective)
        if objective not in ("cost", "latency", "weighted"):
            raise BadRequest(
                f"parameters.objective must be cost, latency or weighted, got {objective!r}"
            )
        origin = params.get("origin", None)
        if origin is not None and not isinstance(origin, str):
            raise BadRequest(
                f"parameters.origin must be a string like 'aws:us-east-1', got {origin!r}"
            )
        return Constraints(
            slo_ms=float(params.get("slo_ms", p.slo_ms)),
            origin=Origin.parse(origin) if origin else self.origin,
            max_usd=params.get("max_usd", p.max_usd),
            clouds=_split_list(params["clouds"], "clouds") if "clouds" in params else None,
            regions=_split_list(params["regions"], "regions") if "regions" in params else None,
            objective=objective,
            usd_per_latency_s=p.usd_per_latency_s,
            max_interruption_risk=p.max_interruption_risk,
        )

    def observe(self, model: str, target: str, items: int, seconds: float) -> None:
        """Fold one shard's measured time into the target's throughput for ``model``."""
        facts = self.models.get(model)
        t = next((t for t in self.targets if t.name == target), None)
        if facts is None or facts.profile is None or t is None or items < 1 or seconds <= 0:
            return
        self.throughput = self.throughput.observe(
            f"{target}/{model}", t.accelerator, facts.profile, items / seconds, batch_items=items
        )
        self._dirty.add(model)
        now = self._clock()
        if now - self._built_at >= _REBUILD_S:
            for name in self._dirty:
                self.placer.tables[name] = self.table(name)
            self._dirty.clear()
            self._built_at = now

    def with_book(self, book: PriceBook) -> None:
        """New prices: rebuild every table (throughput corrections are kept)."""
        self.book = book
        for name in self.models:
            self.placer.tables[name] = self.table(name)
