"""``gpufan profile`` against a real worker, and ``gpufan plan`` using what it wrote.

GIVEN a worker serving the bench CNN,
WHEN ``gpufan profile`` sweeps batch 1 and 4 at one client (real processes, loopback) into the
model repository's profile.csv, and ``gpufan plan --json`` runs on a config naming that repository,
THEN the table holds one row per cell with positive items/s and ordered latencies, no GPU memory
(no NVML here), and the CPU target's estimate says "measured <today> on 127.0.0.1" while a T4
target still says "estimated from the spec sheet"; a second sweep replaces its own rows; and a
worker started on that repository cuts its batches at the batch size measured fastest.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from core.frontdoor.workers import WorkerPool


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, timeout=180
    )


def test_a_sweep_writes_a_table_that_plan_then_uses(bench_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(bench_repo / "cnn", repo / "cnn")
    table = repo / "cnn" / "profile.csv"
    with WorkerPool(repo, 1) as pool:
        flags = [
            "profile", "--url", pool.endpoints[0], "--model", "cnn", "--batch-sizes", "1,4",
            "--concurrency", "1", "--requests", "12", "--seconds", "20", "--out", str(table),
        ]  # fmt: skip
        for _ in range(2):  # the second sweep replaces the first's rows
            done = _cli(*flags)
            assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(table.open()))
    assert [(r["batch_size"], r["concurrency"]) for r in rows] == [("1", "1"), ("4", "1")]
    for r in rows:
        assert float(r["items_per_s"]) > 0 and float(r["p50_ms"]) <= float(r["p99_ms"])
        assert (r["accelerator"], r["variant"], r["gpu_memory_bytes"]) == ("cpu", "fp32", "")

    target = {"backend": "http", "endpoint": "http://127.0.0.1:9", "cloud": "onprem",
              "region": "home", "pricing": "owned", "usd_per_hour": 0.0}  # fmt: skip
    config = {
        "models": [{"name": "cnn", "repository": str(repo)}],
        "targets": [{**target, "name": "box", "accelerator": "cpu"},
                    {**target, "name": "gpu", "accelerator": "t4"}],
    }  # fmt: skip
    (tmp_path / "gpufan.yaml").write_text(yaml.safe_dump(config))
    done = _cli("plan", "--config", str(tmp_path / "gpufan.yaml"), "--model", "cnn",
                "--items", "4", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    speed = {c["target"]: c["speed"] for c in json.loads(done.stdout)["candidates"]}
    assert speed["box"] == f"measured {dt.date.today().isoformat()} on 127.0.0.1 (cpu, fp32)"
    assert speed["gpu"] == "estimated from the spec sheet"

    # A worker on that repository cuts its batches at the size measured fastest per item.
    fastest = max(rows, key=lambda r: float(r["items_per_s"]))["batch_size"]
    with WorkerPool(repo, 1) as pool:
        meta = httpx.get(f"{pool.endpoints[0]}/v2/models/cnn", trust_env=False).json()
    assert meta["parameters"]["preferred_batch_size"] == fastest
    assert meta["parameters"]["preferred_batch_size_source"].startswith("measured ")
