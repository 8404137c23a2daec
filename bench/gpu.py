"""The GPU check: the bench CNN through every execution provider this onnxruntime build offers.

On a machine with an NVIDIA GPU and onnxruntime-gpu, each variant runs the same batch, its output
is checked against CPU FP32 within the variant's budget, and its items/s measured:

- CPU EP, FP32, every host core: the baseline;
- CUDA EP FP32; CUDA EP FP16 (``gpufan optimize``'s FP16 variant, float32 I/O); CUDA EP FP32 with
  CUDA graphs (IOBinding on device buffers, one capture, then replays), bare and as the worker
  runs it (``ModelRunner`` with ``optimization.cuda.graphs``: warmed up and captured before the
  first timed call, a host->device and a device->host copy in every call);
- TensorRT EP FP16, with its engine cache in a temporary folder, where the build has it.

A variant that cannot run is reported by name with its error, never dropped. The last line is
``gpu_speedup=<best GPU items/s / CPU EP items/s> first_request_ms=<first CUDA run after session
creation> steady_ms=<median CUDA run>``. Without a GPU it says so and exits 0 after the CPU
baseline. Run: ``python -m bench.gpu`` (``--batch``, ``--runs``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.models import build_cnn

BUDGETS = {"fp32": 1e-3, "fp16": 5e-2}  # max abs error against CPU FP32 on the CNN's logits

Runner = Callable[[], np.ndarray]


def _timed(run: Runner, runs: int, items: int) -> tuple[float, float, float, np.ndarray]:
    """(first run ms, steady median ms, items/s, output)."""
    started = time.perf_counter()
    out = run()
    first = (time.perf_counter() - started) * 1e3
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - started)
    steady = statistics.median(times)
    return first, steady * 1e3, items / steady, out


def _plain(path: Path, providers: list, x: np.ndarray, threads: int = 0) -> Runner:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=providers)
    if session.get_providers()[0] != (
        providers[0] if isinstance(providers[0], str) else providers[0][0]
    ):
        raise RuntimeError(f"fell back to {session.get_providers()[0]}")
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})[0]


def _cuda_graph(path: Path, x: np.ndarray) -> Runner:
    session = ort.InferenceSession(
        str(path), providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]
    )
    out = session.get_outputs()[0]
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    y_dev = ort.OrtValue.ortvalue_from_shape_and_type([len(x), out.shape[1]], np.float32, "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, x_dev)
    binding.bind_ortvalue_output(out.name, y_dev)

    def run() -> np.ndarray:
        session.run_with_iobinding(binding)  # the first call captures, the rest replay
        return y_dev.numpy()

    return run


def _worker_cuda_graph(path: Path, x: np.ndarray) -> Runner:
    from core.wire.modelconfig import ModelConfig
    from gpu_containers.runner import ModelRunner, session_plan

    runner = ModelRunner(path, plan=session_plan(ModelConfig(cuda_graphs=True), path, 1))
    if not runner.cuda_graphs:
        raise RuntimeError("; ".join(runner.notes) or "CUDA graphs not enabled")
    runner.warm_up(len(x))  # the worker's warm-up: this shape captured before serving
    name = runner.inputs[0].name
    return lambda: next(iter(runner.run({name: x}, ()).values()))


def _fp16(path: Path, folder: Path) -> Path:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    out = folder / "cnn-fp16.onnx"
    onnx.save(model, str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    providers = ort.get_available_providers()
    cores = os.cpu_count() or 1
    print(f"onnxruntime {ort.__version__}; providers {providers}; {cores} host cores")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_cnn(tmp / "cnn.onnx")
        x = np.random.default_rng(0).standard_normal((args.batch, 3, 64, 64), dtype=np.float32)
        _, cpu_ms, cpu_rate, reference = _timed(
            _plain(model, ["CPUExecutionProvider"], x, threads=cores),
            max(args.runs // 4, 3),
            len(x),
        )
        print(f"CPU EP FP32, {cores} threads: {cpu_rate:10.1f} items/s ({cpu_ms:.2f} ms/batch)")
        if "CUDAExecutionProvider" not in providers:
            print(
                "no GPU: this onnxruntime build has no CUDA execution provider; nothing else to run"
            )
            return 0
        variants: dict[str, tuple[str, Callable[[], Runner]]] = {
            "CUDA EP FP32": ("fp32", lambda: _plain(model, ["CUDAExecutionProvider"], x)),
            "CUDA EP FP16": (
                "fp16",
                lambda: _plain(_fp16(model, tmp), ["CUDAExecutionProvider"], x),
            ),
            "CUDA EP FP32 + CUDA graphs": ("fp32", lambda: _cuda_graph(model, x)),
            "worker, CUDA FP32 + CUDA graphs": ("fp32", lambda: _worker_cuda_graph(model, x)),
        }
        if "TensorrtExecutionProvider" in providers:
            trt = {"trt_fp16_enable": "1", "trt_engine_cache_enable": "1",
                   "trt_engine_cache_path": str(tmp / "trt")}  # fmt: skip
            variants["TensorRT EP FP16"] = (
                "fp16",
                lambda: _plain(
                    model, [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider"], x
                ),
            )
        best, failures, cuda_first, cuda_steady = 0.0, 0, float("nan"), float("nan")
        for label, (precision, make) in variants.items():
            try:
                first, steady, rate, out = _timed(make(), args.runs, len(x))
            except Exception as e:  # a provider this build or driver cannot run: say which
                print(f"{label}: could not run: {type(e).__name__}: {e}")
                failures += 1
                continue
            error = float(np.abs(out.astype(np.float64) - reference).max())
            ok = error <= BUDGETS[precision]
            failures += not ok
            verdict = f"{'within' if ok else 'OUTSIDE'} {BUDGETS[precision]:g}"
            print(
                f"{label}: {rate:10.1f} items/s, first {first:.1f} ms, steady {steady:.2f} ms, "
                f"max abs error {error:.2e} ({verdict})"
            )
            if ok:
                best = max(best, rate)
            if label == "CUDA EP FP32":
                cuda_first, cuda_steady = first, steady
    print(
        f"gpu_speedup={best / cpu_rate:.2f} first_request_ms={cuda_first:.1f} "
        f"steady_ms={cuda_steady:.2f}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
