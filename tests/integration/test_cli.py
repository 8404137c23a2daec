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
