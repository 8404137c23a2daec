"""The worker image's entry point, run here as the image would run it (no Docker engine here).

GIVEN gpu_containers/Dockerfile's ENTRYPOINT + CMD, EXPOSE and HEALTHCHECK,
WHEN that command line runs (model repository and address swapped for this machine),
THEN the worker starts, answers the health check the image declares, and stops cleanly.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gpu_containers import DEMO_REPOSITORY

DOCKERFILE = Path(__file__).parents[2] / "gpu_containers" / "Dockerfile"


def _instruction(name: str) -> str:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = re.findall(rf"^{name}\s+(.+)$", text, flags=re.M)
    assert len(found) == 1, f"expected one {name} in the Dockerfile, found {found}"
    return found[0]


def test_image_command_line_matches_the_worker() -> None:
    entrypoint = json.loads(_instruction("ENTRYPOINT"))
    cmd = json.loads(_instruction("CMD"))
    assert entrypoint == ["gpufan", "worker"]
    args = dict(zip(cmd[::2], cmd[1::2], strict=True))
    assert args["--port"] == _instruction("EXPOSE").strip()
    assert args["--host"] == "0.0.0.0"  # reachable from outside the container
    assert "/v2/health/ready" in _instruction("HEALTHCHECK")
    assert not re.search(r"^FROM\s+\S+:latest", DOCKERFILE.read_text(), flags=re.M)


def test_worker_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "core.cli", "worker", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--model-repo" in result.stdout


def test_image_command_serves_and_stops_cleanly() -> None:
    cmd = json.loads(_instruction("CMD"))
    local = {"/models": str(DEMO_REPOSITORY), "0.0.0.0": "127.0.0.1", "8080": "0"}
    argv = [local.get(a, a) for a in cmd]
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "worker", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            m = re.search(r"listening on (http://\S+)", proc.stdout.readline())
            url = m.group(1) if m else None
        assert url, "the worker did not announce itself"
        assert httpx.get(f"{url}/v2/health/ready", trust_env=False).status_code == 200
        meta = httpx.get(f"{url}/v2/models/digits", trust_env=False).json()
        assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0  # docker stop sends SIGTERM: a clean exit, not -15
