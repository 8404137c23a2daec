"""Fixtures for tests that run real worker processes on loopback.

- ``demo_repo``: the bundled digits repository (``gpu_containers.DEMO_REPOSITORY``).
- ``bench_repo``: the benchmark ``mlp`` and ``cnn`` models, built once per session.
- ``types_repo``: an Identity model with one input/output pair per OIP datatype.
- ``worker_pool`` / ``module_worker_pool``: factories ``start(repo, n=1, extra_args=(), **kw)``
  returning a started ``core.frontdoor.workers.WorkerPool``; every pool they start is stopped
  at teardown.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bench.models import build_repo
from core.frontdoor.workers import WorkerPool
from gpu_containers import DEMO_REPOSITORY, DEMO_TEST_SET

# OIP datatype -> ONNX element type of the datatype-coverage model.
TYPES_MODEL_DATATYPES = {
    "FP32": TensorProto.FLOAT,
    "FP16": TensorProto.FLOAT16,
    "INT64": TensorProto.INT64,
    "INT32": TensorProto.INT32,
    "UINT8": TensorProto.UINT8,
    "BOOL": TensorProto.BOOL,
    "BYTES": TensorProto.STRING,
}


@contextmanager
def served_front_door(
    config: Path, log: list[bytes] | None = None, args: Sequence[str] = ()
) -> Iterator[str]:
    """A real ``gpufan serve --config`` process (with ``args``) on a free loopback port; yields
    its URL.

    The lines it writes after its announcement (stdout and stderr) are appended to ``log``."""
    cmd = [sys.executable, "-m", "core.cli", "serve", "--config", str(config), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        deadline, seen, url = time.monotonic() + 60, b"", None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            if m := re.search(rb"listening on (http://\S+)", line):
                url = m.group(1).decode()
            elif not line and proc.poll() is not None:
                break
        assert url, f"gpufan serve did not start:\n{seen.decode()}"
        sink = [] if log is None else log
        threading.Thread(target=_drain, args=(proc.stdout, sink), daemon=True).start()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _drain(stream: IO[bytes], sink: list[bytes]) -> None:
    for line in stream:
        sink.append(line)


# One sample per datatype for the ``types`` model's inputs: the extremes each must carry exactly.
TYPES_SAMPLE = {
    "FP32": np.array([[1.5, -2.25, 3.0e8]] * 2, dtype=np.float32),
    "FP16": np.array([[0.5, -1.0, 65504.0]] * 2, dtype=np.float16),
    "INT64": np.array([[2**62, -(2**62), 0]] * 2, dtype=np.int64),
    "INT32": np.array([[2**31 - 1, -(2**31), 7]] * 2, dtype=np.int32),
    "UINT8": np.array([[0, 128, 255]] * 2, dtype=np.uint8),
    "BOOL": np.array([[True, False, True]] * 2),
    "BYTES": np.array([[b"gpu", "f\u00e4n".encode(), b""]] * 2, dtype=object),
}


def free_port() -> int:
    """A loopback port free just now (for servers that cannot report the one they picked)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def versioned_repo(root: Path, demo_repo: Path, types_repo: Path) -> Path:
    """The demo ``digits`` as versions 1 and 2 (same graph), beside the ``types`` model."""
    shutil.copytree(demo_repo / "digits", root / "digits")
    shutil.copytree(root / "digits" / "1", root / "digits" / "2")
    shutil.copytree(types_repo / "types", root / "types")
    return root


def build_types_model(path: Path) -> Path:
    """Write ``types``: input ``in_<DT>`` [-1, 3] passes to ``out_<DT>`` for each datatype."""
    nodes, inputs, outputs = [], [], []
    for datatype, elem in TYPES_MODEL_DATATYPES.items():
        nodes.append(helper.make_node("Identity", [f"in_{datatype}"], [f"out_{datatype}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{datatype}", elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{datatype}", elem, ["batch", 3]))
    graph = helper.make_graph(nodes, "types", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class PoolFactory:
    """Starts worker pools and remembers them so the fixture can stop every one."""

    def __init__(self) -> None:
        self.pools: list[WorkerPool] = []

    def __call__(
        self, repo: str | Path, n: int = 1, extra_args: Sequence[str] = (), **kwargs: Any
    ) -> WorkerPool:
        pool = WorkerPool(repo, n, extra_args, **kwargs)
        self.pools.append(pool)
        return pool.start()

    def stop_all(self) -> None:
        for pool in self.pools:
            pool.stop()


@pytest.fixture(scope="session")
def demo_repo() -> Path:
    return DEMO_REPOSITORY


@pytest.fixture(scope="session")
def bench_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("bench_repo"), ["mlp", "cnn"])


@pytest.fixture(scope="session")
def types_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("types_repo")
    build_types_model(root / "types" / "1" / "model.onnx")
    return root


@pytest.fixture
def worker_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def module_worker_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    """The demo model's held-out inputs (``X``, FP32 [n, 64])."""
    with np.load(DEMO_TEST_SET) as data:
        return data["x"].astype(np.float32)


@pytest.fixture(scope="session")
def direct() -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """One direct onnxruntime session on the demo model: the reference every path must equal."""
    session = ort.InferenceSession(
        str(DEMO_REPOSITORY / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return lambda x: dict(zip(names, session.run(None, {"X": x}), strict=True))
