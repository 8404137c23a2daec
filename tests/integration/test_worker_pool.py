"""WorkerPool: parallel start-up, port discovery, kill, stop and start-up failures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from core.errors import WorkerStartError
from core.frontdoor.workers import WorkerPool


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_two_workers_start_announce_and_serve(worker_pool, demo_repo: Path) -> None:
    pool = worker_pool(demo_repo, 2, ["--no-dynamic-batching"])

    assert len(set(pool.endpoints)) == 2
    for endpoint in pool.endpoints:
        assert endpoint.startswith("http://127.0.0.1:")
        ready = httpx.get(f"{endpoint}/v2/models/digits/ready", timeout=5)
        assert ready.json() == {"name": "digits", "ready": True}
        config = httpx.get(f"{endpoint}/v2/models/digits/config", timeout=5).json()
        assert "dynamic_batching" not in config


def test_kill_takes_one_worker_down_and_stop_reaps_the_rest(worker_pool, demo_repo: Path) -> None:
    pool = worker_pool(demo_repo, 2)
    pids = pool.pids

    pool.kill(0)

    assert not pool.alive(0)
    assert pool.alive(1)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{pool.endpoints[0]}/v2/health/live", timeout=2)
    assert httpx.get(f"{pool.endpoints[1]}/v2/health/live", timeout=5).status_code == 200
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 5  # SIGTERM is enough: no wait for the grace period
    assert all(_reaped(pid) for pid in pids)
    assert pool.endpoints == []


def test_a_worker_that_dies_at_start_raises_with_its_stderr(tmp_path: Path) -> None:
    pool = WorkerPool(tmp_path, 2)

    with pytest.raises(WorkerStartError, match=r"exited with code 2(.|\n)*holds no model"):
        pool.start()
    assert pool.endpoints == []


def test_a_silent_worker_times_out_and_is_stopped(demo_repo: Path) -> None:
    pool = WorkerPool(demo_repo, 1, start_timeout_s=0.05)

    with pytest.raises(WorkerStartError, match=r"did not announce its port within 0\.05 s"):
        pool.start()
    assert pool.endpoints == []


def test_the_pool_is_a_context_manager(demo_repo: Path) -> None:
    with WorkerPool(demo_repo, 1, intra_op_threads=1) as pool:
        (pid,) = pool.pids
        assert httpx.get(f"{pool.endpoints[0]}/v2", timeout=5).json()["name"] == "gpufan-worker"
    assert _reaped(pid)
