"""The front door runs without an inference runtime; what runs models says what to install.

GIVEN an interpreter in which ``onnxruntime`` cannot be imported (the serverless bundles' case),
WHEN the three cloud entry points are imported, or ``gpufan worker`` or local workers are asked for,
THEN the entry points import (loading neither onnxruntime nor onnx), and the other two fail with
status 2 and a message naming the extra to install, not a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).parents[2]
_BLOCK = "import sys\nsys.modules['onnxruntime'] = None  # import fails, find_spec says absent\n"


def _run(body: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "gpufan",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def test_every_entry_point_imports_without_onnxruntime_or_onnx() -> None:
    done = _run(
        """
        import functions.aws.handler, functions.gcp.main, functions.azure.function_app
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime"))
        assert loaded == ["onnxruntime"], loaded  # only the blocked placeholder
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_gpufan_worker_names_the_extra_to_install() -> None:
    done = _run("from core.cli import main\nsys.exit(main(['worker', '--help']))")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "gpufan worker runs models with ONNX Runtime" in done.stderr
    assert "pip install 'gpufan[cpu]'" in done.stderr and "Traceback" not in done.stderr


def test_local_workers_name_the_extra_to_install() -> None:
    done = _run(
        """
        from core.config import LocalWorkers
        from core.errors import ConfigError
        from core.frontdoor.runtime import started_local_workers
        try:
            with started_local_workers(LocalWorkers(count=1)):
                pass
        except ConfigError as e:
            print(e)
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "local_workers runs models with ONNX Runtime" in done.stdout
