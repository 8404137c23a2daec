"""``gpufan autoscale``: forecast load and reconcile warm capacity, once or every interval.

Parse, call ``core.autoscale.loop.Autoscaler``, render the diff table. History comes from the
config's ``autoscale.history``, else the ``GPUFAN_HISTORY`` variable, else SQLite in the temp dir
(the store the front door records into, ``core.autoscale.history``). Without ``--once`` it runs a
pass every interval for at most a day, then exits for its supervisor to restart it (every loop
here is bounded).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from core.autoscale.history import HISTORY_ENV, HistoryStore, open_history
from core.autoscale.loop import Autoscaler, AutoscaleReport
from core.autoscale.settings import of
from core.cli.render import table
from core.config import Settings

__all__ = ["render", "run_autoscale"]

_RECONCILABLE = ("cloudrun", "aca", "aci", "batch")
_MAX_PASSES_S = 86400.0  # without --once: a day of passes, then exit


def render(report: AutoscaleReport) -> str:
    """The diff as text: one row per target, then what each model's forecast asked for."""
    rows = [
        [c.target, c.backend, "?" if c.before is None else c.before, c.after, c.action, c.detail]
        for c in report.changes
    ]
    headers = ["target", "backend", "now", "plan", "action", "detail"]
    lines = [table(headers, rows)] if rows else []
    for m in report.models:
        expects = (
            "" if m.expected_attainment is None
            else f", expects {m.expected_attainment:.4f} inside the SLO"
        )  # fmt: skip
        lines.append(
            f"model {m.model}: {m.method} over {m.intervals} intervals, needs "
            f"{m.required_items_per_s:.1f} items/s (short {m.shortfall_items_per_s:.1f}), "
            f"${m.usd_per_hour:.3f}/h{expects}: {m.reason}"
        )
        if m.backtest_loss:
            ranked = sorted(m.backtest_loss.items(), key=lambda kv: kv[1])
            lines.append(
                "  backtest (pinball loss of the upper quantile, items/s): "
                + ", ".join(f"{name} {loss:.1f}" for name, loss in ranked)
            )
        lines += [f"  not tried: {why}" for why in m.untried]
    lines += [f"note: {n}" for n in report.notes]
    if report.dry_run:
        lines.append("dry run: nothing was sent")
    return "\n".join(lines)


async def _one_pass(
    settings: Settings,
    history: HistoryStore,
    dry_run: bool,
    backends: Mapping[str, Any] | None,
    clock: Callable[[], float],
) -> AutoscaleReport:
    from core.backends import BackendContext, backend_class
    from core.frontdoor.runtime import build_cost_model
    from core.wire.session import make_session

    session = None
    if backends is None:
        session = make_session(max_connections=16)
        names = sorted({t.backend for t in settings.targets} & set(_RECONCILABLE))
        backends = {n: backend_class(n).create(BackendContext(session)) for n in names}
        owned = list(backends.values())
    else:
        owned = []
    try:
        autoscaler = Autoscaler(
            [m.name for m in settings.models],
            settings.targets,
            backends,
            build_cost_model(settings, settings.targets),
            history,
            settings=of(settings),
            policy=settings.policy,
            clock=clock,
        )
        return await autoscaler.run_once(dry_run=dry_run)
    finally:
        for backend in owned:
            await backend.aclose()
        if session is not None:
            await session.close()


def run_autoscale(
    args: argparse.Namespace,
    *,
    backends: Mapping[str, Any] | None = None,
    history: HistoryStore | None = None,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """One pass (``--once``) or a day of passes; prints each pass's diff.

    ``backends``, ``history``, ``env`` and ``clock`` are for tests and embedding; the command
    line builds them from the config and the environment.
    """
    from core.cli.serve import resolve_settings

    settings = resolve_settings(args.config, None)
    auto = of(settings)
    env = os.environ if env is None else env
    store = history or open_history(
        auto.history or env.get(HISTORY_ENV), interval_s=auto.interval_s
    )
    passes = 1 if args.once else math.ceil(_MAX_PASSES_S / auto.interval_s)
    try:
        for i in range(passes):
            if i:
                time.sleep(auto.interval_s)
            report = asyncio.run(_one_pass(settings, store, args.dry_run, backends, clock))
            print(render(report), flush=True)
    finally:
        if history is None:
            store.close()
    return 0
