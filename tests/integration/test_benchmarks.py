"""The acceleration benchmarks run here as a user would run them (short ``--quick`` runs).

GIVEN this machine (no GPU),
WHEN ``python -m bench.gpu`` and ``python -m bench.accel --quick`` run,
THEN the GPU check measures the CPU baseline, says there is no GPU and exits 0, and the
acceleration benchmark ends with its one line of named figures, each a number or ``unmeasured``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

REPO = Path(__file__).parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="a GPU build: run it whole"
)
def test_the_gpu_check_says_there_is_no_gpu_and_exits_0() -> None:
    done = _run("bench.gpu", "--batch", "8", "--runs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"CPU EP FP32, \d+ threads: +[\d.]+ items/s", done.stdout)
    assert "no GPU: this onnxruntime build has no CUDA execution provider" in done.stdout


def test_the_acceleration_benchmark_ends_with_its_figures() -> None:
    done = _run("bench.accel", "--quick")
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    figures = dict(pair.split("=") for pair in last.split())
    assert list(figures) == [
        "int8_speedup", "int8_top1_agreement", "c1_p50_ratio", "warm_first_ms", "steady_ms",
        "profile_flops_ratio",
    ]  # fmt: skip
    for name, value in figures.items():
        assert value == "unmeasured" or float(value) > 0, (name, value)
    assert float(figures["int8_top1_agreement"]) >= 0.99
