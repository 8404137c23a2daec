"""Worker metrics for Prometheus, and GPU readings through NVML.

Every worker owns its ``CollectorRegistry`` (never prometheus_client's global one), so several
workers, or a worker and the front door, can live in one test process without clashing names.

NVML (``pynvml``, from the ``nvidia-ml-py`` package) is imported lazily and any failure — package
missing, no driver, no GPU — just means ``gpufan_gpu_available 0``: a CPU-only worker is a normal
worker, not a broken one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["GpuProbe", "GpuSample", "WorkerMetrics"]

log = logging.getLogger(__name__)

# NVML's utilisation counter is itself averaged over 1/6 s to 1 s depending on the GPU; sampling
# more often than this only costs driver calls on the request path.
_GPU_SAMPLE_TTL_S = 0.5

# generate_latest writes text format 0.0.4 (names are plain ASCII); say so, because newer
# prometheus_client versions label it 1.0.0, which older scrapers do not recognise.
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True, slots=True)
class GpuSample:
    utilization: float  # 0..1 over NVML's last sample period
    memory_used_bytes: int
    memory_total_bytes: int


class GpuProbe:
    """Reads GPU ``index`` through NVML; ``sample()`` is None when there is no usable GPU.

    The worker container sees one GPU, so index 0 is the one its CUDA provider runs on.
    """

    def __init__(self, index: int = 0) -> None:
        self._index = index
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._handle: Any = None
        self._tried = False
        self._cached: tuple[float, GpuSample | None] = (float("-inf"), None)

    def _init(self) -> None:
        self._tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self._index)
            self._nvml = pynvml
        except Exception as e:  # ImportError, NVMLError_LibraryNotFound, no device ...
            log.info("NVML unavailable (%s); reporting gpufan_gpu_available 0", e)
            self._nvml = self._handle = None

    def sample(self) -> GpuSample | None:
        """The latest reading, at most ``_GPU_SAMPLE_TTL_S`` old; None without NVML or a GPU."""
        with self._lock:
            now = time.monotonic()
            if now - self._cached[0] < _GPU_SAMPLE_TTL_S:
                return self._cached[1]
            if not self._tried:
                self._init()
            reading = None
            if self._nvml is not None:
                try:
                    util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
                    mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                    reading = GpuSample(util.gpu / 100.0, int(mem.used), int(mem.total))
                except Exception as e:  # the GPU fell off the bus, driver reset ...
                    log.warning("NVML read failed: %s", e)
            self._cached = (now, reading)
            return reading


class WorkerMetrics:
    """The worker's Prometheus metrics in a registry of its own."""

    def __init__(self, gpu: GpuProbe | None = None) -> None:
        self.registry = CollectorRegistry()
        self.gpu = gpu or GpuProbe()
        r = self.registry
        self.requests = Counter(
            "gpufan_worker_requests",
            "Inference requests by outcome (ok, client_error, shed, error).",
            ["model", "outcome"],
            registry=r,
        )
        self.provider = Gauge(
            "gpufan_worker_model_provider",
            "1 for the execution provider each model version runs on, with the one asked for "
            "first and how many accelerators fell back (model metadata says which and why).",
            ["model", "version", "provider", "requested", "fallbacks"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "gpufan_worker_request_seconds",
            "Inference latency inside the worker.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "gpufan_worker_queue_seconds",
            "Time a request waited in the batcher's queue.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "gpufan_worker_batch_size",
            "Items per session run (after dynamic batching).",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "gpufan_worker_queue_depth",
            "Requests waiting for a session run.",
            ["model"],
            registry=r,
        )
        self._gpu_available = Gauge(
            "gpufan_gpu_available", "1 when NVML reads a GPU, else 0.", registry=r
        )
        self._gpu_util = Gauge(
            "gpufan_gpu_utilization_ratio", "GPU busy share (NVML), 0..1.", registry=r
        )
        self._gpu_used = Gauge(
            "gpufan_gpu_memory_used_bytes", "GPU memory in use (NVML).", registry=r
        )
        self._gpu_total = Gauge(
            "gpufan_gpu_memory_total_bytes", "GPU memory in total (NVML).", registry=r
        )

    def set_provider(
        self, model: str, version: str, provider: str, requested: str, fallbacks: int
    ) -> None:
        self.provider.labels(model, version, provider, requested, str(fallbacks)).set(1)

    def observe_request(self, model: str, outcome: str, seconds: float) -> None:
        self.requests.labels(model, outcome).inc()
        if outcome == "ok":
            self.request_seconds.labels(model).observe(seconds)

    def observe_batch(self, model: str, items: int, queue_seconds: Sequence[float]) -> None:
        self.batch_size.labels(model).observe(items)
        waits = self.queue_seconds.labels(model)
        for s in queue_seconds:
            waits.observe(s)

    def exposition(self) -> tuple[bytes, str]:
        """Refresh the GPU gauges and render the registry in Prometheus text format."""
        sample = self.gpu.sample()
        self._gpu_available.set(0 if sample is None else 1)
        if sample is not None:
            self._gpu_util.set(sample.utilization)
            self._gpu_used.set(sample.memory_used_bytes)
            self._gpu_total.set(sample.memory_total_bytes)
        return generate_latest(self.registry), _CONTENT_TYPE
