"""What gpufan's fan-out costs against one direct ONNX Runtime session, measured in one run.

1. CNN, 256-item batches: items/s of (a) one direct ``InferenceSession.run`` caller using every
   core, and (b) the same batch through ``gpufan serve`` with local workers (binary tensors,
   two requests in flight). Last line: ``ratio=<b/a>``.
2. MLP, batch-1 requests straight to one worker at concurrency 8 and 16, with and without dynamic
   batching (req/s).
3. The front door's own cost: MLP batch 1, one client, p50 straight to a worker, through a front
   door over that worker, and through a bare relay on the same stack (``bench.relay``: uvicorn
   in, ``core.wire.h1`` out, the floor no front door on it goes under), alternating rounds, with
   each serving process's CPU per request (Linux: steadier than latency where the load generator
   shares the cores); then 8 clients through the front door. With ``--peers``, KServe 0.21 and
   Ray Serve 2.60 serve the same model to the same load generator (``bench.peers``: their own
   virtualenvs).

Last line: ``frontdoor_overhead_us=<p50 through the front door - p50 straight to the worker, one
client> ratio=<2's items/s through gpufan serve / direct>``.

Run: ``python -m bench.overhead`` (``--quick`` for a short smoke run, ``--peers`` for KServe and
Ray Serve beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.loadgen import LoadResult, drive
from bench.models import build_repo
from core.frontdoor.workers import WorkerPool
from core.wire.client import as_request
from core.wire.tensors import InferRequest, encode_request


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
    parser.add_argument(
        "--peers", action="store_true", help="also KServe and Ray Serve (own virtualenvs)"
    )
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
                    _report(f"mlp batch 1, worker, c={concurrency}, {label}", result, 1)

        # -- 3. the front door's own cost, and the peers -------------------------------------
        overhead_us = _front_door_cost(repo, Path(tmp), b1_body, b1_headers, rounds, b1_requests,
                                       args.peers)  # fmt: skip
    print(f"frontdoor_overhead_us={overhead_us:.0f} ratio={served / baseline:.3f}")
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _started(cmd: list[str], ready: Callable[[], bool], what: str) -> subprocess.Popen[bytes]:
    """Start ``cmd`` and wait (at most 120 s) until ``ready()``; its output is discarded."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if ready():
                return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not start within 120 s")


def _answers(url: str, body: bytes, headers: Mapping[str, str]) -> Callable[[], bool]:
    def ready() -> bool:
        request = urllib.request.Request(url, body, dict(headers), method="POST")
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)

    return ready


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds the process has used (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _p50(
    url: str, body: bytes, headers: Mapping[str, str], requests: int, pid: int | None = None
) -> float:
    """p50 in us of ``requests`` one at a time; with ``pid``, also that process's CPU per
    request in us (``_cpu``): steadier than latency where the client shares the cores."""
    before = _cpu_s(pid) if pid is not None else None
    result = asyncio.run(
        drive(url, body, headers, concurrency=1, requests=requests, time_limit_s=30)
    )
    if result.errors:
        raise SystemExit(f"{url}: {result.errors} errors, first: {result.first_error}")
    after = _cpu_s(pid) if pid is not None else None
    if before is not None and after is not None and result.requests:
        _cpu.setdefault(url, []).append((after - before) / result.requests * 1e6)
    return result.p50_ms * 1e3


_cpu: dict[str, list[float]] = {}  # url -> CPU us per request of the process serving it, a round


def _front_door_cost(
    repo: Path,
    tmp: Path,
    body: bytes,
    headers: Mapping[str, str],
    rounds: int,
    requests: int,
    peers: bool,
) -> float:
    """Section 3; returns the median front-door p50 minus the median direct p50, in us."""
    n = max(requests // 10, 200)
    stopping: list[subprocess.Popen[Any]] = []
    with WorkerPool(repo, 1) as pool:
        worker = pool.endpoints[0]
        config = tmp / "frontdoor.yaml"
        config.write_text(
            f"models: [{{name: mlp}}]\ntargets: [{{name: w0, backend: http, endpoint: '{worker}', "
            "max_concurrency: 8}]\n"
        )
        proc, front = _start_front_door(config)
        stopping.append(proc)
        port = _free_port()
        relay = f"http://127.0.0.1:{port}"
        path = "/v2/models/mlp/infer"
        try:
            bare = _started(
                [sys.executable, "-m", "bench.relay", "--target", worker, "--port", str(port)],
                _answers(relay + path, body, headers), "the bare relay",
            )  # fmt: skip
            stopping.append(bare)
            pids = {worker: pool.pids[0], front: proc.pid, relay: bare.pid}
            for url in (worker, front, relay):  # warm-up: connections, first runs
                _p50(url + path, body, headers, 200)
            _cpu.clear()
            direct, through, floor = [], [], []
            for r in range(rounds):
                direct.append(_p50(worker + path, body, headers, n, pids[worker]))
                through.append(_p50(front + path, body, headers, n, pids[front]))
                floor.append(_p50(relay + path, body, headers, n, pids[relay]))
                _line(
                    f"round {r + 1}: mlp batch 1, 1 client, p50 us: worker / front door / relay",
                    f"{direct[-1]:>6.0f} / {through[-1]:>6.0f} / {floor[-1]:>6.0f}",
                )
            for label, url in (("front door -> 1 worker", front), ("worker", worker)):
                result = asyncio.run(
                    drive(url + path, body, headers, concurrency=8, requests=n * 2,
                          time_limit_s=30)
                )  # fmt: skip
                _report(f"mlp batch 1, c=8, {label}", result, 1)
            if peers:
                _peers(repo, body, headers, n, path)
        finally:
            for p in stopping:
                p.terminate()
                p.wait(30)
    d, t, f = (statistics.median(x) for x in (direct, through, floor))
    _line("median p50, mlp batch 1, 1 client: worker", f"{d:>10.0f} us")
    _line("median p50 through the front door", f"{t:>10.0f} us")
    _line("bare relay on the same stack (uvicorn + core.wire.h1) adds", f"{f - d:>10.0f} us")
    cpu = {label: statistics.median(_cpu[url + path]) for label, url in
           (("worker", worker), ("front door", front), ("bare relay", relay))
           if _cpu.get(url + path)}  # fmt: skip
    if len(cpu) == 3:
        _line(
            "CPU per request, us: worker / front door / bare relay",
            f"{cpu['worker']:>4.0f} / {cpu['front door']:>4.0f} / {cpu['bare relay']:>4.0f}"
            f"  (front door / bare relay {cpu['front door'] / cpu['bare relay']:.2f})",
        )
    return t - d


def _peers(repo: Path, body: bytes, headers: Mapping[str, str], n: int, path: str) -> None:
    """KServe and Ray Serve serving the same model to the same load generator."""
    from bench.peers import KSERVE, PEERS, RAY_SERVE, peer_python

    model = str(repo / "mlp" / "1" / "model.onnx")
    kport, gport, rport = _free_port(), _free_port(), _free_port()
    starts = {
        "KServe 0.21": [
            str(peer_python(KSERVE)), str(PEERS / "kserve_onnx.py"), "--model_name", "mlp",
            "--model_path", model, "--http_port", str(kport), "--grpc_port", str(gport),
        ],
        "Ray Serve 2.60": [
            str(peer_python(RAY_SERVE)), str(PEERS / "rayserve_onnx.py"), "--model-name", "mlp",
            "--model-path", model, "--port", str(rport),
        ],
    }  # fmt: skip
    urls = {
        "KServe 0.21": f"http://127.0.0.1:{kport}",
        "Ray Serve 2.60": f"http://127.0.0.1:{rport}",
    }
    for name, cmd in starts.items():
        url = urls[name] + path
        proc = _started(cmd, _answers(url, body, headers), name)
        try:
            _p50(url, body, headers, 200)  # warm-up
            result = asyncio.run(
                drive(url, body, headers, concurrency=8, requests=n * 2, time_limit_s=30)
            )
            _report(f"mlp batch 1, c=8, {name}", result, 1)
            _line(f"mlp batch 1, 1 client, p50, {name}", f"{_p50(url, body, headers, n):>10.0f} us")
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    sys.exit(main())
