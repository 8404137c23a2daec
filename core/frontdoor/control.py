"""The scheduled control loop: one tick sweeps the targets' readiness and runs the autoscaler.

Every scheduled entry point (Lambda's EventBridge schedule, Cloud Scheduler's Pub/Sub, Azure's
timer) runs ``control_tick``; ``gpufan autoscale`` runs the autoscaler alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.backends import Backend
from core.config import Target
from core.errors import GpufanError

if TYPE_CHECKING:
    from core.autoscale.loop import Autoscaler
    from core.frontdoor.runtime import FrontDoorRuntime

__all__ = ["control_tick", "run_control_loop"]


async def run_control_loop(
    targets: Sequence[Target],
    backends: Mapping[str, Backend],
    *,
    timeout_s: float = 10.0,
    autoscaler: Autoscaler | None = None,
) -> dict[str, Any]:
    """One tick of the scheduled control loop: ask every target whether it is ready, then (given
    an ``autoscaler``) run one forecast-plan-reconcile pass.

    The health sweep's JSON summary is what the scheduled functions log and return; the pass adds
    its report under ``autoscale`` (or its error: a failed pass never fails the sweep).
    """

    async def probe(target: Target) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                ready = await backends[target.backend].ready(target)
            error = None
        except TimeoutError:
            ready, error = False, f"no answer within {timeout_s:g} s"
        return {
            "name": target.name,
            "backend": target.backend,
            "cloud": target.cloud,
            "region": target.region,
            "ready": ready,
            "ms": round((time.perf_counter() - started) * 1000, 3),
            **({"error": error} if error else {}),
        }

    results = await asyncio.gather(*(probe(t) for t in targets))
    summary: dict[str, Any] = {
        "checked_at": datetime.now(UTC).isoformat(),
        "ready": sum(r["ready"] for r in results),
        "total": len(results),
        "targets": list(results),
    }
    if autoscaler is not None:
        try:
            summary["autoscale"] = (await autoscaler.run_once()).summary()
        except GpufanError as e:
            summary["autoscale"] = {"error": f"{type(e).__name__}: {e}"}
    return summary


async def control_tick(runtime: FrontDoorRuntime) -> dict[str, Any]:
    """What every scheduled entry point runs: the control loop over the front door's targets,
    with its autoscaler when the runtime has one."""
    return await run_control_loop(runtime.targets, runtime.backends, autoscaler=runtime.autoscaler)
