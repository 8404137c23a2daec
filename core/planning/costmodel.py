"""The cost model assembled: model profiles + prices + throughput -> score tables and a placer.

Built once at start (and again when prices refresh), shared by the front door's placement and by
``gpufan plan``, so what the CLI explains is exactly what the front door does. Throughput
predictions start from the accelerator's spec sheet and are pulled toward what each target is
measured doing (``observe``); a model's table is rebuilt at most once a second from them. This is
planning's one stateful learner; it reads no clock (the caller passes ``now``) and no files (the
runtime profiles the models and hands in ``ModelFacts``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from core.config import Policy, Target
from core.errors import ConfigError
from core.planning.accelerators import ThroughputModel, accelerator
from core.planning.billing import billing
from core.planning.costplacer import CostPlacer
from core.planning.estimate import ScoreTable, TargetFacts, Workload
from core.planning.limits import Constraints, Origin, request_limits
from core.planning.profile import ModelProfile, profile_report
from core.pricing import PriceBook, PriceKey
from core.wire.profiletable import MeasuredProfile

__all__ = ["DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR", "CostModel", "ModelFacts"]

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
    # (accelerator, variant) -> a gpufan profile table for this model: preferred to the spec
    # sheet for targets on that accelerator serving that variant
    measured: Mapping[tuple[str, str], MeasuredProfile] = field(default_factory=dict)
    # The profile at a request's input shapes (input -> dims, batch axis first), for a model
    # whose graph has dynamic dims: None when there is no graph to read again.
    reprofile: Callable[[Mapping[str, Sequence[int]]], ModelProfile] | None = None


_SHAPES_CACHED = 64  # distinct input shapes per model whose tables are kept


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
    ) -> None:
        self.models = {m.name: m for m in models}
        self.targets = tuple(targets)
        self.policy = policy
        self.origin = origin
        self.book = book
        self.throughput = throughput or ThroughputModel()
        for t in self.targets:
            accelerator(t.accelerator)  # an unknown accelerator fails at start, not per request
        self._at: dict[tuple[str, Hashable], tuple[ScoreTable, Workload, Mapping[str, object]]] = {}
        self._profiled: dict[tuple[str, Hashable], ModelProfile] = {}  # by ``profiling``'s work
        reshaped = [  # graphs with dynamic dims: priced at each request's own shapes
            name
            for name, m in self.models.items()
            if m.reprofile is not None and m.profile is not None and m.profile.assumed_unit_dims
        ]
        self.placer = CostPlacer(
            {name: self.table(name) for name in self.models},
            {name: m.workload for name, m in self.models.items()},
            self.defaults(),
            {name: profile_report(m.profile) for name, m in self.models.items()},
            reshapers={name: partial(self.at_shapes, name) for name in reshaped},
            ahead={name: partial(self.profiling, name) for name in reshaped},
        )
        self._dirty: set[str] = set()
        self._built_at: float | None = None  # of the tables' last rebuild from measurements

    # ---------------------------------------------------------------------------- facts

    def price_of(self, t: Target) -> tuple[float, str, str | None, bool]:
        """(usd/h, source, as_of, stale): an explicit ``usd_per_hour`` wins over the book."""
        if t.sku is None or t.pricing == "owned" or "usd_per_hour" in t.model_fields_set:
            return t.usd_per_hour, "config", None, False
        price = self.book.price(PriceKey(t.cloud, t.region, t.sku, t.pricing))
        return price.usd_per_hour, price.source, price.as_of, price.key in self.book.fallbacks

    def at_shapes(
        self, model: str, shapes: Mapping[str, Sequence[int]]
    ) -> tuple[ScoreTable, Workload, Mapping[str, object]] | None:
        """The table, workload and profile report for ``model`` at a request's input shapes,
        when its profile assumed dims it now knows; None when nothing would change. Kept per
        distinct shape (``_SHAPES_CACHED`` per model), rebuilt with the tables.
        """
        facts = self.models.get(model)
        if facts is None or facts.reprofile is None or facts.profile is None:
            return None
        if not facts.profile.assumed_unit_dims:
            return None
        key = _shape_key(model, shapes)
        if key not in self._at:
            profile = self._profiled.pop(key, None)  # made ahead by ``profiling``
            try:
                profile = profile or facts.reprofile(shapes)
            except ConfigError:  # shapes the graph refuses: the request will fail on its own
                return None
            workload = Workload(model, profile.input_bytes_per_item, profile.output_bytes_per_item)
            at = replace(facts, profile=profile, workload=workload)
            if sum(1 for m, _ in self._at if m == model) >= _SHAPES_CACHED:
                self._at.pop(next(k for k in self._at if k[0] == model))
            self._at[key] = (
                ScoreTable(self._target_facts(at), self._egress),
                workload,
                profile_report(profile),
            )
        return self._at[key]

    def profiling(
        self, model: str, shapes: Mapping[str, Sequence[int]]
    ) -> Callable[[], None] | None:
        """The graph profile ``at_shapes`` would make inline for these shapes, as work to run
        ahead of placement, off the event loop (the dispatcher runs it in a thread: tens to
        hundreds of milliseconds on a large graph); None when it is kept or not needed.

        The work only profiles (pure, over the model's read-only graph) and leaves the result
        for ``at_shapes``, which builds the table on the loop's thread."""
        facts = self.models.get(model)
        if facts is None or facts.reprofile is None or facts.profile is None:
            return None
        key = _shape_key(model, shapes)
        if not facts.profile.assumed_unit_dims or key in self._at or key in self._profiled:
            return None
        reprofile = facts.reprofile

        def run() -> None:
            try:
                profile = reprofile(shapes)
            except ConfigError:  # at_shapes meets it again inline, and says so
                return
            if len(self._profiled) >= _SHAPES_CACHED:  # made and never asked for: drop them
                self._profiled.clear()
            self._profiled[key] = profile

        return run

    def target_facts(self, model: str) -> list[TargetFacts]:
        return self._target_facts(self.models[model])

    def _target_facts(self, facts_of: ModelFacts) -> list[TargetFacts]:
        facts = []
        model = facts_of.name
        profile = facts_of.profile
        for t in self.targets:
            usd, source, as_of, stale = self.price_of(t)
            measured = facts_of.measured.get((t.accelerator, t.variant))
            speed = measured.source if measured else "estimated from the spec sheet"
            if profile is None and measured is None:
                per_item, fixed, speed = 0.0, 0.0, "unknown: no graph and no measured table"
            else:
                key, acc, batch = f"{t.name}/{model}", t.accelerator, self.policy.max_shard_items
                one = self.throughput.predict_seconds(profile, key, acc, 1, measured)
                many = self.throughput.predict_seconds(profile, key, acc, batch, measured)
                per_item = (many - one) / (batch - 1) if batch > 1 else one
                fixed = one - per_item
            rule = billing(t.backend)
            interruptions = t.interruption_per_hour
            if interruptions is None:
                interruptions = DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR if t.pricing == "spot" else 0.0
            facts.append(
                TargetFacts(
                    t, usd, source, as_of, stale,
                    items_per_s=t.gpus / per_item if per_item > 0 else float("inf"),
                    fixed_s=fixed,
                    billing_increment_s=rule.increment_s, billing_minimum_s=rule.minimum_s,
                    interruptions_per_hour=interruptions, speed_source=speed,
                )
            )  # fmt: skip
        return facts

    def table(self, model: str) -> ScoreTable:
        return ScoreTable(self.target_facts(model), self._egress)

    def _egress(self, src_cloud: str, src_region: str, dst_cloud: str, dst_region: str) -> float:
        return self.book.egress(src_cloud, src_region, dst_cloud, dst_region).usd_per_gb

    # ---------------------------------------------------------------------------- requests

    def defaults(self) -> Constraints:
        """The policy's constraints, for requests that set none (and for ``gpufan plan``)."""
        return request_limits({}, self.policy, self.origin).constraints

    def observe(self, model: str, target: str, items: int, seconds: float, *, now: float) -> None:
        """Fold one shard's measured time into the target's throughput for ``model``; ``now``
        (the caller's clock, in seconds) paces the rebuild of its table."""
        facts = self.models.get(model)
        t = next((t for t in self.targets if t.name == target), None)
        if facts is None or t is None or items < 1 or seconds <= 0:
            return
        measured = facts.measured.get((t.accelerator, t.variant))
        if facts.profile is None and measured is None:
            return
        self.throughput = self.throughput.observe(
            f"{target}/{model}", t.accelerator, facts.profile, items / seconds,
            batch_items=items, measured=measured,
        )  # fmt: skip
        self._dirty.add(model)
        if self._built_at is None:
            self._built_at = now
        if now - self._built_at >= _REBUILD_S:
            for name in self._dirty:
                self.placer.tables[name] = self.table(name)
            self._at = {k: v for k, v in self._at.items() if k[0] not in self._dirty}
            self._dirty.clear()
            self._built_at = now

    def with_book(self, book: PriceBook) -> None:
        """New prices: rebuild every table (throughput corrections are kept)."""
        self.book = book
        for name in self.models:
            self.placer.tables[name] = self.table(name)


def _shape_key(model: str, shapes: Mapping[str, Sequence[int]]) -> tuple[str, Hashable]:
    return (model, tuple(sorted((k, tuple(v)) for k, v in shapes.items())))
