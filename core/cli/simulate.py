"""``gpufan simulate``: replay a day of load through the autoscaler and the baselines.

Assembles the fleet (``--config``'s targets, or the default fleet below, priced from the bundled
snapshot and given throughput by the cost model), runs ``core.autoscale.simulate`` and presents
it: a table (``summary.csv``, ``summary.md``, printed), a per-interval ``timeseries.csv`` and a PNG
(load, capacity by cloud, cumulative cost; matplotlib, imported only here). It says which spot
reclaims follow a preemption record and which a constant rate, and which forecasters led the
backtest. The last line printed is ``cost_ratio=<ours / static peak> slo_attainment=<ours>
vs_best_baseline=<ours / the cheapest baseline at 99% attainment>``.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from core.autoscale.capacity import Unit
from core.autoscale.preemption import PreemptionRecord, load_preemptions, record_for
from core.autoscale.settings import of, plan_policy, units_for
from core.autoscale.simulate import SimConfig, SimResult, simulate_all
from core.autoscale.trace import Trace, parse_trace_csv, synthetic_trace
from core.config import Settings, load_settings, settings_from_dict
from core.errors import ConfigError

__all__ = ["DEFAULT_FLEET", "run_simulate"]

_PLACEHOLDER = "https://simulated.invalid"  # the simulated fleet is never called
# The default fleet: one T4 and one L4 family per cloud, as the issue names them. Cold starts are
# ASSUMPTIONS: a GPU VM boots, pulls the worker image and loads the model in 2-3 minutes (EC2 and
# Compute Engine GPU VMs report 1-2 minutes to RUNNING; the image pull adds the rest); Cloud Run
# GPU instances start in about 10 s with drivers preinstalled (cloud.google.com/run/docs/
# configuring/services/gpu, "startup time"). Limits are the per-target caps of the simulation.
DEFAULT_FLEET: dict[str, Any] = {
    "models": [{"name": "resnet50", "flops_per_item": 4.1e9}],  # ResNet-50: ~4.1 GFLOP/image
    "policy": {"slo_ms": 1000},
    "targets": [
        {"name": "aws-g4dn-spot", "backend": "http", "endpoint": _PLACEHOLDER, "cloud": "aws",
         "region": "us-east-1", "accelerator": "T4", "pricing": "spot", "sku": "g4dn.xlarge",
         "cold_start_s": 180},
        {"name": "aws-g4dn", "backend": "http", "endpoint": _PLACEHOLDER, "cloud": "aws",
         "region": "us-east-1", "accelerator": "T4", "pricing": "on_demand",
         "sku": "g4dn.xlarge", "cold_start_s": 180},
        {"name": "gcp-run-l4", "backend": "http", "endpoint": _PLACEHOLDER, "cloud": "gcp",
         "region": "us-central1", "accelerator": "L4", "pricing": "serverless", "sku": "run-l4",
         "cold_start_s": 10, "scale_to_zero": True},
        {"name": "gcp-g2-spot", "backend": "http", "endpoint": _PLACEHOLDER, "cloud": "gcp",
         "region": "us-central1", "accelerator": "L4", "pricing": "spot",
         "sku": "g2-standard-4", "cold_start_s": 150},
        {"name": "gcp-g2", "backend": "http", "endpoint": _PLACEHOLDER, "cloud": "gcp",
         "region": "us-central1", "accelerator": "L4", "pricing": "on_demand",
         "sku": "g2-standard-4", "cold_start_s": 150},
        {"name": "azure-t4-spot", "backend": "http", "endpoint": _PLACEHOLDER, "cloud": "azure",
         "region": "eastus", "accelerator": "T4", "pricing": "spot",
         "sku": "Standard_NC4as_T4_v3", "cold_start_s": 180},
    ],
}  # fmt: skip
# Cloud Run's own default maximum per service is 100 instances (cloud.google.com/run/docs/
# configuring/max-instances-limits); its GPU quota must be raised to match. The VM caps are the
# simulation's.
_DEFAULT_LIMITS = {"gcp-run-l4": 100, "gcp-g2-spot": 24, "gcp-g2": 40}


def _fleet(args: argparse.Namespace) -> tuple[Settings, dict[str, int]]:
    if args.config is None:
        return settings_from_dict(DEFAULT_FLEET, source="default fleet"), dict(_DEFAULT_LIMITS)
    settings = load_settings(args.config)
    if not settings.models:
        raise ConfigError(f"{args.config}: simulate needs a model (models: [...])")
    return settings, dict(of(settings).max_instances)


def _trace(args: argparse.Namespace, items_per_request: int) -> Trace:
    if args.trace is None:
        if not args.scale > 0:
            raise ConfigError(f"--scale must be > 0, got {args.scale}")
        base = synthetic_trace(args.hours, args.seed)
        source = base.source if args.scale == 1 else f"{base.source} x {args.scale:g}"
        return Trace(base.rate * args.scale, base.history * args.scale, base.interval_s, source)
    try:
        text = args.trace.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {args.trace}: {e.strerror}") from None
    try:
        trace = parse_trace_csv(
            text, items_per_request=items_per_request, where=str(args.trace), scale=args.scale
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    keep = max(1, math.ceil(args.hours * 3600 / trace.interval_s))
    return Trace(trace.rate[:keep], trace.history, trace.interval_s, trace.source)


def _lifetimes(
    args: argparse.Namespace, settings: Settings, units: tuple[Unit, ...]
) -> tuple[dict[str, PreemptionRecord], str]:
    """Each spot unit's preemption record: ``--spot-record``'s for all of them (another kind's
    record, as a proxy: said so), else its own kind's where the bundled traces hold one; and a
    line saying which reclaims follow what."""
    spot = [u for u in units if u.spot]
    if args.spot_record:
        records = load_preemptions()
        if args.spot_record not in records:
            raise ConfigError(
                f"--spot-record {args.spot_record!r}: no such record; bundled: "
                f"{', '.join(sorted(records))}"
            )
        record = records[args.spot_record]
        line = (
            f"spot reclaims: every spot unit follows the {record.kind} record as a proxy "
            f"({record.hazard_per_hour:.3f}/h over {record.exposure_h:.0f} instance-hours, "
            f"{record.source.split('@')[0]})"
        )
        return {u.name: record for u in spot}, line
    targets = {t.name: t for t in settings.targets}
    own = {
        u.name: r
        for u in spot
        if (t := targets.get(u.name)) is not None
        and t.sku is not None
        and (r := record_for(t.cloud, t.sku, t.region)) is not None
    }
    rest = [u.name for u in spot if u.name not in own]
    parts = [f"{name}: {r.kind} record" for name, r in own.items()]
    if rest:
        parts.append(f"{', '.join(rest)}: constant rate (no preemption record for their kind)")
    return own, "spot reclaims: " + "; ".join(parts)


def _rows(results: list[SimResult]) -> list[dict[str, Any]]:
    base = results[1].usd_per_million
    rows = []
    for r in results:
        row = {
            "strategy": r.name,
            "usd_total": round(r.cost_usd, 2),
            "usd_per_million": round(r.usd_per_million, 4),
            "cost_ratio": round(r.usd_per_million / base, 4),
            "slo_attainment": round(r.slo_attainment, 5),
            "expected_attainment": round(sum(r.expected) / len(r.expected), 5)
            if r.expected
            else "",
            "reclaims": r.reclaims,
            "launches": r.launches,
        }
        row |= {f"gpu_h_{c}": round(h, 1) for c, h in sorted(r.gpu_hours.items())}
        rows.append(row)
    return rows


def _write_tables(out: Path, rows: list[dict[str, Any]], results: list[SimResult]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    ours = results[0]
    with (out / "timeseries.csv").open("w", newline="") as f:
        series = csv.writer(f)
        clouds = sorted(ours.capacity)
        series.writerow(["minute", "load_items_per_s", *[f"cap_{c}" for c in clouds], "usd"])
        for i, load in enumerate(ours.load):
            caps = [round(ours.capacity[c][i], 1) for c in clouds]
            series.writerow([i, round(load, 1), *caps, round(ours.cumulative_usd[i], 4)])
    return table


def _plot(path: Path, results: list[SimResult], interval_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display in a CLI or CI
    import matplotlib.pyplot as plt

    ours = results[0]
    hours = [i * interval_s / 3600 for i in range(len(ours.load))]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    clouds = sorted(ours.capacity)
    top.stackplot(hours, *[ours.capacity[c] for c in clouds], labels=clouds, alpha=0.5)
    top.plot(hours, ours.load, color="black", linewidth=0.8, label="load")
    top.set_ylabel("items/s")
    top.set_title("autoscaler: load and usable capacity by cloud")
    top.legend(loc="upper left")
    for r in results:
        bottom.plot(hours, r.cumulative_usd, label=f"{r.name} (${r.cost_usd:,.0f})")
    bottom.set_xlabel("hours")
    bottom.set_ylabel("cumulative USD")
    bottom.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_simulate(args: argparse.Namespace) -> int:
    """Run the simulation; write the table, time series and plot into ``--out``."""
    if args.hours <= 0:
        raise ConfigError(f"--hours must be > 0, got {args.hours}")
    from core.frontdoor.runtime import build_cost_model

    settings, limits = _fleet(args)
    model = settings.models[0].name
    cost_model = build_cost_model(settings, settings.targets)
    auto = of(settings)
    units = tuple(units_for(cost_model, model, limits))
    if not any(u.pricing == "on_demand" for u in units) or not any(u.spot for u in units):
        raise ConfigError("simulate needs at least one on_demand and one spot target")
    interruptions = {
        f.target.name: f.interruptions_per_hour for f in cost_model.target_facts(model)
    }
    lifetimes, reclaims = _lifetimes(args, settings, units)
    config = SimConfig(
        units,
        interruptions,
        plan_policy(auto, settings.policy.slo_ms),
        quantile=auto.quantile,
        target_attainment=auto.target_attainment,
        base_latency_s=auto.service_s,
        serverless_idle_s=auto.burst_hold_s,
        lifetimes=lifetimes,
    )
    trace = _trace(args, config.items_per_request)
    results = simulate_all(trace, config, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = _rows(results)
    print(
        f"trace: {trace.source}, {trace.hours:g} h; seed {args.seed}; model {model}; "
        "prices: bundled snapshot"
    )
    print(reclaims)
    print(_write_tables(args.out, rows, results))
    _plot(args.out / "simulation.png", results, trace.interval_s)
    print(f"wrote {args.out / 'simulation.png'}, summary.csv, summary.md, timeseries.csv")
    print(_methods(results[0]))
    ours, static = results[0], results[1]
    ratio = ours.usd_per_million / static.usd_per_million
    print(
        f"cost_ratio={ratio:.4f} slo_attainment={ours.slo_attainment:.5f} "
        f"vs_best_baseline={_vs_best(ours, results[1:])}"
    )
    return 0


def _methods(ours: SimResult) -> str:
    """Which forecasters led the rolling backtest, for what share of the intervals."""
    chosen = {name: n for name, n in ours.methods.items() if name != "none"}
    total = sum(chosen.values()) or 1
    shares = sorted(chosen.items(), key=lambda kv: -kv[1])
    return f"{ours.name} forecast by: " + ", ".join(f"{name} {n / total:.0%}" for name, n in shares)


# The attainment a baseline must reach to be compared on cost: the 1% of requests outside the
# SLO that gpufan promises (Policy.max_interruption_risk says the same of spot reclaims).
_ATTAINMENT = 0.99


def _vs_best(ours: SimResult, baselines: list[SimResult]) -> str:
    """Our cost over the cheapest baseline that also meets the attainment, or ``none`` when no
    baseline does (then there is nothing honest to compare with)."""
    able = [b for b in baselines if b.slo_attainment >= _ATTAINMENT]
    if not able:
        return "none"
    best = min(able, key=lambda b: b.usd_per_million)
    print(f"best baseline at >= {_ATTAINMENT:g} attainment: {best.name}")
    return f"{ours.usd_per_million / best.usd_per_million:.4f}"
