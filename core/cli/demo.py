"""``gpufan demo``: the whole path on one machine, start to finish, with a report.

Starts the embedded default (local workers + front door on loopback), classifies the bundled
held-out digits through it, prints where every shard ran and the accuracy; then kills one worker
and does it again, to show the re-dispatch that keeps every row.
"""

from __future__ import annotations

import time

import aiohttp
import numpy as np

from core.cli.render import placement_report, placement_summary, progress, shard_table
from core.frontdoor.runtime import (
    FrontDoorRuntime,
    embedded_settings,
    front_door_asgi,
    started_local_workers,
)
from core.wire.asgi import bind_socket, run_async, start_server
from core.wire.client import OipClient, as_request
from core.wire.tensors import InferResponse

__all__ = ["run_demo"]

MODEL = "digits"


def _accuracy(response: InferResponse, labels: np.ndarray) -> float:
    predicted = next(t.data for t in response.outputs if t.name == "label")
    return float(np.mean(predicted.astype(np.int64) == labels))


async def _round(client: OipClient, title: str, x: np.ndarray, y: np.ndarray) -> float:
    name = (await client.model_metadata(MODEL))["inputs"][0]["name"]
    started = time.perf_counter()
    response = await client.infer(MODEL, as_request({name: x}, request_id=title))
    wall_ms = (time.perf_counter() - started) * 1000
    report = placement_report(response.parameters)
    assert report is not None, "the front door always attaches its placement report"
    accuracy = _accuracy(response, y)
    rows = sum(s["items"] for s in report["shards"])
    print(f"\n== {title}: {len(x)} digits in {wall_ms:.1f} ms ==")
    print(shard_table(report))
    print(placement_summary(report))
    print(
        f"rows back: {rows}/{len(x)}   re-dispatched shards: {report['redispatched']}   "
        f"accuracy: {accuracy:.4f}"
    )
    return accuracy


async def _demo(workers: int, chaos: bool) -> int:
    from gpu_containers import DEMO_TEST_SET

    settings = embedded_settings(workers)
    with np.load(DEMO_TEST_SET) as data:
        x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
    progress(f"starting {workers} local worker(s) with the demo model ...")
    started = time.perf_counter()
    with started_local_workers(settings.local_workers) as local:
        progress(f"workers ready in {time.perf_counter() - started:.1f} s; starting the front door")
        runtime = FrontDoorRuntime(
            settings, local.targets, local_endpoints=local.endpoints, local_token=local.token
        )
        sock = bind_socket("127.0.0.1", 0)
        server = await start_server(front_door_asgi(runtime), sock)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        progress(f"front door on {url}; sending {len(x)} held-out digits")
        try:
            async with aiohttp.ClientSession() as http:
                client = OipClient(url, http)
                first = await _round(client, "round 1", x, y)
                if chaos and local.pool is not None and workers > 1:
                    local.pool.kill(workers - 1)
                    progress(f"killed worker local-{workers - 1}; sending the same batch again")
                    second = await _round(client, "round 2 (one worker killed)", x, y)
                    if second != first:
                        print("accuracy changed after the failure: rows were lost or reordered")
                        return 1
        finally:
            await server.stop()
    progress("shut down cleanly")
    return 0


def run_demo(workers: int = 3, chaos: bool = True) -> int:
    return run_async(_demo(workers, chaos))
