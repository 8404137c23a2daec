"""Stragglers end to end: a real `gpufan serve` over three real workers, during a client stream.

GIVEN a stream of clients, each answer checked against one direct onnxruntime run,
WHEN one worker is frozen (SIGSTOP) and later thawed, and another is killed and restarted on its
address,
THEN hedges keep every answer coming well within the deadline, the frozen worker is benched by its
stalls, and both workers are used again once they answer.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from core.cli.render import placement_report
from core.frontdoor.workers import WorkerPool
from core.wire.client import OipClient, as_request
from core.wire.session import make_session
from gpu_containers import DEMO_REPOSITORY
from tests.integration.conftest import served_front_door

pytestmark = pytest.mark.slow

MODEL = "digits"
CLIENTS = 6
ROWS = 16
COOLDOWN_S = 2.0
DEADLINE_MS = 10_000
STOP_S = 5.0


class Stream:
    """Clients sending 16-row requests until told to stop; every answer checked exact."""

    def __init__(self, url: str, x: np.ndarray, direct: Callable[[np.ndarray], Any]) -> None:
        self.url, self.x, self.direct = url, x, direct
        self.answers: list[tuple[float, float, dict[str, Any]]] = []  # sent, answered, report
        self.stop = asyncio.Event()

    async def client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        async with make_session() as http:
            oip = OipClient(self.url, http)
            for _ in range(100_000):  # bounded: the stream stops long before
                if self.stop.is_set():
                    return
                start = int(rng.integers(0, len(self.x) - ROWS))
                x = self.x[start : start + ROWS]
                sent = time.monotonic()
                resp = await oip.infer(MODEL, as_request({"X": x}), timeout=60)
                answered = time.monotonic()
                for name, want in self.direct(x).items():
                    got = next(t.data for t in resp.outputs if t.name == name)
                    np.testing.assert_array_equal(got, want, err_msg=name)
                report = placement_report(resp.parameters)
                assert report is not None
                self.answers.append((sent, answered, report))

    async def first_served_by(self, target: str, after: float, within_s: float) -> float:
        """Seconds from ``after`` to the first answer with a shard that ``target`` served."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for sent, answered, report in self.answers:
                if sent >= after and any(s["target"] == target for s in report["shards"]):
                    return answered - after
            await asyncio.sleep(0.05)
        raise AssertionError(f"{target} served nothing within {within_s:g} s")


def _metric(text: str, name: str, target: str) -> float:
    m = re.search(rf'^{name}\{{target="{target}"\}} (\S+)$', text, re.M)
    assert m, f"{name} for {target} is not in /metrics"
    return float(m.group(1))


async def _metrics(url: str) -> str:
    async with httpx.AsyncClient(trust_env=False) as http:
        return (await http.get(f"{url}/metrics")).text


def _restart(endpoint: str) -> subprocess.Popen[bytes]:
    """A fresh worker on ``endpoint``'s port, returned once it is ready."""
    port = endpoint.rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpu_containers.worker", "--model-repo", str(DEMO_REPOSITORY),
         "--host", "127.0.0.1", "--port", port, "--intra-op-threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{endpoint}/v2/health/ready", trust_env=False).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the restarted worker on {endpoint} did not become ready")


async def test_a_frozen_worker_is_hedged_around_benched_and_used_again(
    tmp_path: Path, digits: np.ndarray, direct: Callable[[np.ndarray], Any]
) -> None:
    with WorkerPool(DEMO_REPOSITORY, 3) as pool:
        config = {
            "models": [{"name": MODEL}],
            "targets": [
                {"name": f"w{i}", "backend": "http", "endpoint": ep, "max_concurrency": 2}
                for i, ep in enumerate(pool.endpoints)
            ],
            "policy": {
                "max_shard_items": 8,
                "min_shard_items": 8,
                "breaker_cooldown_s": COOLDOWN_S,
                "deadline_ms": DEADLINE_MS,
            },
        }
        (tmp_path / "gpufan.yaml").write_text(yaml.safe_dump(config))
        frozen, restarted = pool.pids[1], None
        with served_front_door(tmp_path / "gpufan.yaml") as url:
            stream = Stream(url, digits, direct)
            clients = [asyncio.create_task(stream.client(i)) for i in range(CLIENTS)]
            try:
                await asyncio.sleep(2.0)  # warm: every target has a p95
                stopped = time.monotonic()
                os.kill(frozen, signal.SIGSTOP)
                await asyncio.sleep(STOP_S)
                during = await _metrics(url)
                os.kill(frozen, signal.SIGCONT)
                thawed = time.monotonic()
                readmit_s = await stream.first_served_by("w1", thawed, COOLDOWN_S + 8)

                pool.kill(2)  # a crash, then a new worker on the same address
                await asyncio.sleep(1.0)
                restarted = await asyncio.to_thread(_restart, pool.endpoints[2])
                back = time.monotonic()
                reuse_s = await stream.first_served_by("w2", back, COOLDOWN_S + 8)
            finally:
                os.kill(frozen, signal.SIGCONT)
                stream.stop.set()
                results = await asyncio.gather(*clients, return_exceptions=True)
                if restarted is not None:
                    restarted.terminate()
                    restarted.wait(10)
            after = await _metrics(url)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors  # no client saw an error, and every answer was exact

    latencies = sorted(a - s for s, a, _ in stream.answers if stopped <= s < thawed)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    hedges = sum(_metric(after, "gpufan_target_hedges_total", f"w{i}") for i in range(3))
    won = sum(_metric(after, "gpufan_target_hedges_won_total", f"w{i}") for i in range(3))
    print(
        f"\nduring the {STOP_S:g} s stop: {len(latencies)} answers, p99 {p99 * 1000:.0f} ms; "
        f"{len(stream.answers)} answers in all; hedges sent {hedges:g}, won {won:g}; "
        f"w1 stalls {_metric(after, 'gpufan_target_stalls_total', 'w1'):g}; "
        f"w1 re-admitted {readmit_s:.2f} s after SIGCONT; "
        f"restarted w2 serving {reuse_s:.2f} s after it was ready"
    )
    assert len(latencies) >= 20  # the front door kept answering through the stop
    assert p99 < DEADLINE_MS / 1000 / 5
    assert _metric(during, "gpufan_target_breaker_open", "w1") == 1  # benched while frozen
    assert _metric(during, "gpufan_target_stalls_total", "w1") >= 1
    assert won >= 1 and hedges >= won
    # answered again within a cool-down and a probe of being able to
    assert readmit_s < COOLDOWN_S + 3 and reuse_s < COOLDOWN_S + 3
    reports = [r for _, _, r in stream.answers]
    for report in reports:
        for shard in report["shards"]:
            attempts = shard["attempts"]
            assert sum(a["ok"] for a in attempts) == 1 and attempts[-1]["target"] == shard["target"]
    assert any(a.get("hedge") for r in reports for s in r["shards"] for a in s["attempts"])
