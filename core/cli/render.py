"""Plain-text presentation for the CLI: tables and progress lines. Nothing else prints."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from core.wire.tensors import REPORT_PARAMETER

__all__ = ["placement_report", "placement_summary", "progress", "shard_table", "table"]


def progress(message: str) -> None:
    """One progress line on stderr, so stdout stays clean for results."""
    print(message, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left/right aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers], *[[_fmt(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def placement_report(parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """The front door's placement report from response parameters (None from a bare worker)."""
    raw = parameters.get(REPORT_PARAMETER)
    return orjson.loads(raw) if isinstance(raw, str) else None


def shard_table(report: Mapping[str, Any]) -> str:
    """One row per shard: items, where it ran, every attempt and its time."""
    rows = []
    for shard in report["shards"]:
        attempts = shard["attempts"]
        path = " -> ".join(
            a["target"] + ("" if a["ok"] else f" ✗ {_kind(a.get('error'))}") for a in attempts
        )
        rows.append(
            [
                shard["index"],
                shard["items"],
                shard["target"],
                len(attempts),
                float(attempts[-1]["ms"]),
                path,
            ]
        )
    return table(["shard", "items", "target", "attempts", "ms", "path"], rows)


def _kind(error: str | None) -> str:
    """The error's class name ("TargetUnavailable: ..." -> "TargetUnavailable")."""
    return (error or "failed").split(":", 1)[0]


def placement_summary(report: Mapping[str, Any]) -> str:
    """Why the shards went where they did: the cost model's verdict in two lines."""
    p = report.get("placement")
    if not p:
        return "placement: price order and load (no cost model for this model)"
    used = ", ".join(f"{t['target']} ({t['items']} items)" for t in p["targets"])
    verdict = "meets" if p["meets_slo"] else "MISSES"
    line = (
        f"placement ({p['objective']}, from {p['origin']}): {used}; predicted "
        f"{p['ms']:.1f} ms, ${p['usd']:.6f}; {verdict} the {p['slo_ms']:g} ms SLO"
    )
    runner = p.get("runner_up")
    if runner:
        line += (
            f"\nrunner-up: {runner['target']} would take {runner['ms']:.1f} ms "
            f"for ${runner['usd']:.6f}"
        )
    return line
