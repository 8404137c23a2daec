"""The front door prices each request at its own input shapes when the graph's dims are dynamic.

GIVEN a convolution with dynamic height and width served by a real worker, behind a real
``gpufan serve`` whose gpufan.yaml names the model's repository,
WHEN images of 32x24 and then 64x48 arrive,
THEN each placement report carries the exact FLOPs and bytes per item of its own shape with
confidence "exact" (the model's static profile, at 1x1, would say "bounded"), and the answers
equal a direct run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
import yaml

from core.frontdoor.workers import WorkerPool
from core.wire.client import OipClient, as_request
from core.wire.session import make_session
from tests.integration.conftest import served_front_door
from tests.unit.test_profile import conv_dynamic_hw


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("shapes")
    model = root / "models" / "conv" / "1" / "model.onnx"
    model.parent.mkdir(parents=True)
    onnx.save(conv_dynamic_hw(), str(model))
    with WorkerPool(root / "models", 1) as pool:
        target = {"name": "w0", "backend": "http", "endpoint": pool.endpoints[0]}
        doc = {
            "models": [{"name": "conv", "repository": str(root / "models")}],
            "targets": [target],
        }
        (root / "gpufan.yaml").write_text(yaml.safe_dump(doc))
        with served_front_door(root / "gpufan.yaml") as url:
            yield url, model


async def _infer(url: str, x: np.ndarray) -> tuple[np.ndarray, dict]:
    async with make_session() as http:
        response = await OipClient(url, http).infer("conv", as_request({"x": x}), timeout=60)
    return response.outputs[0].data, orjson.loads(response.parameters["gpufan_report"])


@pytest.mark.parametrize(("h", "w"), [(32, 24), (64, 48)])
def test_each_request_is_priced_at_its_own_shapes(served: tuple[str, Path], h: int, w: int) -> None:
    url, model = served
    x = np.random.default_rng(h).standard_normal((2, 3, h, w)).astype(np.float32)
    y, report = asyncio.run(_infer(url, x))
    figures = report["placement"]["model"]
    assert figures["flops_per_item"] == 2 * 16 * h * w * 27
    assert figures["bytes_in_per_item"] == 3 * h * w * 4
    assert figures["bytes_out_per_item"] == 16 * h * w * 4
    assert (figures["profile_confidence"], figures["profile_notes"]) == ("exact", [])
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(y, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
