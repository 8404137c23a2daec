"""``gpufan plan --input``: the profile at a request's shapes, and its confidence, printed.

GIVEN a convolution whose height and width are dynamic, in a repository gpufan.yaml names,
WHEN ``gpufan plan`` runs without and with ``--input x=1x3x320x240`` (a real process),
THEN without shapes it says the profile is bounded and which dims it assumed; with them the JSON
carries the exact FLOPs and bytes per item under their names; a bad ``--input`` is exit 2, named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml

from core.cli.plan import parse_inputs
from core.errors import BadRequest
from tests.unit.test_profile import conv_dynamic_hw


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    (root / "models" / "conv" / "1").mkdir(parents=True)
    onnx.save(conv_dynamic_hw(), str(root / "models" / "conv" / "1" / "model.onnx"))
    target = {
        "name": "a", "backend": "http", "endpoint": "http://127.0.0.1:9", "cloud": "onprem",
        "region": "home", "accelerator": "cpu", "pricing": "owned", "usd_per_hour": 0.0,
    }  # fmt: skip
    doc = {"models": [{"name": "conv", "repository": str(root / "models")}], "targets": [target]}
    (root / "gpufan.yaml").write_text(yaml.safe_dump(doc))
    return root / "gpufan.yaml"


def _plan(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "core.cli", "plan", "--config", str(config), "--model", "conv"]
    return subprocess.run(
        [*cmd, "--items", "8", *flags], capture_output=True, text=True, timeout=120
    )


def test_without_shapes_the_profile_says_what_it_assumed(config: Path) -> None:
    done = _plan(config)
    assert done.returncode == 0, done.stderr
    assert "profile bounded" in done.stdout
    assert "dims assumed 1 (give the request's shapes): height, width" in done.stdout


def test_with_shapes_the_json_carries_exact_figures(config: Path) -> None:
    done = _plan(config, "--input", "x=1x3x320x240", "--json")
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)["model"]
    assert model["flops_per_item"] == 2 * 16 * 320 * 240 * 27
    assert model["bytes_in_per_item"] == 3 * 320 * 240 * 4
    assert model["bytes_out_per_item"] == 16 * 320 * 240 * 4
    assert (model["profile_confidence"], model["profile_notes"]) == ("exact", [])


def test_a_bad_input_flag_is_named(config: Path) -> None:
    done = _plan(config, "--input", "x=1x3xtall")
    assert done.returncode == 2
    assert "dims are whole numbers joined by x" in done.stderr


def test_parse_inputs() -> None:
    assert parse_inputs(["images=1x3x320x320", "sr="]) == {"images": [1, 3, 320, 320], "sr": []}
    with pytest.raises(BadRequest, match="expected NAME=DIMS"):
        parse_inputs(["1x3"])
    with pytest.raises(BadRequest, match="given twice"):
        parse_inputs(["a=1", "a=2"])
