"""``gpufan optimize``: precision variants built by onnxruntime's tools, kept only within budget.

GIVEN the demo digits classifier with its held-out set, and the bench CNN with random inputs,
WHEN ``gpufan optimize`` runs (a real process) and a worker serves ``--variant int8``,
THEN accepted variants are written with their accuracy record, a variant outside a tight budget
is refused with its figures and not written, one that cannot run here is refused saying so, and
the worker serves the INT8 file, says so in its metadata and agrees with FP32 on top-1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from core.errors import ConfigError
from core.frontdoor.workers import WorkerPool
from gpu_containers import DEMO_REPOSITORY, DEMO_TEST_SET
from gpu_containers.optimize import Accuracy, Budget, compare, optimize


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(DEMO_REPOSITORY, tmp_path / "repo")
    return tmp_path / "repo"


def _optimize(repo: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "core.cli", "optimize", "--model-repo", str(repo)]
    return subprocess.run(
        [*cmd, "--model", "digits", "--data", str(DEMO_TEST_SET), *flags],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_int8_is_written_with_its_record_and_served_by_the_worker(repo: Path) -> None:
    done = _optimize(repo, "--variants", "int8,fp16")
    assert done.returncode == 0, done.stderr[-3000:]
    variants = repo / "digits" / "1" / "variants"
    record = json.loads((variants / "int8.json").read_text())
    assert record["accuracy"]["top1_agreement"] >= 0.99
    assert record["accuracy"]["items"] == 225  # the held-out set's second half
    assert record["budget"]["min_top1_agreement"] == 0.99
    # skl2onnx's graph defeats the FP16 converter: refused, saying why, nothing written
    assert "fp16  not measured  refused: not built or not runnable here" in done.stdout
    assert not (variants / "fp16.onnx").exists()

    with np.load(DEMO_TEST_SET) as data:
        x, y = data["x"].astype(np.float32), data["y"]
    with WorkerPool(repo, 1, ["--variant", "int8"]) as pool:
        url = pool.endpoints[0]
        meta = httpx.get(f"{url}/v2/models/digits", trust_env=False).json()
        assert meta["parameters"]["variant"] == "int8"
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}]}  # fmt: skip
        reply = httpx.post(f"{url}/v2/models/digits/infer", json=body, trust_env=False).json()
    labels = np.asarray(next(o for o in reply["outputs"] if o["name"] == "label")["data"])
    assert np.mean(labels == y) >= 0.9  # the INT8 classifier still classifies


def test_a_variant_outside_the_budget_is_refused_with_its_figures(repo: Path) -> None:
    done = _optimize(repo, "--variants", "int8", "--max-abs-error", "1e-6")
    assert done.returncode == 1, done.stdout
    assert re.search(
        r"int8 +items=225 max_abs=\S+ .*refused: max abs error \S+ > 1e-06", done.stdout
    )
    assert not (repo / "digits" / "1" / "variants" / "int8.onnx").exists()


def test_fp16_of_the_bench_cnn_is_within_a_float_budget(tmp_path: Path, bench_repo: Path) -> None:
    model = tmp_path / "cnn" / "1" / "model.onnx"
    shutil.copytree(bench_repo / "cnn", tmp_path / "cnn")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "set.npz", x=rng.standard_normal((16, 3, 64, 64)).astype(np.float32))
    (fp16,) = optimize(model, tmp_path / "set.npz", variants=["fp16"], budget=Budget(0.05))
    assert fp16.accepted and fp16.accuracy is not None
    assert 0 < fp16.accuracy.max_abs_error <= 0.05  # not FP32 in disguise, but close
    assert (model.parent / "variants" / "fp16.json").is_file()


def test_a_budget_that_checks_nothing_is_refused(tmp_path: Path, bench_repo: Path) -> None:
    shutil.copytree(bench_repo / "mlp", tmp_path / "mlp")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "set.npz", x=rng.standard_normal((8, 784)).astype(np.float32))
    model = tmp_path / "mlp" / "1" / "model.onnx"
    with pytest.raises(ConfigError, match="the budget checks nothing: give --max-abs-error"):
        optimize(model, tmp_path / "set.npz", budget=Budget(None, None, None))
    plain = _identity(tmp_path / "id" / "1" / "model.onnx")
    np.savez(tmp_path / "id.npz", x=np.arange(4, dtype=np.float32))
    with pytest.raises(ConfigError, match="no class output: give --max-abs-error"):
        optimize(plain, tmp_path / "id.npz", variants=["ort"])


def _identity(path: Path) -> Path:
    """y = x over float [N]: an output that is neither class scores nor labels."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    return path


def test_compare_measures_errors_and_top1() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]], dtype=np.float32)
    moved = scores + np.array([[0, 0], [0, 0], [0.3, -0.3]], dtype=np.float32)
    got = compare(
        {"p": scores, "label": np.array([1, 0, 1])}, {"p": moved, "label": np.array([1, 0, 0])}
    )
    assert got.items == 3 and got.top1_agreement == pytest.approx(2 / 3)
    assert got.max_abs_error == pytest.approx(0.3, abs=1e-6)
    assert got.max_rel_error == pytest.approx(0.75, abs=1e-6)  # 0.3 / 0.4
    budget = Budget(max_abs_error=0.1, min_top1_agreement=0.99)
    assert Accuracy(3, 0.3, 0.75, 2 / 3).violations(budget) == [
        "max abs error 0.3 > 0.1",
        "top-1 agreement 0.6667 < 0.9900",
    ]
