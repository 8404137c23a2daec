"""The `gpufan` command as a user runs it: serve (embedded default), infer, demo, errors."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gpu_containers import DEMO_TEST_SET

GPUFAN = [sys.executable, "-m", "core.cli"]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPUFAN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def embedded_default() -> Iterator[str]:
    """`gpufan serve` with no config: local workers + front door on the demo model."""
    proc = subprocess.Popen(
        [*GPUFAN, "serve", "--port", "0", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    url = None
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        m = re.search(r"listening on (http://\S+) \(targets: local-0, local-1\)", line)
        url = m.group(1) if m else None
    assert url, "gpufan serve (embedded default) did not start"
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    yield url
    proc.terminate()
    assert proc.wait(20) == 0  # clean shutdown, workers reaped


def test_infer_against_the_embedded_default(embedded_default: str, tmp_path: Path) -> None:
    with np.load(DEMO_TEST_SET) as data:
        x, y = data["x"][:50].astype(np.float32), data["y"][:50]
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npz"
    result = _run(
        "infer",
        "--url",
        embedded_default,
        "--model",
        "digits",
        "--input",
        str(tmp_path / "x.npy"),
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"label\s+INT64\s+50", result.stdout)
    assert "local-0" in result.stdout and "local-1" in result.stdout  # the shard table
    with np.load(out) as saved:
        assert saved["label"].shape == (50,)
        assert np.mean(saved["label"] == y) > 0.9


def test_infer_reports_client_errors_in_one_line(embedded_default: str, tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    result = _run(
        "infer",
        "--url",
        embedded_default,
        "--model",
        "digits",
        "--input",
        str(tmp_path / "bad.npy"),
    )
    assert result.returncode == 2
    assert result.stderr.startswith("gpufan infer: ") and "shape" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "gpufan.yaml"
    config.write_text("targets:\n  - name: a\n    backend: http\n    endpoint: ftp://x\n")
    result = _run("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 2
    assert "targets[0].endpoint" in result.stderr and "Traceback" not in result.stderr


def test_demo_runs_end_to_end() -> None:
    result = _run("demo", "--workers", "2", timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    rounds = re.findall(
        r"rows back: (\d+)/(\d+)\s+re-dispatched shards: (\d+)\s+accuracy: ([\d.]+)", result.stdout
    )
    assert len(rounds) == 2
    (rows1, total1, _, acc1), (rows2, total2, redispatched2, acc2) = rounds
    assert rows1 == total1 and rows2 == total2
    assert float(acc1) > 0.9 and acc1 == acc2
    assert int(redispatched2) > 0  # the killed worker's shards went elsewhere
    assert "shut down cleanly" in result.stderr


PLAN_CONFIG = """
models:
  - name: digits
    repository: {repo}
targets:
  - {{name: aws-t4, backend: http, endpoint: "http://a", cloud: aws, region: us-east-1,
     accelerator: T4, pricing: on_demand, sku: g4dn.xlarge}}
  - {{name: gcp-l4-spot, backend: http, endpoint: "http://g", cloud: gcp, region: europe-west4,
     accelerator: L4, pricing: spot, sku: g2-standard-4}}
  - {{name: run-l4, backend: cloudrun, endpoint: "https://r", cloud: gcp, region: us-central1,
     accelerator: L4, pricing: serverless, sku: run-l4, scale_to_zero: true, cold_start_s: 8}}
"""


@pytest.fixture
def plan_config(tmp_path: Path) -> Path:
    from gpu_containers import DEMO_REPOSITORY

    path = tmp_path / "gpufan.yaml"
    path.write_text(PLAN_CONFIG.format(repo=DEMO_REPOSITORY))
    return path


def test_plan_explains_every_candidate_and_the_choice(plan_config: Path) -> None:
    result = _run(
        "plan",
        "--config",
        str(plan_config),
        "--model",
        "digits",
        "--items",
        "5000",
        "--from",
        "aws:us-east-1",
        "--slo-ms",
        "2000",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("aws-t4", "gcp-l4-spot", "run-l4"):
        assert name in out
    assert "prices: snapshot of 2026-09-06" in out
    assert re.search(r"run-l4 .* no: \d+ ms > SLO 2000 ms", out)  # cold start of 8 s
    placement = out.split("placement (meets the SLO):")[1]
    assert "aws-t4" in placement.splitlines()[3]  # next to the caller: no egress
    assert "runner-up: gcp-l4-spot" in out


def test_plan_json_carries_the_breakdowns(plan_config: Path) -> None:
    import json

    result = _run(
        "plan",
        "--config",
        str(plan_config),
        "--model",
        "digits",
        "--items",
        "100",
        "--from",
        "gcp:europe-west4",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    by_name = {c["target"]: c for c in doc["candidates"]}
    assert by_name["gcp-l4-spot"]["cost"]["egress_in"] == 0  # same region
    assert by_name["aws-t4"]["cost"]["egress_in"] > 0  # GCP -> AWS over the internet
    assert set(by_name["aws-t4"]["latency"]) >= {"rtt", "transfer", "queue", "compute"}
    assert doc["placement"]["targets"][0]["target"] == "gcp-l4-spot"
    assert doc["placement"]["meets_slo"] is True


def test_plan_rejects_an_unknown_model(plan_config: Path) -> None:
    result = _run("plan", "--config", str(plan_config), "--model", "nope", "--items", "1")
    assert result.returncode == 2 and "unknown model 'nope'" in result.stderr
