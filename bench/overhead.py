"""What gpufan's fan-out costs against one direct ONNX Runtime session, measured in one run.

1. CNN, 256-item batches: items/s of (a) one direct ``InferenceSession.run`` caller using every
   core, and (b) the same batch through ``gpufan serve`` with local workers (binary tensors,
   two requests in flight). Last line: ``ratio=<b/a>``.
2. MLP, batch-1 requests straight to one worker at concurrency 8 and 16, with and without dynamic
   batching (req/s), next to KServe's ~1,000 req/s on the same cell
   (``shared/reference/perf-anchors.md``: 993 req/s, mlp batch 1, concurrency 8, binary).

Run: ``python -m bench.overhead`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.loadgen import LoadResult, drive
from bench.models import build_repo
from core.frontdoor.workers import WorkerPool
from core.wire.client import as_request
from core.wire.tensors import InferRequest, encode_request

KSERVE_MLP_B1_C8 = 993.0  # req/s, perf-anchors.md (KServe 0.21, same machine kind, binary)


class _Direct:
    """One direct ``InferenceSession.run`` caller using every core: the baseline."""

    def __init__(self, model: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        self._session = ort.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"]
        )
        self._name = self._session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._name: x})[0]

    def items_per_s(self, x: np.ndarray, runs: int) -> float:
        self.run(x)  # warm-up
        started = time.perf_counter()
        for _ in range(runs):
            self.run(x)
        return runs * len(x) / (time.perf_counter() - started)


def _encoded(request: InferRequest) -> tuple[bytes, dict[str, str]]:
    body, headers = encode_request(request, binary=True)
    return b"".join(body), headers


def _start_front_door(config: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("gpufan serve did not announce itself")


def _report(label: str, result: LoadResult, items: int) -> float:
    if result.errors:
        raise SystemExit(f"{label}: {result.errors} errors, first: {result.first_error}")
    rate = result.rate * items
    _line(label, f"{rate:>10,.0f} items/s  ({result.requests} requests, {result.seconds:.1f} s)")
    return rate


def _line(label: str, value: str) -> None:
    print(f"{label:<58} {value}")


def _check_front_door(url: str, x: np.ndarray, expected: np.ndarray) -> None:
    import aiohttp

    from core.wire.client import OipClient

    async def once() -> np.ndarray:
        async with aiohttp.ClientSession() as http:
            response = await OipClient(url, http).infer("cnn", as_request({"input": x}))
            return response.outputs[0].data

    got = asyncio.run(once())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args = parser.parse_args(argv)
    rounds, cnn_runs, cnn_requests, b1_requests = (
        (1, 3, 6, 2000) if args.quick else (3, 12, 24, 20000)
    )
    rng = np.random.default_rng(0)
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores, onnxruntime {ort.__version__}, {ort.get_device()}")
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_repo(Path(tmp) / "models", ["mlp", "cnn"])

        # -- 1. CNN 256-item batches: direct vs through gpufan serve, alternating rounds ------
        x = rng.standard_normal((256, 3, 64, 64), dtype=np.float32)
        one = rng.standard_normal((1, 784), dtype=np.float32)
        b1_body, b1_headers = _encoded(as_request({"input": one}))
        direct = _Direct(repo / "cnn" / "1" / "model.onnx")
        config = Path(tmp) / "gpufan.yaml"
        config.write_text(
            f"models: [{{name: cnn}}, {{name: mlp}}]\n"
            f"local_workers: {{count: {cores}, repository: {repo}, intra_op_threads: 1}}\n"
            f"policy: {{max_shard_items: 64}}\n"
        )
        proc, url = _start_front_door(config)
        direct_rates, served_rates = [], []
        try:
            _check_front_door(url, x, direct.run(x))
            body, headers = _encoded(as_request({"input": x}))
            cnn_url = f"{url}/v2/models/cnn/infer"
            # warm-up: connections, and the workers' first runs at each batch shape
            asyncio.run(drive(cnn_url, body, headers, concurrency=2, requests=4, time_limit_s=60))
            for r in range(rounds):
                rate = direct.items_per_s(x, cnn_runs)
                direct_rates.append(rate)
                _line(
                    f"round {r + 1}: (a) direct onnxruntime, cnn batch 256, {cores} threads",
                    f"{rate:>10,.0f} items/s",
                )
                result = asyncio.run(
                    drive(
                        cnn_url,
                        body,
                        headers,
                        concurrency=2,
                        requests=cnn_requests,
                        time_limit_s=120,
                    )
                )
                served_rates.append(
                    _report(
                        f"round {r + 1}: (b) gpufan serve, {cores} workers x 1 thread, 2 in flight",
                        result,
                        256,
                    )
                )
            result = asyncio.run(
                drive(
                    f"{url}/v2/models/mlp/infer",
                    b1_body,
                    b1_headers,
                    concurrency=8,
                    requests=b1_requests // 4,
                    time_limit_s=30,
                )
            )
            _report(f"mlp batch 1, front door -> {cores} workers, c=8", result, 1)
        finally:
            proc.terminate()
            proc.wait(30)
        served = statistics.median(served_rates)
        baseline = statistics.median(direct_rates)
        _line("median (a) direct", f"{baseline:>10,.0f} items/s")
        _line("median (b) through gpufan serve", f"{served:>10,.0f} items/s")

        # -- 2. MLP batch-1 straight to a worker, dynamic batching on and off -------------------
        for label, extra in (("dynamic batching", []), ("no batching", ["--no-dynamic-batching"])):
            with WorkerPool(repo, 1, extra) as pool:
                url = f"{pool.endpoints[0]}/v2/models/mlp/infer"
                for concurrency in (8, 16):
                    result = asyncio.run(
                        drive(
                            url,
                            b1_body,
                            b1_headers,
                            concurrency=concurrency,
                            requests=b1_requests,
                            time_limit_s=30,
                        )
                    )
                    rate = _report(f"mlp batch 1, worker, c={concurrency}, {label}", result, 1)
                    if concurrency == 8 and label == "dynamic batching":
                        _line(
                            "  vs KServe anchor (993 req/s)", f"{rate / KSERVE_MLP_B1_C8:>10.2f} x"
                        )
    print(f"ratio={served / baseline:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
