"""``gpufan plan``: every candidate target's cost and latency for a request, and the placement.

The same cost model, tables and placement the front door uses
(``core.frontdoor.runtime.build_cost_model``, ``core.planning.costplacer.decide``), on idle
targets; ``--live`` asks the clouds' price APIs first.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import numpy as np
import orjson

from core.cli.render import table
from core.cli.serve import resolve_settings
from core.errors import BadRequest, NotFound
from core.frontdoor.runtime import build_cost_model, local_targets
from core.planning.costmodel import CostModel
from core.planning.costplacer import Decision, decide, explain
from core.planning.estimate import Estimate
from core.planning.limits import Constraints, request_limits
from core.planning.loads import Loads
from core.planning.profile import profile_report
from core.planning.shards import Shard, shard_sizes
from core.pricing import PriceBook
from core.pricing.live import live_cache, priced_keys
from core.wire.asgi import run_async

__all__ = ["run_plan"]


def parse_inputs(flags: list[str]) -> dict[str, list[int]]:
    """``--input NAME=DIMS`` values: ``images=1x3x320x320``; a scalar as ``sr=``.

    Raises:
        BadRequest: not NAME=DIMS, a dim that is not a whole number, or a name given twice.
    """
    shapes: dict[str, list[int]] = {}
    for flag in flags:
        name, sep, dims = flag.partition("=")
        if not sep or not name:
            raise BadRequest(f"--input {flag!r}: expected NAME=DIMS, e.g. images=1x3x320x320")
        if name in shapes:
            raise BadRequest(f"--input {name}: given twice")
        try:
            shapes[name] = [int(d) for d in dims.split("x")] if dims else []
        except ValueError:
            raise BadRequest(f"--input {flag!r}: dims are whole numbers joined by x") from None
    return shapes


def _params(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "slo_ms": args.slo_ms,
        "origin": getattr(args, "from"),
        "max_usd": args.max_usd,
        "clouds": args.clouds,
        "regions": args.regions,
        "objective": args.objective,
    }
    return {k: v for k, v in flags.items() if v is not None}


async def _live_book(model: CostModel) -> PriceBook:
    """Ask each cloud's price API for the targets' SKUs; failures fall back, flagged stale."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        cache = live_cache(model.targets, model.book, session, ttl_s=3600)
        return await cache.book(priced_keys(model.targets))


def _estimates(model: CostModel, name: str, items: int, c: Constraints) -> list[Estimate]:
    tbl = model.placer.tables[name]
    loads = _idle(model)
    cols = tbl.columns(np.full(len(tbl), float(items)), model.models[name].workload, loads, c)
    allowed = tbl.allowed(name, loads, c)
    return [tbl.estimate(i, cols, c, bool(allowed[i])) for i in range(len(tbl))]


def _decision(model: CostModel, name: str, items: int, c: Constraints) -> Decision:
    policy = model.policy
    slots = sum(t.max_concurrency for t in model.targets if t.serves(name))
    sizes = shard_sizes(items, policy.max_shard_items, slots, policy.min_shard_items)
    shards, start = [], 0
    for i, size in enumerate(sizes):
        shards.append(Shard(f"plan/{i}", i, start, start + size, ()))
        start += size
    tbl = model.placer.tables[name]
    return decide(tbl, model.models[name].workload, shards, _idle(model), c)


def _idle(model: CostModel) -> Loads:
    """No traffic yet: every target idle, and a scale-to-zero target cold."""
    cold = np.array([t.scale_to_zero for t in model.targets], bool)
    return Loads.idle(len(model.targets), warm=~cold)


def _render(
    model: CostModel, name: str, items: int, c: Constraints, rows: list[Estimate], d: Decision
) -> str:
    by_name = {t.name: t for t in model.targets}
    facts = model.models[name]
    p = facts.profile
    lines = [
        f"model {name}: "
        + (
            f"{p.flops_per_item / 1e6:,.3f} MFLOP/item, {p.input_bytes_per_item:,} B in, "
            f"{p.output_bytes_per_item:,} B out per item; profile {p.confidence}"
            + "".join(f"\n  {note}" for note in p.notes)
            if p
            else "no profile (compute time unknown)"
        ),
        f"request: {items:,} items from {c.origin}, SLO {c.slo_ms:g} ms, objective {c.objective}"
        + (f", max ${c.max_usd:g}" if c.max_usd is not None else ""),
        f"prices: snapshot of {model.book.as_of}"
        + "".join(f"\n  stale: {s.key} as of {s.as_of} ({s.reason})"
                  for s in model.book.stale(dt.date.today())),
        "",
        "candidates (the whole request on one target):",
    ]  # fmt: skip
    body = []
    for e in sorted(rows, key=lambda e: (not e.feasible, e.cost.total_usd)):
        t = by_name[e.target]
        usd_h, source, _, stale = model.price_of(t)
        c_, lat = e.cost, e.latency
        body.append([
            e.target, f"{t.cloud}:{t.region}", t.accelerator, t.pricing,
            f"{usd_h:.4f}" + (" stale" if stale else "") + ("" if source != "config" else " cfg"),
            f"{c_.total_usd:.6f}", f"{c_.compute_usd:.6f}",
            f"{c_.egress_in_usd + c_.egress_out_usd:.6f}", f"{c_.retry_usd:.6f}",
            f"{lat.total_ms:.1f}", f"{lat.rtt_ms:.1f}", f"{lat.transfer_ms:.1f}",
            f"{lat.compute_ms:.1f}", f"{lat.cold_start_ms + lat.retry_ms:.1f}",
            e.speed_source,
            "yes" if e.feasible else "no: " + "; ".join(e.reasons),
        ])  # fmt: skip
    lines.append(
        table(
            [
                "target",
                "where",
                "gpu",
                "pricing",
                "$/h",
                "$ total",
                "compute",
                "egress",
                "spot risk",
                "ms total",
                "rtt",
                "transfer",
                "compute",
                "cold+rerun",
                "speed",
                "feasible",
            ],
            body,
        )
    )
    lines += ["", f"placement ({'meets' if d.meets_slo else 'MISSES'} the SLO):"]
    lines.append(
        table(
            ["target", "items", "$", "ms"],
            [
                [e.target, e.items, f"{e.cost.total_usd:.6f}", f"{e.latency.total_ms:.1f}"]
                for e in d.chosen
            ],
        )
    )
    lines.append(f"total ${d.total_usd:.6f}, {d.latency_ms:.1f} ms")
    if d.runner_up is not None:
        r = d.runner_up
        lines.append(
            f"runner-up: {r.target} for all {r.items:,} items: ${r.cost.total_usd:.6f}, "
            f"{r.latency.total_ms:.1f} ms" + ("" if r.feasible else f" ({'; '.join(r.reasons)})")
        )
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
    if args.items < 1:
        raise BadRequest(f"--items must be at least 1, got {args.items}")
    settings = resolve_settings(args.config, None)
    targets = settings.targets + local_targets(settings.local_workers, "cpu")
    shapes = parse_inputs(getattr(args, "input", None) or [])
    model = build_cost_model(settings, targets, {args.model: shapes} if shapes else None)
    if args.model not in model.models:
        raise NotFound(
            f"unknown model {args.model!r}; configured: {', '.join(sorted(model.models))}"
        )
    if args.live:
        model.with_book(run_async(_live_book(model)))
    c = request_limits(_params(args), model.policy, model.origin).constraints
    rows = _estimates(model, args.model, args.items, c)
    d = _decision(model, args.model, args.items, c)
    if args.json:
        doc = {
            "model": {"name": args.model, **profile_report(model.models[args.model].profile)},
            "candidates": [explain(e) for e in rows],
            "placement": d.report(),
            "prices_as_of": model.book.as_of,
            "stale": [str(s.key) for s in model.book.stale(dt.date.today())],
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_render(model, args.model, args.items, c, rows, d))
    return 0
