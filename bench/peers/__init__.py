"""Real peers of gpufan (KServe, Ray Serve), each in a virtualenv of its own.

Their pins clash with gpufan's environment (KServe 0.21 wants older pandas, pydantic and
protobuf; Ray its own), so each runs from a cached virtualenv under ``~/.cache/gpufan`` built on
first use from the package registry — or from the interpreter an environment variable names.
``tests/integration/test_kserve_peer.py`` and ``bench.overhead --peers`` start them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["KSERVE", "PEERS", "RAY_SERVE", "peer_python"]

PEERS = Path(__file__).parent
KSERVE = ("kserve==0.21.0", "GPUFAN_KSERVE_PYTHON", "import kserve, onnxruntime")
RAY_SERVE = ("ray[serve]==2.60.0", "GPUFAN_RAY_PYTHON", "import ray.serve, onnxruntime")


def peer_python(peer: tuple[str, str, str], timeout_s: float = 840.0) -> Path:
    """A Python with ``peer`` installed: the one its environment variable names, else a cached
    virtualenv (built here the first time, ~1 min from the package registry)."""
    requirement, variable, probe = peer
    given = os.environ.get(variable)
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = requirement.replace("==", "-").replace("[", "-").replace("]", "")
    python = cache / "gpufan" / name / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", probe]).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(python.parent.parent)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement,
         "onnxruntime", "numpy"],
        check=True, timeout=timeout_s,
    )  # fmt: skip
    return python
