"""The worker's acceleration techniques, measured in one run on this machine.

1. ``int8_speedup``: items/s of the bench CNN's INT8 variant (``gpufan optimize``: static QDQ,
   calibrated on random inputs) over its FP32 model, batch 64, one intra-op thread, rounds
   alternating between the two sessions; medians.
2. ``int8_top1_agreement``: the demo digits classifier's INT8 variant against FP32 over its whole
   held-out set (the label output).
3. ``c1_p50_ratio``: a worker's p50 latency at batch 1 and one client with dynamic batching on,
   over the same worker with it off (the MLP; alternating rounds).
4. ``warm_first_ms`` and ``steady_ms``: a fresh worker's first batch-1 request on the CNN after
   it announced itself and answered the client's readiness probe (on the same connection), and
   the median of the next ones.
5. ``profile_flops_ratio``: over the real pretrained models (``bench/realmodels.py``: a YOLOv8
   detector, PP-OCRv4 det/rec/cls, all-MiniLM-L6-v2 from two exporters), at real input shapes, the
   ratio of ``core.planning.graphcost``'s contraction FLOPs to an independent count from the
   shapes onnxruntime produces; the one furthest from 1. ``unmeasured`` when none is installed.

Last line: ``int8_speedup=… int8_top1_agreement=… c1_p50_ratio=… warm_first_ms=… steady_ms=…
profile_flops_ratio=…``. Run: ``python -m bench.accel`` (``--quick``: a short smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort

from bench.models import build_repo
from core.frontdoor.workers import WorkerPool
from core.wire.client import as_request
from core.wire.tensors import encode_request
from gpu_containers import DEMO_REPOSITORY, DEMO_TEST_SET
from gpu_containers.optimize import Budget, optimize


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _items_per_s(session: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    feeds = {session.get_inputs()[0].name: x}
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, feeds)
    return runs * len(x) / (time.perf_counter() - started)


def int8_speedup(repo: Path, rounds: int, runs: int) -> float:
    model = repo / "cnn" / "1" / "model.onnx"
    rng = np.random.default_rng(0)
    data = repo / "cnn-set.npz"
    np.savez(data, input=rng.standard_normal((64, 3, 64, 64), dtype=np.float32))
    (int8,) = optimize(model, data, variants=["int8"], budget=Budget(None, None, 0.9))
    if int8.path is None:
        raise SystemExit(f"the CNN's INT8 variant was refused: {int8.reason}")
    fp32, quant = _session(model), _session(int8.path)
    x = rng.standard_normal((64, 3, 64, 64), dtype=np.float32)
    for s in (fp32, quant):
        _items_per_s(s, x, 1)  # first runs allocate
    fp32_rates, int8_rates = [], []
    for r in range(rounds):
        fp32_rates.append(_items_per_s(fp32, x, runs))
        int8_rates.append(_items_per_s(quant, x, runs))
        print(f"round {r + 1}: cnn batch 64, 1 thread: FP32 {fp32_rates[-1]:8.1f} items/s, "
              f"INT8 {int8_rates[-1]:8.1f} items/s")  # fmt: skip
    return statistics.median(int8_rates) / statistics.median(fp32_rates)


def int8_top1_agreement(tmp: Path) -> float:
    repo = tmp / "digits-repo"
    shutil.copytree(DEMO_REPOSITORY, repo)
    model = repo / "digits" / "1" / "model.onnx"
    (int8,) = optimize(model, DEMO_TEST_SET, variants=["int8"], budget=Budget(None, None, 0.0))
    if int8.path is None:
        raise SystemExit(f"the digits INT8 variant was not built: {int8.reason}")
    with np.load(DEMO_TEST_SET) as data:
        x = data["x"].astype(np.float32)
    labels = [_session(p).run(["label"], {"X": x})[0] for p in (model, int8.path)]
    agreement = float(np.mean(labels[0] == labels[1]))
    print(f"digits INT8 vs FP32 over {len(x)} held-out items: top-1 agreement {agreement:.4f}")
    return agreement


async def _latencies(
    url: str, body: bytes, headers: dict[str, str], n: int, ready: str | None = None
) -> list[float]:
    """Seconds per request, one at a time over one connection; first, when ``ready`` is given,
    the readiness probe a client or load balancer sends before traffic (which also opens the
    connection: its setup is no warm-up's to save)."""
    out = []
    async with aiohttp.ClientSession() as http:
        if ready is not None:
            async with http.get(ready) as resp:
                if resp.status != 200:
                    raise SystemExit(f"{ready}: {resp.status}")
        for _ in range(n):
            started = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"{url}: {resp.status} {(await resp.text())[:200]}")
            out.append(time.perf_counter() - started)
    return out


def _encoded(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    chunks, headers = encode_request(as_request({"input": x}), binary=True)
    return b"".join(bytes(c) for c in chunks), headers


def c1_p50_ratio(repo: Path, rounds: int, requests: int) -> float:
    body, headers = _encoded(np.random.default_rng(1).standard_normal((1, 784), dtype=np.float32))
    p50 = {"on": [], "off": []}
    with (
        WorkerPool(repo, 1) as on,
        WorkerPool(repo, 1, ["--no-dynamic-batching"]) as off,
    ):
        pools = {"on": on, "off": off}
        for r in range(rounds):
            for label, pool in pools.items():
                url = f"{pool.endpoints[0]}/v2/models/mlp/infer"
                times = asyncio.run(_latencies(url, body, headers, requests))
                p50[label].append(statistics.median(times) * 1e3)
            print(f"round {r + 1}: mlp batch 1, c=1, p50 batching on {p50['on'][-1]:.3f} ms, "
                  f"off {p50['off'][-1]:.3f} ms")  # fmt: skip
    return statistics.median(p50["on"]) / statistics.median(p50["off"])


def warm_first(repo: Path, requests: int) -> tuple[float, float]:
    body, headers = _encoded(np.random.default_rng(2).standard_normal((1, 3, 64, 64), np.float32))
    with WorkerPool(repo, 1) as pool:  # returns once the worker announced itself (ready)
        url, ready = (f"{pool.endpoints[0]}/v2/{p}" for p in ("models/cnn/infer", "health/ready"))
        times = asyncio.run(_latencies(url, body, headers, requests + 1, ready))
    first, steady = times[0] * 1e3, statistics.median(times[1:]) * 1e3
    print(f"fresh worker, cnn batch 1: first request {first:.2f} ms, steady median {steady:.2f} ms")
    return first, steady


def profile_flops_ratio() -> float | None:
    from bench.realmodels import available, profile_ratio

    worst = None
    for m, path in available():
        ratio, p = profile_ratio(m, path)
        print(f"{m.name}: profile/independent FLOPs {ratio:.3f} (profile {p.confidence})")
        if worst is None or abs(np.log(ratio)) > abs(np.log(worst)):
            worst = ratio
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args = parser.parse_args(argv)
    rounds, runs, requests = (1, 2, 100) if args.quick else (5, 6, 1500)
    print(f"onnxruntime {ort.__version__}, {ort.get_device()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = build_repo(tmp / "models", ["mlp", "cnn"])
        speedup = int8_speedup(repo, rounds, runs)
        agreement = int8_top1_agreement(tmp)
        ratio = c1_p50_ratio(repo, rounds, requests)
        first, steady = warm_first(repo, max(requests // 10, 20))
    flops = profile_flops_ratio()
    flops_text = "unmeasured" if flops is None else f"{flops:.3f}"
    print(
        f"int8_speedup={speedup:.2f} int8_top1_agreement={agreement:.4f} c1_p50_ratio={ratio:.3f} "
        f"warm_first_ms={first:.2f} steady_ms={steady:.2f} profile_flops_ratio={flops_text}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
